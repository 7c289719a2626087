"""The memory flags of the scripts: --memory_mode hybrid, --reversible_keep_layers, --max_memory, and the
predicted-then-measured memory lines a run logs."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from hf_revdarts.memory import estimate_memory
from hf_revdarts.model.genotype import Genotype
from hf_revdarts.training.arguments import DataArguments, ModelArguments
from hf_revdarts.training.run_config import build_config, plan_run_memory
from testing.runs import TINY_SEARCH, run_train, search_script, snapshot


def _config(model_args: ModelArguments, data_args: DataArguments):
    return build_config(model_args, None, data_args.max_length, Genotype.standard(4, 4))


def _ratio(messages: list[str]) -> float:
    measured = [m for m in messages if "measured" in m and "predicted" in m]
    assert len(measured) == 1, messages  # one step is measured, once
    return float(re.search(r"\(([0-9.]+)x the prediction", measured[0]).group(1))


def test_hybrid_run_logs_prediction_then_measurement_and_saves_its_mode(script_data, tmp_path, caplog):
    out = tmp_path / "hybrid"
    with caplog.at_level(logging.INFO):
        assert run_train(script_data, out, "--max_steps", "3", "--eval_every", "3", "--save_every", "3",
                         "--memory_mode", "hybrid") == 0
    messages = [r.getMessage() for r in caplog.records]
    predicted = [m for m in messages if "for the largest batch" in m]
    assert predicted and "hybrid (top 1 layers kept)" in predicted[0]  # 2+2 layers: half kept by default
    assert messages.index(predicted[0]) < next(i for i, m in enumerate(messages) if "measured" in m)
    assert 0.7 <= _ratio(messages) <= 1.3  # the planner's CPU target is ±15%
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["reversible"] is True and config["reversible_keep_layers"] == 1


def test_max_memory_picks_the_fastest_mode_that_fits():
    # a batch large enough that the stacks, not the LM head's output-embedding gradient (the same in every mode),
    # decide the reversible and checkpointed peaks
    data = DataArguments(max_tokens=2048, max_length=64)
    base = dict(d_model=96, num_heads=2, encoder_layers=4, decoder_layers=4)
    config = _config(ModelArguments(**base), data)

    def total(mode: str, keep: int = 0) -> int:
        return estimate_memory(config, 32, 64, 64, mode=mode, keep_layers=keep).total_bytes

    assert plan_run_memory(ModelArguments(**base), data, config, supernet=False).mode == "reversible"
    assert plan_run_memory(ModelArguments(**base, max_memory="1GB"), data, config, supernet=False).mode == "ordinary"
    # just below ordinary: hybrid, keeping as many layers as fit
    setup = plan_run_memory(ModelArguments(**base, max_memory=str(total("ordinary") - 1)), data, config, False)
    assert setup.mode == "hybrid" and setup.keep_layers >= 1
    assert setup.estimate.total_bytes <= total("ordinary") - 1
    # just above reversible, below the others: reversible
    setup = plan_run_memory(ModelArguments(**base, max_memory=str(total("reversible") + 1)), data, config, False)
    assert setup.mode == "reversible"
    # a mode given with a budget is checked, not replaced
    setup = plan_run_memory(ModelArguments(**base, memory_mode="checkpoint", max_memory="1GB"), data, config, False)
    assert setup.mode == "checkpoint"
    with pytest.raises(ValueError, match=r"--max_memory 1kB .*no memory mode fits"):
        plan_run_memory(ModelArguments(**base, max_memory="1kB"), data, config, False)
    with pytest.raises(ValueError, match=r"reversible mode fits with d_model <= \d+"):
        plan_run_memory(ModelArguments(**base, max_memory=str(total("reversible") - 1)), data, config, False)


@pytest.mark.parametrize("kwargs, message", [
    (dict(memory_mode="ordinary", reversible_keep_layers=1), "hybrid only"),
    (dict(memory_mode="hybrid", reversible_keep_layers=1, max_memory="1GB"), "not both"),
    (dict(memory_mode="hybrid", reversible_keep_layers=0), ">= 1"),
    (dict(max_memory="sixteen gigs"), "cannot read the memory size"),
    (dict(memory_mode="fast"), "--memory_mode 'fast'"),
])
def test_memory_flags_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelArguments(**kwargs)


def test_search_refuses_a_budget_nothing_fits_before_any_work(script_data, tmp_path):
    out = tmp_path / "search"
    out.mkdir()
    (out / "search_summary.json").write_text("untouched")  # a previous search, which --overwrite_output_dir may clear
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"--max_memory 100kB .*no memory mode fits the budget"):
        search_script.main(["--dataset", str(script_data), "--output_dir", str(out), "--max_steps", "2",
                            "--overwrite_output_dir", "--max_memory", "100kB", *TINY_SEARCH])
    assert snapshot(out) == before


def test_search_with_a_budget_runs_in_the_chosen_mode(script_data, tmp_path, caplog):
    out = tmp_path / "search"
    with caplog.at_level(logging.INFO):
        assert search_script.main(["--dataset", str(script_data), "--output_dir", str(out), "--max_steps", "2",
                                   "--arch_start_step", "0", "--eval_every", "2", "--max_memory", "2GB",
                                   *TINY_SEARCH]) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("memory budget 2.00 GB: ordinary fits" in m for m in messages), messages
    assert 0.7 <= _ratio(messages) <= 1.3
    supernet_config = json.loads(Path(out / "supernet" / "config.json").read_text())
    assert supernet_config["reversible"] is False
