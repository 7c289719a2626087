"""Random search with successive halving (hf_revdarts.protocol.halving, benchmarks/random_search.py): the schedule
and its cost, who survives a rung, and on the bundled sample a whole search whose survivor is the model a recipe
training of its genotype gives, scored once on the test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from hf_revdarts.model.genotype import Genotype
from hf_revdarts.protocol.halving import Rung, halving_schedule, schedule_updates, survivors
from hf_revdarts.training.tokenization import load_tokenizer
from testing import REPO
from testing.scripts import load_benchmark


def _random_search(tmp_path, *flags, module=None):
    module = module or load_benchmark("random_search")
    args = module.parse_args(["--smoke", "--work_dir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "results"),
                              *flags])
    return module, module.RandomSearch(args)


def test_schedule_halves_until_one_is_left_and_counts_only_added_updates():
    rungs = halving_schedule(8, 500, 4000)
    assert rungs == [Rung(8, 500), Rung(4, 1000), Rung(2, 2000), Rung(1, 4000)]
    assert schedule_updates(rungs) == 8 * 500 + 4 * 500 + 2 * 1000 + 1 * 2000 == 10_000
    # the budget runs out before one is left: the best of the last rung goes on to the final budget
    assert halving_schedule(8, 2000, 4000) == [Rung(8, 2000), Rung(1, 4000)]
    assert halving_schedule(9, 500, 4000, eta=3) == [Rung(9, 500), Rung(3, 1500), Rung(1, 4000)]
    assert halving_schedule(1, 500, 4000) == [Rung(1, 4000)]
    for bad in ((0, 500, 4000), (8, 0, 4000), (8, 5000, 4000)):
        with pytest.raises(ValueError):
            halving_schedule(*bad)
    with pytest.raises(ValueError, match="eta"):
        halving_schedule(8, 500, 4000, eta=1)


def test_survivors_are_the_lowest_validation_losses_ties_by_name():
    assert survivors({"c0": 3.2, "c1": 3.1, "c2": 3.3, "c3": 3.1}, 2) == ["c1", "c3"]


def test_a_parameter_band_keeps_the_seeds_draws_of_that_size_in_order(tmp_path, monkeypatch):
    module, plain = _random_search(tmp_path, "--candidates", "4")
    assert plain.draws() == [1000, 1001, 1002, 1003] and plain.run == "random-search-s0"
    recipe = module.CONFIG.recipe_for(True)
    counts = {k: module.parameter_count(recipe, module.random_genotype(recipe, k), None) for k in range(1000, 1040)}
    low, high = sorted(counts.values())[len(counts) // 2], max(counts.values())  # the larger half of the draws
    _, banded = _random_search(tmp_path, "--candidates", "3", "--parameter_band", str(low / 1e6), str(high / 1e6))
    assert banded.draws() == [k for k in sorted(counts) if low <= counts[k] <= high][:3]
    assert banded.run == f"random-search-s0-{low / 1e6:g}M-{high / 1e6:g}M"  # beside, not over, the plain search
    monkeypatch.setattr(module, "DRAWS_PER_SEED", 40)
    _, too_big = _random_search(tmp_path, "--candidates", "2", "--parameter_band", "90", "100", module=module)
    with pytest.raises(ValueError, match=r"only 0 of 40 draws have 90,000,000 to 100,000,000 parameters"):
        too_big.draws()
    with pytest.raises(SystemExit):
        module.parse_args(["--parameter_band", "2.6", "2.4"])


@pytest.mark.slow
def test_smoke_random_search_trains_its_survivor_as_the_recipe_would(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "random_search.py"), "--smoke", "--candidates", "3",
                          "--first_budget", "2", "--num_threads", "1", "--work_dir", str(tmp_path / "work"),
                          "--results_dir", str(tmp_path / "results")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    record = json.loads((tmp_path / "results" / "en-de-smoke" / "random_search" / "random-search-s0.json").read_text())
    assert record["schedule"] == [{"candidates": 3, "budget": 2}, {"candidates": 1, "budget": 4}]
    assert record["updates_total"] == 3 * 2 + 2
    first = {c["name"]: c["val_loss"]["2"] for c in record["candidates"]}
    assert record["survivor"] == min(first, key=first.get)  # validation loss decides, nothing else
    assert [c for c in record["candidates"] if "4" in c["val_loss"]][0]["name"] == record["survivor"]
    assert len({json.dumps(c["genotype"]) for c in record["candidates"]}) == 3
    assert [c["draw"] for c in record["candidates"]] == [1000, 1001, 1002] and record["parameter_band"] is None
    # the size the band filters on is the size train.py built
    module = load_benchmark("random_search")
    tokenizer = load_tokenizer(tmp_path / "work" / "en-de-smoke" / "tokenizer")
    assert [c["parameters"] for c in record["candidates"]] == [
        module.parameter_count(module.CONFIG.recipe_for(True), Genotype.from_dict(c["genotype"]), tokenizer)
        for c in record["candidates"]]
    timing = json.loads((tmp_path / "work" / "en-de-smoke" / "random-search-s0" / "timing.json").read_text())
    assert record["cpu_seconds"] == round(sum(t["cpu_seconds"] for k, t in timing.items() if k != "commands"), 1) > 0
    assert timing["commands"] == record["commands"] and len(record["commands"]) == 3 + 1 + 1  # rungs, then evaluate
    assert record["test"]["bleu"] is not None and record["test"]["sentences"] == 8
    assert len((REPO / record["test"]["hypotheses"]).read_text().splitlines()) == 8
    # The survivor's averaged model is a recipe training of its genotype from scratch, update for update.
    work = tmp_path / "work" / "en-de-smoke" / "random-search-s0"
    command = next(c for c in record["commands"] if f"/{record['survivor']} " in c + " " and "--resume" not in c)
    fresh = tmp_path / "fresh"
    words = command.split()[1:]
    words[words.index("--output_dir") + 1] = str(fresh)
    words[words.index("--max_steps") + 1] = "4"
    words[words.index("--eval_every") + 1] = "4"
    words += ["--average_checkpoints", "2"]
    again = subprocess.run([sys.executable, *words], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    a = load_file(work / record["survivor"] / "averaged" / "model.safetensors")
    b = load_file(fresh / "averaged" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_a_stage_that_fails_or_is_stopped_still_counts_its_seconds(tmp_path):
    """A sitting stopped mid-training leaves checkpoints the next one resumes from: their cost is counted."""
    from hf_revdarts.protocol.execution import run_logged

    timing: dict = {}
    burn = "import sys, time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nsys.exit(3)"
    with pytest.raises(RuntimeError, match="train failed \\(exit 3\\)"):
        run_logged([sys.executable, "-c", burn], "burn", tmp_path / "log", tmp_path, dict(os.environ), "train", timing)
    assert timing["train"]["cpu_seconds"] >= 0.3 and timing["train"]["wall_seconds"] >= 0.3
