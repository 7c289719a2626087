"""The protocol's comparisons: each kind's figures from the committed records are those of the committed
summaries; searched runs meet the standard run of their seed and every random genotype; a replica meets the
standard run trained on its machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hf_revdarts.protocol.compare import (
    goal_mean,
    mean_std,
    minus_random,
    random_percentile,
    random_search_rows,
    replica_rows,
    search_rows,
    significance,
    significance_random,
    significance_same_machine,
    table,
    training_rows,
)
from hf_revdarts.protocol.record import RunRecord, load_random_searches, load_runs, replica_pairs

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"


@pytest.mark.parametrize("pair", ["en-de", "en-fr", "en-cs"])
def test_the_committed_tables_are_what_the_committed_records_give(pair):
    summary = json.loads((RESULTS / pair / "summary.json").read_text())
    runs, searches = load_runs(RESULTS / pair)
    kinds = table(runs, searches)
    assert json.dumps(kinds) == json.dumps(summary["kinds"])  # the same figures in the same order
    assert list(minus_random(kinds)) == [summary["minus_random_mean"], summary["minus_random_mean_se"]]
    assert replica_rows(replica_pairs(RESULTS / pair, runs)) == summary["replicas"]


def test_rows_means_and_the_difference_to_the_random_genotypes():
    assert training_rows(["random", "searched-long", "standard", "searched", "search"]) == [
        "searched", "searched-long", "standard", "random"]
    assert search_rows(["search-long", "searched", "search"]) == ["search", "search-long"]
    assert mean_std([]) == (None, None) and mean_std([30.0]) == (30.0, 0.0) and mean_std([30.0, 31.0]) == (30.5, 0.71)
    kinds = {"searched": {"runs": 2, "bleu_mean": 34.2, "bleu_std": 0.4}, "searched-long": {"runs": 1, "bleu_mean": 35.0,
             "bleu_std": 0.0}, "standard": {"runs": 2, "bleu_mean": 31.0, "bleu_std": 0.2},
             "random": {"runs": 4, "bleu_mean": 33.0, "bleu_std": 0.6}}
    delta, se = minus_random(kinds)
    assert delta == {"searched": 1.2, "searched-long": 2.0}
    assert se == {"searched": round((0.4 ** 2 / 2 + 0.6 ** 2 / 4) ** 0.5, 2)}  # a single run has no spread to weigh
    assert minus_random({k: v for k, v in kinds.items() if k != "random"}) == ({}, {})


def test_a_searched_row_is_judged_by_its_mean_over_searches_not_over_runs():
    """Issue 22's goal: the mean over search seeds. The search trained with two seeds (T = 2) weighs as much as the
    searches trained once, and the spread the goal weighs is between searches, the unit a user draws."""
    def run(name: str, search: str, bleu: float, kind: str = "searched") -> RunRecord:
        return RunRecord(run=name, kind=kind, search=search, parameters=2_000_000, updates=4000, wall_seconds=1.0,
                         cpu_seconds=1.0, test={"bleu": bleu, "bleu_lowercase": bleu})
    runs = [run("searched-s0-t0", "search-s0", 34.0), run("searched-s0-t1", "search-s0", 35.0),
            run("searched-s1-t0", "search-s1", 32.0), run("searched-s2-t0", "search-s2", 33.0),
            *[run(f"random-r{k}", None, b, "random") for k, b in enumerate([31.0, 32.5, 33.5, 34.0])]]
    kinds = table(runs, [])
    row = kinds["searched"]
    assert row["bleu_mean"] == 33.5 and row["runs"] == 4  # over runs: seed 0's search counted twice
    assert (row["searches"], row["bleu_search_mean"], row["bleu_search_std"]) == (3, 33.17, 1.26)
    assert goal_mean(row) == 33.17 and goal_mean(kinds["random"]) == kinds["random"]["bleu_mean"] == 32.75
    delta, se = minus_random(kinds)
    assert delta == {"searched": 0.42}
    assert se == {"searched": round((1.26 ** 2 / 3 + kinds["random"]["bleu_std"] ** 2 / 4) ** 0.5, 2)}
    assert random_percentile(kinds, runs)["searched"]["below"] == 2  # 33.17 lies above 31.0 and 32.5 only


REFS = ["a small dog runs on the grass .", "two men play football in the park .", "a woman reads a book ."] * 4
GOOD, BAD = REFS, ["a dog .", "men play .", "a book ."] * 4


def _run(folder: Path, name: str, kind: str, device: str, hyps: list[str], **extra: Any) -> RunRecord:
    (folder / f"{name}.txt").write_text("\n".join(hyps))
    return RunRecord(run=name, kind=kind, device=device, train_seed=extra.pop("train_seed", 0),
                     test={"hypotheses": f"{name}.txt"}, **extra)


def test_searched_runs_meet_the_standard_run_of_their_seed_and_every_random_genotype(tmp_path):
    runs = [_run(tmp_path, "searched-s0-t0", "searched", "CPU", GOOD), _run(tmp_path, "searched-s0-t1", "searched", "CPU",
            BAD, train_seed=1), _run(tmp_path, "standard-t0", "standard", "CPU", BAD),
            _run(tmp_path, "standard-t1", "standard", "CPU", BAD, train_seed=1),
            _run(tmp_path, "random-r0", "random", "CPU", BAD), _run(tmp_path, "random-r1", "random", "CPU", GOOD)]
    sig = significance(runs, tmp_path, REFS)
    assert [(s["searched"], s["standard"]) for s in sig["per_seed"]] == [("searched-s0-t0", "standard-t0"),
                                                                         ("searched-s0-t1", "standard-t1")]
    assert sig["pooled"]["pairs"] == 2 and sig["per_seed"][0]["delta"] > 0 and sig["per_seed"][1]["delta"] == 0
    against = significance_random(runs, tmp_path, REFS, "searched")
    assert [(s["searched"], s["random"]) for s in against["per_seed"]] == [
        ("searched-s0-t0", "random-r0"), ("searched-s0-t0", "random-r1"), ("searched-s0-t1", "random-r0"),
        ("searched-s0-t1", "random-r1")]
    assert "note" in significance(runs, tmp_path, REFS, "searched-long")
    one = significance(runs[:1] + runs[2:3], tmp_path, REFS)
    assert one["pooled"] == {**one["per_seed"][0], "pairs": 1}


def test_same_machine_significance_sets_a_replica_of_a_searched_run_against_the_standard_run_there(tmp_path):
    """The searched run trained on a GPU, the standard one on the CPU: the searched run trained again on the CPU
    is tested against the CPU's standard run (and only there); table runs alone on one machine add nothing."""
    runs = [_run(tmp_path, "searched-long-s0-t0", "searched", "GPU: H200", GOOD, search_variant="long"),
            _run(tmp_path, "standard-t0", "standard", "CPU: 2 cores", BAD),
            _run(tmp_path, "random-r0", "random", "CPU: 2 cores", BAD)]
    assert significance_same_machine(runs, [], tmp_path, REFS) == {}
    (tmp_path / "replicas").mkdir()
    copy = _run(tmp_path, "searched-long-s0-t0-on-cpu", "replica", "CPU: 2 cores", GOOD, replica_of="searched-long-s0-t0",
                replica_of_kind="searched")
    copy.save(tmp_path / "replicas" / "searched-long-s0-t0-on-cpu.json")
    same = significance_same_machine(runs, replica_pairs(tmp_path, runs), tmp_path, REFS)
    assert list(same) == ["standard-t0"] and same["standard-t0"]["device"] == "CPU: 2 cores"
    rows = same["standard-t0"]["rows"]
    assert {kind: [s["run"] for s in sig["per_seed"]] for kind, sig in rows.items()} == {
        "searched-long": ["searched-long-s0-t0-on-cpu"], "random": ["random-r0"]}
    assert rows["searched-long"]["per_seed"][0]["delta"] > 0 and rows["random"]["per_seed"][0]["delta"] == 0


def test_random_search_meets_each_searched_row_and_a_searched_mean_has_a_place_among_random_draws(tmp_path):
    """The practitioner's baseline: the survivor of random search against every run of a searched row (pooled),
    beside the cost of a search plus a training; the searched mean's place among the random genotypes' runs."""
    runs = [_run(tmp_path, "searched-s0-t0", "searched", "CPU", GOOD), _run(tmp_path, "searched-s1-t0", "searched", "CPU", GOOD),
            _run(tmp_path, "random-r0", "random", "CPU", BAD), _run(tmp_path, "random-r1", "random", "CPU", GOOD)]
    kinds = {"searched": {"runs": 2, "bleu_mean": 40.0, "cpu_hours_total": 2.2},
             "search": {"runs": 2, "cpu_hours_total": 1.8}, "random": {"runs": 3, "bleu_mean": 35.0}}
    for r, bleu in zip(runs, (40.0, 40.0, 30.0, 40.0)):
        r.test["bleu"] = bleu
    # one random run below, one tied (half): 1.5 of 2
    assert random_percentile(kinds, runs) == {"searched": {"below": 1.5, "of": 2, "percentile": 75.0}}
    assert random_percentile(kinds, runs[:2]) == {}
    (tmp_path / "random_search").mkdir()
    record = {"run": "random-search-s0", "kind": "random_search", "survivor": "c3", "parameters": 2_100_000,
              "candidates": [{"name": f"c{i}"} for i in range(8)], "schedule": [{"candidates": 8, "budget": 250},
                                                                              {"candidates": 1, "budget": 4000}],
              "updates_total": 7000, "cpu_seconds": 7200.0, "test": {"bleu": 30.0, "hypotheses": "survivor.txt"}}
    (tmp_path / "survivor.txt").write_text("\n".join(BAD))
    (tmp_path / "random_search" / "random-search-s0.json").write_text(json.dumps(record))
    (row,) = random_search_rows(load_random_searches(tmp_path), runs, kinds, tmp_path, REFS)
    assert {k: row[k] for k in ("run", "survivor", "candidates", "trainings", "cpu_hours", "bleu")} == {
        "run": "random-search-s0", "survivor": "c3", "candidates": 8, "trainings": 1.75, "cpu_hours": 2.0, "bleu": 30.0}
    searched = row["searched"]["searched"]
    assert searched["cpu_hours_search_and_training"] == 2.0 and searched["delta"] > 0 and searched["p_value"] < 0.05
    del record["test"]["hypotheses"]  # a random search that never translated its survivor is refused by name
    (tmp_path / "random_search" / "random-search-s0.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="random-search-s0.json: not a finished successive-halving record"):
        load_random_searches(tmp_path)


def test_a_halving_of_the_supernets_best_meets_random_search_at_its_cost_with_the_search(tmp_path):
    """``random_search.py --candidates_from``: the survivor of a search's best-scored genotypes against each random
    search's (paired bootstrap), its CPU hours counted with the search's."""
    runs = [_run(tmp_path, "searched-s0-t0", "searched", "CPU", BAD)]
    kinds = {"searched": {"runs": 1, "bleu_mean": 30.0, "cpu_hours_total": 1.0}}
    (tmp_path / "random_search").mkdir()
    base = {"parameters": 2_400_000, "candidates": [{"name": f"c{i}"} for i in range(4)], "survivor": "c1",
            "schedule": [{"candidates": 4, "budget": 500}, {"candidates": 1, "budget": 4000}], "updates_total": 6000}
    for name, kind, hyps, extra in (
            ("random-search-s0", "random_search", BAD, {}),
            ("halving-search-spos-s0", "supernet_halving", GOOD,
             {"candidates_from": {"search": "search-spos-s0", "search_cpu_seconds": 1800.0}})):
        (tmp_path / f"{name}.txt").write_text("\n".join(hyps))
        record = base | extra | {"run": name, "kind": kind, "cpu_seconds": 5400.0,
                                 "test": {"bleu": 40.0 if hyps is GOOD else 30.0, "hypotheses": f"{name}.txt"}}
        (tmp_path / "random_search" / f"{name}.json").write_text(json.dumps(record))
    halving, plain = random_search_rows(load_random_searches(tmp_path), runs, kinds, tmp_path, REFS)
    assert plain["kind"] == "random_search" and "against_random_search" not in plain
    assert halving["kind"] == "supernet_halving" and halving["candidates_from"] == "search-spos-s0"
    assert halving["cpu_hours"] == 1.5 and halving["cpu_hours_with_search"] == 2.0
    (against,) = halving["against_random_search"].items()
    assert against[0] == "random-search-s0" and against[1]["delta"] > 0 and against[1]["p_value"] < 0.05
    assert halving["searched"]["searched"]["delta"] < 0  # the searched row (BAD) against this survivor (GOOD)
    del record["candidates_from"]  # a halving that does not say whose genotypes it halved is refused
    (tmp_path / "random_search" / "halving-search-spos-s0.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"missing \['candidates_from'\]"):
        load_random_searches(tmp_path)
