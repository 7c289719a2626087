"""Random search with successive halving (hf_revdarts.protocol.halving, benchmarks/random_search.py): the schedule
and its cost, who survives a rung, and on the bundled sample a whole search whose survivor is the model a recipe
training of its genotype gives, scored once on the test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def _scored_search(tmp_path, module, losses, name="search-spos-s0"):
    """A finished search of the smoke pair whose supernet scored random genotypes with ``losses`` (in that order)."""
    recipe = module.CONFIG.recipe_for(True)
    genotypes = [module.random_genotype(recipe, k).to_dict() for k in range(len(losses))]
    folder = tmp_path / "work" / "en-de-smoke" / name
    folder.mkdir(parents=True)
    scored = [{"genotype": g, "loss": loss} for g, loss in zip(genotypes, losses)]
    (folder / "selection.json").write_text(json.dumps({"sampled": {"method": "sampled", "scored": scored}}))
    (tmp_path / "results" / "en-de-smoke").mkdir(parents=True)
    (tmp_path / "results" / "en-de-smoke" / f"{name}.json").write_text(json.dumps(
        {"run": name, "kind": "search", "cpu_seconds": 1800.0, "wall_seconds": 2000.0}))
    return genotypes


def test_candidates_from_a_search_are_the_distinct_genotypes_its_supernet_scored_best(tmp_path):
    module = load_benchmark("random_search")
    genotypes = _scored_search(tmp_path, module, [3.9, 3.7, 3.8, 3.6, 4.0])
    # the same genotype scored twice (two draws of the same sample) is one candidate, at its better score
    selection = tmp_path / "work" / "en-de-smoke" / "search-spos-s0" / "selection.json"
    data = json.loads(selection.read_text())
    data["sampled"]["scored"].append({"genotype": genotypes[3], "loss": 3.65})
    selection.write_text(json.dumps(data))
    _, halving = _random_search(tmp_path, "--candidates_from", "search-spos-s0", "--candidates", "3", module=module)
    assert halving.run == "halving-search-spos-s0"
    top = halving.sources()
    assert [g.to_dict() for g, _ in top] == [genotypes[3], genotypes[1], genotypes[2]]
    assert [o["supernet_loss"] for _, o in top] == [3.6, 3.7, 3.8] and [o["supernet_rank"] for _, o in top] == [0, 2, 3]
    assert halving.search_record().cpu_seconds == 1800.0
    _, greedy = _random_search(tmp_path, "--candidates_from", "search-spos-s0", "--candidates", "6", module=module)
    with pytest.raises(ValueError, match="scored 5 distinct genotypes, fewer than --candidates 6"):
        greedy.sources()
    _, missing = _random_search(tmp_path, "--candidates_from", "search-s9", module=module)
    with pytest.raises(FileNotFoundError, match="search-s9: no .*selection.json"):
        missing.sources()
    with pytest.raises(FileNotFoundError, match="--candidates_from search-s9: no search-s9.json"):
        missing.search_record()
    (tmp_path / "results" / "en-de-smoke" / "searched-s0-t0.json").write_text(json.dumps(
        {"run": "searched-s0-t0", "kind": "searched"}))
    _, trained = _random_search(tmp_path, "--candidates_from", "searched-s0-t0", module=module)
    with pytest.raises(ValueError, match="searched-s0-t0: a 'searched' record, not a search's"):
        trained.search_record()
    data["sampled"].pop("scored")  # an argmax/DARTS-PT search scored nothing to take from
    selection.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="has no scored sampled genotypes"):
        halving.sources()
    for flags in (["--parameter_band", "2.2", "2.5"], ["--seed", "1"]):
        with pytest.raises(SystemExit):
            module.parse_args(["--candidates_from", "search-spos-s0", *flags])


def test_a_halving_of_the_supernets_best_keeps_the_lowest_validation_loss_and_records_its_search(tmp_path, monkeypatch):
    """The rungs and the record of ``--candidates_from``, training replaced by given validation losses."""
    module = load_benchmark("random_search")
    genotypes = _scored_search(tmp_path, module, [3.9, 3.7, 3.8, 3.6])
    _, halving = _random_search(tmp_path, "--candidates_from", "search-spos-s0", "--candidates", "4",
                                "--first_budget", "2", module=module)
    val = {"c0": 5.0, "c1": 4.0, "c2": 4.5, "c3": 4.2}  # c0 is the supernet's best, c1 the best after training

    def train(name, genotype, budget, final):
        out = halving.work / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_summary.json").write_text(json.dumps({
            "steps": budget, "parameters": 1000 + int(name[1:]), "genotype": json.loads(genotype.read_text()),
            "history": [{"step": budget, "val_loss": val[name] - budget / 100}], "averaged": {"val_loss": val[name]}}))

    def script(script, flags, log, stage):
        assert stage == "evaluate" and "/c1/averaged" in flags[flags.index("--model") + 1]
        Path(flags[flags.index("--output") + 1]).write_text(json.dumps({"bleu": 12.5, "hypotheses": ["a", "b"]}))

    monkeypatch.setattr(halving, "train", train)
    monkeypatch.setattr(halving, "script", script)
    monkeypatch.chdir(REPO)
    record = halving.execute()
    assert record["kind"] == "supernet_halving" and record["survivor"] == "c1"
    assert record["candidates_from"] == {"search": "search-spos-s0", "search_cpu_seconds": 1800.0,
                                         "search_wall_seconds": 2000.0}
    assert [c["genotype"] for c in record["candidates"]] == [genotypes[i] for i in (3, 1, 2, 0)]
    assert [c["supernet_rank"] for c in record["candidates"]] == [0, 1, 2, 3] and "draw" not in record["candidates"][0]
    saved = json.loads((tmp_path / "results" / "en-de-smoke" / "random_search" / "halving-search-spos-s0.json").read_text())
    assert saved == record


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
