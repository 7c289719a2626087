"""The training loop: a time budget alone runs past the default step limit (checkpoints on schedule and at the
end), and weights that turned non-finite are refused before a checkpoint could overwrite good ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_revdarts.utils.guards import NonFiniteError
from testing.scripts import load_script

train_script = load_script("train")


def test_time_budget_alone_is_not_capped_by_the_default_steps(monkeypatch):
    from hf_revdarts.training import training_utils

    parse = train_script.parse_train_args
    assert parse(["--output_dir", "o"]).run.max_steps == train_script.DEFAULT_MAX_STEPS == 1000
    assert parse(["--output_dir", "o", "--time_budget_minutes", "5"]).run.max_steps is None
    both = parse(["--output_dir", "o", "--time_budget_minutes", "5", "--max_steps", "20"])
    assert both.run.max_steps == 20 and "whichever comes first" in train_script.budget_text(both)

    # The loop with no step limit runs until step() reports the budget spent, far past 1000 steps.
    saved = []
    monkeypatch.setattr(training_utils, "save_checkpoint", lambda acc, out, state, limit: saved.append(state.step))
    accelerator = type("Acc", (), {"is_local_main_process": False, "log": lambda self, *a, **k: None})()
    state = training_utils.TrainState({})

    def step():
        state.step += 1
        state.stopped_early = state.step == 2500  # what train_step does once the time is spent
        return {}

    run_args = parse(["--output_dir", "o", "--time_budget_minutes", "5", "--save_every", "1000",
                      "--eval_every", "5000"]).run
    training_utils.run_steps(accelerator, state, run_args, Path("o"), step, lambda: False, "train")
    assert state.step == 2500 and saved == [1000, 2000, 2500]


def test_nan_weights_are_never_checkpointed_over_good_ones(tmp_path):
    from hf_revdarts.training.training_utils import TrainState, check_finite_weights
    from hf_revdarts.utils.guards import NonFiniteGuard

    model = torch.nn.Linear(3, 3)
    state = TrainState({}, {"weights": NonFiniteGuard(3)})
    state.step = 12
    state.guards["weights"].last_good_checkpoint = "runs/x/checkpoint-000010"
    check_finite_weights(model, state)
    with torch.no_grad():
        model.bias[1] = float("inf")
    with pytest.raises(NonFiniteError, match=r"step 12: 1 weight tensors hold NaN/inf \(bias\).*checkpoint-000010"):
        check_finite_weights(model, state)
