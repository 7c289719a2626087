"""The protocol's runner (benchmarks/search_quality.py): end to end on the bundled sample (--smoke) with the
current scripts (every kind runs, the summary is written, a second invocation skips finished runs, an
interrupted training run resumes from its latest checkpoint), and its plan, jobs, replicas, zoo and status."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hf_revdarts.model.genotype import Genotype
from hf_revdarts.protocol.plan import PairPlan
from hf_revdarts.protocol.record import RunRecord
from testing.scripts import load_benchmark

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "search_quality.py"
RUNS = ("search-s0", "searched-s0-t0", "standard-t0", "random-r0")


def _protocol(tmp_path: Path, *extra: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--num_threads", "1", "--work_dir", str(tmp_path / "work"),
         "--results_dir", str(tmp_path / "results"), *extra],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.slow
def test_smoke_protocol_runs_every_kind_and_resumes(tmp_path):
    results = tmp_path / "results" / "en-de-smoke"
    work = tmp_path / "work" / "en-de-smoke"

    dry = _protocol(tmp_path, "--dry_run")
    commands = [line for line in dry.splitlines() if line.startswith("python training/")]
    assert len(commands) == 7  # 1 search; train + evaluate for searched, standard, random
    assert not list(results.glob("*.json"))

    log = _protocol(tmp_path)
    for run in RUNS:
        assert (results / f"{run}.json").is_file(), run
    # Rebuilt after each of the 3 trainings and at the end: a sitting that stops midway leaves its table.
    assert log.count("INFO hf_revdarts.protocol.report: summary: ") == 4, log[-3000:]
    summary = json.loads((results / "summary.json").read_text())
    assert set(summary["kinds"]) == {"searched", "standard", "random", "search"}
    assert summary["kinds"]["standard"]["updates"] == [4]
    assert "pooled" in summary["significance"] and 0 < summary["significance"]["pooled"]["p_value"] <= 1
    assert [(s["searched"], s["random"]) for s in summary["significance_random"]["searched"]["per_seed"]] == [
        ("searched-s0-t0", "random-r0")]
    assert (results / "summary.md").read_text().startswith("# Search quality")
    assert (results / "bleu_per_kind.png").stat().st_size > 1000
    assert "| en-de | searched |" in (results.parent / "overview.md").read_text()  # the cross-pair table
    search = json.loads((results / "search-s0.json").read_text())
    alpha = json.loads((work / "search-s0" / "arch_parameters.json").read_text())
    assert search["arch_parameters"] == alpha and set(search["search_summary"]["genotypes"]) >= {"argmax"}
    random_run = json.loads((results / "random-r0.json").read_text())
    assert random_run["genotype"] == random_run["drawn_genotype"]  # train.py trained the drawn genotype
    assert "zero" not in json.dumps(random_run["drawn_genotype"])
    for path in results.glob("*.json"):  # committed files never hold a path of this machine
        assert not [s for s in _strings(json.loads(path.read_text())) if s.startswith(str(tmp_path))], path
    first = {run: (results / f"{run}.json").read_text() for run in RUNS}

    # The same command again on this machine: the same model, so the same translations, set side by side.
    _protocol(tmp_path, "--replicate", "standard-t0")
    again = json.loads((results / "replicas" / "standard-t0-on-cpu.json").read_text())
    assert again["kind"] == "replica" and again["replica_of"] == "standard-t0"
    assert (results / "replicas" / "standard-t0-on-cpu.test.txt").read_text() == (results / "standard-t0.test.txt").read_text()
    again_summary = json.loads((results / "summary.json").read_text())
    row = again_summary["replicas"][0]
    assert row["run"] == "standard-t0" and row["delta_bleu"] == 0 and row["replica_val_loss"] == row["val_loss"]
    # With the machine held fixed, each searched and random run is tested against the copy: the same delta
    # as against the run it copies, since the copy translates identically.
    same = again_summary["significance_same_machine"]["standard-t0-on-cpu"]["rows"]
    assert {kind: [s["run"] for s in sig["per_seed"]] for kind, sig in same.items()} == {
        "searched": ["searched-s0-t0"], "random": ["random-r0"]}
    assert same["searched"]["per_seed"][0]["delta"] == summary["significance"]["per_seed"][0]["delta"]
    assert "Same command again" in (results / "summary.md").read_text()
    assert set(summary["kinds"]) == set(json.loads((results / "summary.json").read_text())["kinds"])  # not a kind
    assert {run: (results / f"{run}.json").read_text() for run in RUNS} == first  # nothing else ran

    # A search variant: its own search and trainings, a row of its own beside the shared standard and random runs.
    _protocol(tmp_path, "--search_variant", "long")
    search = json.loads((results / "search-long-s0.json").read_text())
    assert search["search_variant"] == "long" and "--prune_below 0.01" in search["commands"][0]
    searched = json.loads((results / "searched-long-s0-t0.json").read_text())
    assert searched["kind"] == "searched" and searched["search"] == "search-long-s0"
    assert searched["genotype"] == search["genotype"]
    summary = json.loads((results / "summary.json").read_text())
    assert list(summary["kinds"]) == ["searched", "searched-long", "standard", "random", "search", "search-long"]
    assert summary["kinds"]["searched"]["runs"] == 1  # the base row keeps its own runs
    assert summary["significance_variants"]["searched-long"]["per_seed"][0]["searched"] == "searched-long-s0-t0"
    assert "Paired bootstrap, searched-long vs standard" in (results / "summary.md").read_text()
    assert {run: (results / f"{run}.json").read_text() for run in RUNS} == first

    # The zoo: the searched run with the lowest validation loss (never the test score) is trained longer from its
    # last checkpoint and published with the protocol's comparison; its card is kept.
    cards = tmp_path / "cards"
    dry = _protocol(tmp_path, "--publish", "--zoo_steps", "8", "--model_cards_dir", str(cards), "--dry_run")
    scripts = [line.split()[1] for line in dry.splitlines() if line.startswith("python training/")]
    assert scripts == [f"training/{s}.py" for s in ("train", "tune_decoding", "evaluate", "publish")], dry[-2000:]
    assert not (results / "zoo").exists() and not cards.exists()
    _protocol(tmp_path, "--publish", "--zoo_steps", "8", "--model_cards_dir", str(cards))
    candidates = [json.loads((results / f"{r}.json").read_text()) for r in ("searched-s0-t0", "searched-long-s0-t0")]
    chosen = min(candidates, key=lambda r: r["val_averaged"]["val_loss"])
    best = json.loads((results / "zoo" / f"zoo-{chosen['run']}.json").read_text())
    assert best["continues"] == chosen["run"] and best["updates"] == 8 and best["genotype"] == chosen["genotype"]
    assert f"--resume_from_checkpoint {chosen['work_dir']}/checkpoint-000004" in best["commands"][0]
    assert "--max_steps 8" in best["commands"][0]
    # Its decoding is chosen on val over the config's grid, and the test split translated once, with the choice.
    tune, evaluate = best["commands"][1:]
    assert tune.startswith("python training/tune_decoding.py") and "--split val" in tune
    assert "--num_beams 2 --length_penalty 0.8 1.0" in tune and "--decoding" in evaluate and "--num_beams" not in evaluate
    assert best["test"]["decoding"]["split"] == "val" and len(best["test"]["decoding"]["grid"]) == 2
    assert best["test"]["length_penalty"] == best["test"]["decoding"]["chosen"]["length_penalty"]
    card = cards / "revdarts-smoke-en-de"
    assert {"README.md", "eval_results.json", "genotype.png", "model.safetensors", "config.json", "tokenizer.json",
            "modeling_revdarts.py"} <= {p.name for p in card.iterdir()}  # the complete Hub folder, in the zoo
    text = (card / "README.md").read_text()
    assert f"run `{chosen['run']}` of the hf_revdarts protocol trained longer, to 8 updates" in text
    assert chosen["commands"][0] in text and best["commands"][0] in text
    # Its training line names both sittings (they may be on different machines), not only the summed time.
    assert f"8 steps, {best['train_seconds'] / 60:.1f} min on 1 process(es): the first 4 on {chosen['device']}" in text
    assert f"the 4 more on {best['device']}" in text
    scores = json.loads((card / "eval_results.json").read_text())
    assert scores["bleu"] == best["test"]["bleu"] and scores["example"]["translation"] in text
    assert (REPO / scores["protocol_run"]).resolve() == (results / "zoo" / f"zoo-{chosen['run']}.json").resolve()
    assert (REPO / scores["protocol_hypotheses"]).read_text() == (results / "zoo" / f"{best['run']}.test.txt").read_text()
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from hf_revdarts.evaluation.translation import translate
    from hf_revdarts.training.data import load_parallel_text

    folder = card  # loads with the Auto classes and translates as the protocol did
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    sources = load_parallel_text(REPO / "samples" / "en-de", "en", "de", "test", None, 8)[0]
    expected = (results / "zoo" / f"{best['run']}.test.txt").read_text().split("\n")[:8]
    assert translate(model.eval(), tokenizer, sources, num_beams=2, max_new_tokens=16,
                     length_penalty=best["test"]["length_penalty"]) == expected
    assert "chosen on the val split among 2 settings" in text
    assert model.generation_config.length_penalty == best["test"]["length_penalty"]  # a plain generate decodes so
    assert {run: (results / f"{run}.json").read_text() for run in RUNS} == first  # publishing trains nothing

    # A larger --zoo_steps trains the continuation on from its own last checkpoint, tuned and tested afresh; the
    # figures of its 8-update model are kept beside it.
    _protocol(tmp_path, "--publish", "--zoo_steps", "12", "--model_cards_dir", str(cards))
    longer = json.loads((results / "zoo" / f"zoo-{chosen['run']}.json").read_text())
    assert [c.split()[1] for c in longer["commands"]] == [f"training/{s}.py" for s in (
        "train", "train", "tune_decoding", "evaluate")] and longer["updates"] == 12
    assert f"--resume_from_checkpoint {best['work_dir']}/checkpoint-000008" in longer["commands"][1]
    kept = work / f"{best['run']}.at-8"
    assert json.loads((kept / "record.json").read_text()) == best and (kept / "decoding.json").is_file()
    assert json.loads((kept / "timing.json").read_text())["commands"] == best["commands"][1:]
    assert "trained longer, to 12 updates" in (card / "README.md").read_text()

    # Interrupt the standard run after its first checkpoint: results, summary, final checkpoint gone.
    (results / "standard-t0.json").unlink()
    run_dir = work / "standard-t0"
    for name in ("train_summary.json", "eval_test.json", "averaged", "checkpoint-000004"):
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    log = _protocol(tmp_path)
    for run in ("search-s0", "searched-s0-t0", "random-r0"):
        assert f"{run}: done" in log
        assert (results / f"{run}.json").read_text() == first[run]  # untouched
    resumed = json.loads((results / "standard-t0.json").read_text())
    assert resumed["updates"] == 4
    assert any("--resume_from_checkpoint latest" in c for c in resumed["commands"])
    assert "resumed from" in (run_dir.parent / f"{run_dir.name}.log").read_text()
    assert sorted(p.name for p in run_dir.glob("checkpoint-*"))[-1] == "checkpoint-000004"

    # A fresh clone has the records, not the run folders: --rebuild trains a recorded run again from its record
    # into its own folder (the same model: the same translations), and --zoo_kind standard publishes it.
    shutil.rmtree(run_dir)
    _protocol(tmp_path, "--rebuild", "standard-t0")
    rebuilt = json.loads((results / "rebuilt" / "standard-t0.json").read_text())
    assert rebuilt["kind"] == "standard" and rebuilt["test"]["bleu"] == resumed["test"]["bleu"]
    assert (results / "rebuilt" / "standard-t0.test.txt").read_text() == (results / "standard-t0.test.txt").read_text()
    _protocol(tmp_path, "--publish", "--zoo_kind", "standard", "--model_cards_dir", str(cards))
    standard = json.loads((cards / "revdarts-smoke-en-de-standard" / "eval_results.json").read_text())
    assert standard["bleu"] == resumed["test"]["bleu"] and standard["fingerprint"]["genotype"]["encoder"][0] == [
        "self_attn", "ffn"]
    text = (cards / "revdarts-smoke-en-de-standard" / "README.md").read_text()
    assert "Search: not recorded" in text
    assert rebuilt["rebuilt_from"].endswith("standard-t0.json") and "trained again from its record" in text

    # The ranking diagnostic: every trained genotype scored on each search's supernet, beside its own training.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "supernet_ranking.py"), "--smoke", "--work_dir",
                          str(tmp_path / "work"), "--results_dir", str(tmp_path / "results"), "--val_sentences", "8",
                          "--num_threads", "1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ranking = json.loads((results / "ranking" / "ranking.json").read_text())
    _protocol(tmp_path, "--report")  # the pair's folder still holds run records only
    assert ranking["searches"] == ["search-long-s0", "search-s0"]
    assert ranking["search_recipes"] == {"search-long-s0": "long", "search-s0": "default",
                                         "search-long-s0 warm-up": "long, warm-up only",
                                         "search-s0 warm-up": "default, warm-up only"}
    assert "| supernet search-long-s0 | long |" in (results / "ranking" / "ranking.md").read_text()
    runs = {run for g in ranking["genotypes"] for run in g["runs"]}
    assert {"searched-s0-t0", "searched-long-s0-t0", "standard-t0", "random-r0"} <= runs
    assert all(isinstance(v, float) for g in ranking["genotypes"] for v in g["supernet_estimates"].values())
    assert set(ranking["against_val_loss"]) == {
        "supernet search-long-s0", "supernet search-s0", "supernet search-long-s0 warm-up", "supernet search-s0 warm-up",
        "α of search-long-s0", "α of search-s0", "parameter count", "another training seed (ceiling)"}
    warm, final = (ranking["genotypes"][0]["supernet_estimates"][k] for k in ("search-s0 warm-up", "search-s0"))
    assert warm != final, "the warm-up's weights, not the final supernet's"
    module = load_benchmark("supernet_ranking")
    from transformers import AutoTokenizer

    from hf_revdarts.search import RevDartsSupernet
    from hf_revdarts.search.selection import genotype_log_prob, score_genotypes

    supernet = RevDartsSupernet.from_pretrained(work / "search-s0" / "supernet")
    tokenizer = AutoTokenizer.from_pretrained(work / "search-s0" / "tokenizer")
    batches = module.heldout_batches(tokenizer, REPO / "samples" / "en-de", "en", "de", "val", 8, 32)
    row = next(g for g in ranking["genotypes"] if "standard-t0" in g["runs"])
    standard = Genotype.standard(encoder_layers=2, decoder_layers=2)
    assert score_genotypes(supernet, [standard], batches)[0] == pytest.approx(row["supernet_estimates"]["search-s0"],
                                                                               abs=1e-5)
    assert genotype_log_prob(supernet, standard) == pytest.approx(row["alpha_log_prob"]["search-s0"], abs=1e-6)


def test_seeds_deriving_one_genotype_share_its_trainings_and_jobs_run_concurrently(tmp_path, monkeypatch):
    """--jobs runs trainings side by side (searches first); two searches that derive the same genotype train it
    once per training seed, under the first search's name."""
    import threading
    import time

    sq = load_benchmark("search_quality")
    args = sq.parse_args(["--pair", "en-de", "--searches", "3", "--seeds", "2", "--random", "1", "--jobs", "4",
                          "--work_dir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "results")])
    protocol = sq.Protocol(args)
    a, b = Genotype.standard(4, 4), Genotype.random({"encoder_layers": 4, "decoder_layers": 4}, seed=1)
    genotypes = {0: a, 1: b, 2: a}
    started, running, peak, lock = [], [0], [0], threading.Lock()

    def fake_train(self, name, kind, genotype, seed, meta):
        with lock:
            started.append(name)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(sq.Protocol, "tokenizer", lambda self: tmp_path / "tok")
    monkeypatch.setattr(sq.Protocol, "search", lambda self, s: RunRecord(run=f"search-s{s}", genotype=genotypes[s]))
    monkeypatch.setattr(sq.Protocol, "train", fake_train)
    monkeypatch.setattr(PairPlan, "random_genotype_file", lambda self, k: tmp_path / f"r{k}.json")
    monkeypatch.setattr(sq.Protocol, "summarize", lambda self: None)
    protocol.execute()
    assert sorted(started) == sorted(["searched-s0-t0", "searched-s0-t1", "searched-s1-t0", "searched-s1-t1",
                                      "standard-t0", "standard-t1", "random-r0"])
    assert peak[0] == 4

    def failing_train(self, name, *rest):
        if name == "standard-t0":
            raise RuntimeError("standard-t0 broke")
        fake_train(self, name, *rest)

    started.clear()
    monkeypatch.setattr(sq.Protocol, "train", failing_train)
    with pytest.raises(RuntimeError, match="standard-t0 broke"):
        sq.Protocol(args).execute()
    assert "random-r0" in started  # one failed run does not stop the others


def test_a_run_that_died_before_its_first_checkpoint_starts_over(tmp_path):
    sq = load_benchmark("search_quality")
    out = tmp_path / "standard-t0"
    assert sq.restart_flags(out) == []  # never started
    out.mkdir()
    (out / "logs").mkdir()  # what a run killed in its first steps leaves: the scripts refuse a non-empty folder
    assert sq.restart_flags(out) == ["--overwrite_output_dir"]
    (out / "checkpoint-000250").mkdir()
    (out / "checkpoint-000250" / "train_state.json").write_text("{}")
    assert sq.restart_flags(out) == ["--resume_from_checkpoint", "latest"]


def test_replicate_trains_a_finished_run_with_its_own_genotype_and_seed(tmp_path, monkeypatch):
    sq = load_benchmark("search_quality")
    args = sq.parse_args(["--pair", "en-de", "--replicate", "searched-s1-t1", "--replicate", "random-r2",
                          "--work_dir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "results")])
    protocol = sq.Protocol(args)
    protocol.results.mkdir(parents=True)
    searched = {"encoder": [["conv_7", "ffn"]] * 4, "decoder": [["glu", "self_attn"]] * 4}
    drawn = {"encoder": [["dynconv_3", "glu"]] * 4, "decoder": [["conv_5", "cross_attn"]] * 4}
    for name, record in {"searched-s1-t1": {"kind": "searched", "search": "search-s1", "train_seed": 1,
                                            "genotype": searched},
                         "random-r2": {"kind": "random", "random_seed": 2, "train_seed": 0, "device": "GPU: X",
                                       "genotype": drawn}}.items():
        (protocol.results / f"{name}.json").write_text(json.dumps({"run": name, **record}))
    trained = []
    monkeypatch.setattr(sq.Protocol, "tokenizer", lambda self: tmp_path / "tok")
    monkeypatch.setattr(sq.Protocol, "search", lambda *a: pytest.fail("--replicate runs nothing else"))
    monkeypatch.setattr(sq.Protocol, "train", lambda self, *a, **kw: trained.append((a, kw)))
    monkeypatch.setattr(PairPlan, "random_genotype_file", lambda self, k: pytest.fail("a replica draws nothing"))
    monkeypatch.setattr(sq.Protocol, "summarize", lambda self: None)
    protocol.execute()
    (name0, kind0, geno0, seed0, meta0), kw0 = trained[0]
    assert (name0, kind0, seed0, meta0["replica_of_device"]) == (f"searched-s1-t1-on-{sq.machine_kind()}", "replica", 1, "unrecorded")
    # the genotype comes from the record: neither the search's folder nor a fresh draw is needed
    assert geno0.endswith("searched-s1-t1.genotype.json") and kw0["results"] == protocol.results / "replicas"
    assert json.loads((protocol.work / "searched-s1-t1.genotype.json").read_text()) == searched
    assert not (protocol.work / "search-s1").exists()
    (name1, _, geno1, seed1, meta1), _ = trained[1]
    assert geno1.endswith("random-r2.genotype.json") and seed1 == 0 and meta1["replica_of_device"] == "GPU: X"
    assert json.loads((protocol.work / "random-r2.genotype.json").read_text()) == drawn

    args = sq.parse_args(["--replicate", "standard-t9", "--work_dir", str(tmp_path / "work"),
                          "--results_dir", str(tmp_path / "results")])
    with pytest.raises(ValueError, match="no finished run .*standard-t9"):
        sq.Protocol(args).execute()


def test_search_variant_changes_the_search_only(tmp_path):
    if not (REPO.parent / "shared" / "data" / "multi30k").is_dir():
        pytest.skip("needs ../shared/data/multi30k")
    dry = _protocol_real(tmp_path, "--pair", "en-de", "--search_variant", "long", "--dry_run")
    commands = [line for line in dry.splitlines() if line.startswith("python training/")]
    searches = [c for c in commands if c.startswith("python training/search.py")]
    trains = [c for c in commands if c.startswith("python training/train.py")]
    assert len(searches) == 3 and len(trains) == 6  # S=3 searches, T=2 seeds each; no standard or random run
    assert [f"en-de/search-long-s{i} " in c for i, c in enumerate(searches)] == [True] * 3  # its own folders
    assert all("--d_model 96 " in c and "--max_steps 1300 " in c and "--arch_start_step 1000 " in c for c in searches)
    assert all("--d_model 192 " in c and "--max_steps 4000 " in c and "search-long-s" in c for c in trains)
    # spos: the base's warm-up and no α phase, selected by sampling on the warm-up supernet
    dry = _protocol_real(tmp_path, "--pair", "en-de", "--search_variant", "spos", "--searches", "1", "--dry_run")
    search = next(line for line in dry.splitlines() if line.startswith("python training/search.py"))
    assert all(f in search for f in ("--max_steps 1000 ", "--arch_start_step 1000 ", "--selection sampled",
                                     "--warmup_sampling single_path", "--d_model 192 "))


def test_scale_wide_is_the_same_protocol_at_d576_in_folders_of_its_own(tmp_path):
    if not (REPO.parent / "shared" / "data" / "multi30k").is_dir():
        pytest.skip("needs ../shared/data/multi30k")
    dry = _protocol_real(tmp_path, "--pair", "en-de", "--scale", "wide", "--search_variant", "long", "--dry_run")
    commands = [line for line in dry.splitlines() if line.startswith("python training/")]
    searches = [c for c in commands if c.startswith("python training/search.py")]
    trains = [c for c in commands if c.startswith("python training/train.py")]
    assert len(searches) == 3 and len(trains) == 6
    assert all("/en-de-wide/search-long-s" in c and "--d_model 288 " in c and "--max_steps 1300 " in c for c in searches)
    wide = "--d_model 576 --encoder_layers 6 --decoder_layers 6 --num_heads 8 "
    assert all("/en-de-wide/searched-long-s" in c and wide in c and "--max_steps 4000 " in c for c in trains)
    base = _protocol_real(tmp_path, "--pair", "en-de", "--scale", "wide", "--dry_run")
    trains = [c for c in base.splitlines() if c.startswith("python training/train.py")]
    assert len(trains) == 3 * 2 + 2 + 8 and all(wide in c and "/en-de-wide/" in c for c in trains)
    assert not (tmp_path / "results" / "en-de").exists()  # the d=192 protocol's folders are not touched

    # The model each scale names can be built (the command line alone would not show it: d=512 cannot split in 3).
    from hf_revdarts import RevDartsConfig

    sq = load_benchmark("search_quality")
    for scale in sq.CONFIG.scales.values():
        model = {k.strip("-"): v for k, v in scale["model"].items()}
        RevDartsConfig(**model)
        for proxy in scale["search_variants"].values():
            RevDartsConfig(**{**model, **{k.strip("-"): v for k, v in proxy.items()}})


def _protocol_real(tmp_path: Path, *extra: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(SCRIPT), "--work_dir", str(tmp_path / "work"), "--results_dir",
                          str(tmp_path / "results"), *extra], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout + out.stderr


def test_publish_refuses_what_it_cannot_do_before_training_anything(tmp_path, capsys):
    sq = load_benchmark("search_quality")
    with pytest.raises(SystemExit):
        sq.parse_args(["--zoo_steps", "8000"])
    assert "--zoo_steps trains the model --publish publishes" in capsys.readouterr().err
    args = sq.parse_args(["--publish", "--zoo_steps", "4000", "--work_dir", str(tmp_path / "work"),
                          "--results_dir", str(tmp_path / "results")])
    protocol = sq.Protocol(args)
    protocol.results.mkdir(parents=True)
    with pytest.raises(RuntimeError, match="no finished searched run"):
        protocol.publish()
    run = {"run": "searched-s0-t0", "kind": "searched", "search": "search-s0", "train_seed": 0, "updates": 4000,
           "val_averaged": {"val_loss": 3.4}, "work_dir": str(tmp_path / "gone")}
    (protocol.results / "searched-s0-t0.json").write_text(json.dumps(run))
    with pytest.raises(RuntimeError, match=r"no searched run .* has its model on this machine .* --rebuild searched-s0-t0"):
        protocol.publish()
    (tmp_path / "gone" / "checkpoint-004000").mkdir(parents=True)
    (tmp_path / "gone" / "checkpoint-004000" / "train_state.json").write_text("{}")
    with pytest.raises(ValueError, match="--zoo_steps 4000 must exceed the 4000 updates of searched-s0-t0"):
        protocol.publish()
    shutil.rmtree(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="no checkpoint of searched-s0-t0 to continue"):
        protocol.train_longer(RunRecord.from_dict(run), 8000)


def test_publish_takes_the_best_run_whose_model_is_here_a_replica_included(tmp_path, caplog):
    """A run trained on a lent GPU may have left its weights there: the zoo then takes the best searched run by
    validation loss among those whose model is on this machine, a --replicate of the GPU run among them, and
    says which it passed over. The replica keeps the search of the run it repeats (older replicas lack it)."""
    sq = load_benchmark("search_quality")
    args = sq.parse_args(["--publish", "--work_dir", str(tmp_path / "work"), "--results_dir", str(tmp_path / "results")])
    protocol = sq.Protocol(args)
    (protocol.results / "replicas").mkdir(parents=True)

    def run(name: str, val_loss: float, here: bool, **extra: Any) -> dict[str, Any]:
        work = tmp_path / "work" / name
        if here:
            (work / "averaged").mkdir(parents=True)
            (work / "averaged" / "config.json").write_text("{}")
        return {"run": name, "kind": "searched", "search": "search-long-s0", "search_variant": "long", "train_seed": 0,
                "updates": 4000, "val_averaged": {"val_loss": val_loss}, "work_dir": str(work), **extra}

    records = {"searched-s0-t0": run("searched-s0-t0", 2.90, True),
               "searched-long-s0-t0": run("searched-long-s0-t0", 2.63, False, device="GPU: NVIDIA H200"),
               "standard-t0": {**run("standard-t0", 2.50, True), "kind": "standard"}}  # not searched: never published
    for name, record in records.items():
        (protocol.results / f"{name}.json").write_text(json.dumps(record))
    with caplog.at_level(logging.INFO, logger="hf_revdarts.protocol"):
        best = protocol.zoo_candidate()
    assert best.run == "searched-s0-t0" and best.source == protocol.results / "searched-s0-t0.json"
    assert "searched-long-s0-t0 2.630 (model not on this machine)" in caplog.text
    assert "searched-long-s0-t0 has the lowest validation loss but its model is not on this machine" in caplog.text

    replica = {k: v for k, v in run("searched-long-s0-t0-on-cpu", 2.65, True).items() if not k.startswith("search")}
    trained = {"encoder": [["conv_7", "ffn"]] * 4, "decoder": [["glu", "self_attn"]] * 4}
    replica.update(kind="replica", replica_of="searched-long-s0-t0", replica_of_kind="searched", genotype=trained)
    (protocol.results / "replicas" / "searched-long-s0-t0-on-cpu.json").write_text(json.dumps(replica))
    best = protocol.zoo_candidate()
    assert best.run == "searched-long-s0-t0-on-cpu" and best.source == protocol.results / "replicas" / f"{best.run}.json"
    assert best.search == "search-long-s0" and best.search_variant == "long"  # from the run it repeats
    # its zoo run trains that genotype, taken from the record: the search's folder is not needed
    assert protocol.plan.genotype_of(best) == sq.rel(protocol.work / f"{best.run}.genotype.json")
    assert json.loads((protocol.work / f"{best.run}.genotype.json").read_text()) == trained


def test_shared_warmup_runs_the_first_search_then_only_the_alpha_phase_of_the_others(tmp_path):
    """--shared_warmup: search s0 whole, then s1 from s0's kept warm-up checkpoint; s1's record says so."""
    _protocol(tmp_path, "--searches", "2", "--shared_warmup", "--searches_only")
    results = tmp_path / "results" / "en-de-smoke"
    first, second = (json.loads((results / f"search-s{s}.json").read_text()) for s in (0, 1))
    assert "warmup_from" not in first["search_summary"] and "--warmup_from" not in first["commands"][0]
    assert second["search_summary"]["warmup_from"].endswith("search-s0/warmup/checkpoint-000002")
    assert "--warmup_from" in second["commands"][0] and second["search_steps"] == 4
    assert not (results / "searched-s0-t0.json").exists()  # --searches_only

