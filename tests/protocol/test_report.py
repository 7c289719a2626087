"""The protocol's report: the committed summary.md and overview.md are what the report builds from the committed
records, byte for byte; the overview judges every pair's searched rows on the goal; a model card's comparison
comes from the records of its run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hf_revdarts.protocol.card import ProtocolRun, training_cost
from hf_revdarts.protocol.recipe import ProtocolConfig
from hf_revdarts.protocol.report import ReportSettings, markdown, recipe_short, write_overview, write_summary

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
CONFIG = ProtocolConfig.load(REPO / "configs" / "protocol" / "multi30k.yaml")
DATA = REPO / CONFIG.dataset


@pytest.mark.parametrize("pair", ["en-de", "en-fr", "en-cs"])
def test_the_committed_summary_md_is_the_markdown_of_its_summary_json(pair):
    summary = json.loads((RESULTS / pair / "summary.json").read_text())
    assert markdown(summary) == (RESULTS / pair / "summary.md").read_text()
    assert summary["recipe"] == CONFIG.recipe_for() and summary["recipe_short"] == recipe_short(CONFIG.recipe_for())


def test_a_pairs_summary_names_a_halving_of_the_supernets_best_by_its_search_and_meets_each_random_search():
    summary = json.loads((RESULTS / "en-de" / "summary.json").read_text())
    summary["random_search"] = [{"run": "halving-search-spos-s0", "kind": "supernet_halving", "survivor": "c2",
                                 "parameters": 2_400_000, "candidates": 4, "updates_total": 6000, "trainings": 1.5,
                                 "cpu_hours": 1.6, "candidates_from": "search-spos-s0", "cpu_hours_with_search": 2.0,
                                 "bleu": 34.9, "searched": {}, "against_random_search": {"random-search-s0": {
                                     "bleu": 33.5, "cpu_hours": 2.1, "delta": 1.4, "p_value": 0.002}}}]
    text = markdown(summary)
    assert ("`benchmarks/random_search.py --candidates_from search-spos-s0`): its 4 best of the sampled genotypes halved "
            "on validation loss, 6000 updates (1.50 trainings), 1.60 CPU h, 2.00 with the search; its survivor c2 "
            "(2.40M parameters) scores 34.90.") in text
    assert "- vs the random search `random-search-s0` (33.50, 2.10 CPU h): Δ = +1.40, p = 0.0020" in text
    assert "Random search at the same compute" not in text


def test_the_committed_overview_is_rebuilt_from_the_pairs_summaries(tmp_path):
    for pair in CONFIG.pairs:
        (tmp_path / pair).mkdir()
        shutil.copyfile(RESULTS / pair / "summary.json", tmp_path / pair / "summary.json")
        if (RESULTS / pair / "ranking").is_dir():
            shutil.copytree(RESULTS / pair / "ranking", tmp_path / pair / "ranking")
    write_overview(tmp_path, CONFIG.pairs)
    for name in ("overview.md", "overview.json"):
        assert (tmp_path / name).read_text() == (RESULTS / name).read_text(), name


@pytest.mark.skipif(not DATA.is_dir(), reason="needs the Multi30k test references in ../shared/data/multi30k")
def test_a_pairs_summary_is_rebuilt_from_its_records_byte_for_byte(tmp_path):
    """From the records and the test references alone: the table, every paired bootstrap, the plot."""
    results = tmp_path / "en-fr"
    shutil.copytree(RESULTS / "en-fr", results)
    for name in ("summary.json", "summary.md", "bleu_per_kind.png"):
        (results / name).unlink()
    write_summary(ReportSettings(root=REPO, results=results, pair="en-fr", dataset=DATA, splits=CONFIG.splits,
                                 sizes=CONFIG.sizes("en-fr"), recipe=CONFIG.recipe_for(), planned={"en-fr": CONFIG.pairs["en-fr"]}))
    for name in ("summary.json", "summary.md", "bleu_per_kind.png"):
        assert (results / name).read_bytes() == (RESULTS / "en-fr" / name).read_bytes(), name


def _pair_summary(pair: str, searched: list[float], standard: list[float], random: list[float], p_value: float,
                  se: float | None = None):
    import statistics

    def kind(values):
        return {"runs": len(values), "bleu_mean": round(statistics.fmean(values), 2),
                "bleu_std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}

    kinds = {"searched": kind(searched), "standard": kind(standard)}
    summary = {"pair": pair, "sizes": {"searches": 1, "seeds": 1, "random": len(random)}, "kinds": kinds,
               "significance": {"pooled": {"delta": 0.0, "p_value": p_value}}}
    if random:
        kinds["random"] = kind(random)
        summary["minus_random_mean"] = {"searched": round(kinds["searched"]["bleu_mean"] - kinds["random"]["bleu_mean"], 2)}
        summary["minus_random_mean_se"] = {"searched": se}
    return summary


def test_overview_puts_every_pair_against_the_goal(tmp_path):
    """The cross-pair table judges each searched row on the goal: mean over seeds >= standard + 2.0 with
    p < 0.05, and above the random mean by >= 2 standard errors; a pair with no summary is listed as not run."""
    cases = {"en-de": _pair_summary("en-de", [34.0, 34.4], [31.0, 31.6], [33.0, 33.6], 0.001, se=0.4),  # wins both
             # +2.9 over standard, but +0.9 over random is 1.8 SE only
             "de-en": _pair_summary("de-en", [34.0, 34.4], [31.0, 31.6], [33.0, 33.6], 0.001, se=0.5),
             "en-fr": _pair_summary("en-fr", [41.9], [40.0], [42.0, 42.4], 0.001),  # +1.9 only: no; below random
             "en-cs": _pair_summary("en-cs", [30.5], [28.0], [30.0, 30.2], 0.001),  # above random: SE unknown
             "xx-yy": _pair_summary("xx-yy", [30.0], [28.0], [], 0.2)}  # +2.0 but not significant; no random yet
    # a search trained with two seeds: the row is judged by its mean over the 3 searches, not over the 4 runs
    cases["de-fr"] = _pair_summary("de-fr", [34.0, 35.0, 32.0, 33.0], [31.0, 31.6], [], 0.001)
    cases["de-fr"]["kinds"]["searched"].update(searches=3, bleu_search_mean=33.17, bleu_search_std=1.26)
    cases["en-de"]["random_percentile"] = {"searched": {"below": 2, "of": 2, "percentile": 100.0}}
    cases["en-de"]["random_search"] = [{"run": "random-search-s0", "survivor": "c5", "parameters": 2_200_000,
                                        "candidates": 8, "updates_total": 7000, "trainings": 1.75, "cpu_hours": 2.1,
                                        "bleu": 33.5, "searched": {"searched": {
                                            "runs": 2, "bleu_mean": 34.2, "cpu_hours_search_and_training": 2.05,
                                            "delta": 0.7, "p_value": 0.01}}},
                                       {"run": "halving-search-spos-s0", "kind": "supernet_halving", "survivor": "c2",
                                        "parameters": 2_400_000, "candidates": 4, "updates_total": 6000,
                                        "trainings": 1.5, "cpu_hours": 1.6, "candidates_from": "search-spos-s0",
                                        "cpu_hours_with_search": 2.0, "bleu": 34.9, "against_random_search": {
                                            "random-search-s0": {"bleu": 33.5, "cpu_hours": 2.1, "delta": 1.4,
                                                                 "p_value": 0.002}},
                                        "searched": {"searched": {
                                            "runs": 2, "bleu_mean": 34.2, "cpu_hours_search_and_training": 2.05,
                                            "delta": -0.7, "p_value": 0.03}}}]
    for pair, summary in cases.items():
        (tmp_path / pair).mkdir()
        (tmp_path / pair / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "en-de" / "ranking").mkdir()  # the ranking diagnostic's τ, where it ran
    (tmp_path / "en-de" / "ranking" / "ranking.json").write_text(json.dumps({"against_val_loss": {
        "supernet search-s0": {"genotypes": 9, "tau": 0.2778, "ci95": [-0.4, 0.9394]},
        "another training seed (ceiling)": {"genotypes": 0, "tau": None, "ci95": None}},
        "search_recipes": {"search-s0": "default"}}))
    rows = write_overview(tmp_path, {"en-de": {"seeds": 2, "random": 4}, "en-it": {"seeds": 1, "random": 2}})
    verdicts = {r["pair"]: (r["minus_standard"], r["beats_standard"], r["beats_random_mean"]) for r in rows}
    assert verdicts == {"en-de": (2.9, True, True), "de-en": (2.9, True, False), "en-fr": (1.9, False, False),
                        "en-cs": (2.5, True, None), "xx-yy": (2.0, False, None), "de-fr": (1.87, False, None)}
    assert {r["pair"]: r["random_planned"] for r in rows}["en-de"] == 4  # the plan, not what a partial run asked for
    text = (tmp_path / "overview.md").read_text()
    assert "| en-de | searched | 34.20 ± 0.28 (2) | 31.30 (2 of 2) | 33.30 (2 of 4) | +2.90 (0.001) | +0.90 (+2.2) |" in text
    assert "+2.90 (0.001) | +0.90 (+2.2) | yes | yes | 2 of 2 |" in text and "| no | — | — |" in text
    assert "≥ standard + 2 | ≥ random + 2 SE | random runs below it |" in text
    assert "| en-de | random-search-s0 | 8 random → c5 | 1.75 | 2.10 | 33.50 | searched | 34.20 (2) | 2.05 | +0.70 (0.010) |" in text
    # the halving of a search's best-scored genotypes: named by its source, its hours with the search's
    assert ("| en-de | halving-search-spos-s0 | top 4 of `search-spos-s0` → c2 | 1.50 | 2.00 (with search) | 34.90 | "
            "searched | 34.20 (2) | 2.05 | -0.70 (0.030) |") in text
    assert "| de-fr | searched | 33.17 ± 1.26 (3 searches, 4 runs) | 31.30 (2 of 1) | — (0 of 0) | +1.87 (0.001) |" in text
    assert "No finished run yet: en-it." in text
    assert "| en-de | supernet search-s0 | default | 9 | +0.28 | [-0.40, +0.94] |" in text and "ceiling" not in text
    assert json.loads((tmp_path / "overview.json").read_text())["not_run"] == ["en-it"]


# ---------------------------------------------------------------------- a model card's comparison -------------
def test_a_zoo_runs_card_names_the_run_it_continues_its_search_and_both_sittings():
    protocol = ProtocolRun.load(RESULTS / "en-de" / "zoo" / "zoo-searched-long-s0-t0.json", REPO)
    assert (protocol.continued.run, protocol.search.run, protocol.original) == ("searched-long-s0-t0", "search-long-s0", None)
    assert protocol.summary == json.loads((RESULTS / "en-de" / "summary.json").read_text())
    comparison, commands = protocol.comparison()
    assert comparison.startswith("This model is run `searched-long-s0-t0` of the hf_revdarts protocol trained longer, "
                                 "to 8000 updates")
    assert "| **searched-long** (this model's kind) | 2 | 34.14 ± 0.47 | 33.81, 34.47 |" in comparison
    search, train, evaluate, train_longer, evaluate_longer = commands.split("\n")  # the search, then each sitting
    assert "training/search.py" in search and "--max_steps 4000" in train and "--max_steps 8000" in train_longer
    assert "searched-long-s0-t0/averaged" in evaluate and "zoo-searched-long-s0-t0/averaged" in evaluate_longer
    cost = training_cost({"steps": 8000, "train_seconds": 9000.0}, protocol)
    assert cost.startswith("8000 steps, 150.0 min on 1 process(es): the first 4000 on CPU: 2 cores (")
    assert "the 4000 more on GPU: NVIDIA H200" in cost
    assert training_cost(None) == "not recorded" and training_cost({"steps": 6, "train_seconds": 60}) == \
        "6 steps, 1.0 min on 1 process(es)"


def test_a_zoo_run_continuing_a_rebuilt_run_counts_the_rebuild_as_its_first_sitting():
    """En→Cs: the protocol run was trained in an earlier sitting, trained again here from its record (--rebuild),
    then continued to 8000 updates: the card's first part is the rebuild that was continued, not the first run."""
    path = RESULTS / "en-cs" / "zoo" / "zoo-searched-long-s0-t0.json"
    protocol = ProtocolRun.load(path, REPO)
    rebuilt = json.loads((RESULTS / "en-cs" / "rebuilt" / "searched-long-s0-t0.json").read_text())
    assert protocol.continued.source == RESULTS / "en-cs" / "rebuilt" / "searched-long-s0-t0.json"
    zoo = json.loads(path.read_text())
    cost = training_cost({"steps": 8000, "train_seconds": zoo["train_seconds"]}, protocol)
    first, more = rebuilt["train_seconds"] / 60, (zoo["train_seconds"] - rebuilt["train_seconds"]) / 60
    assert f"the first 4000 on CPU: 2 cores ({first:.1f} min), the 4000 more on CPU: 2 cores ({more:.1f} min)" in cost
    assert 50 < more < 80  # the continuation's own hour, not the difference to another sitting's time
    assert protocol.continued.commands[0] in protocol.comparison()[1]


def test_a_replicas_card_sits_in_the_row_of_the_run_it_repeats_and_refuses_another_models_scores():
    protocol = ProtocolRun.load(RESULTS / "en-fr" / "replicas" / "searched-long-s0-t0-on-cpu.json", REPO)
    assert protocol.original.run == "searched-long-s0-t0" and protocol.search.run == "search-long-s0"
    comparison, _ = protocol.comparison()
    assert "trained again with the same command on CPU: 2 cores (as `searched-long-s0-t0-on-cpu`: 53.77 BLEU" in comparison
    assert "`python benchmarks/search_quality.py --pair en-fr --search_variant long`" in comparison
    protocol.check_describes("en-fr", "test_2016_flickr", 53.77, "--eval_results e.json")
    with pytest.raises(ValueError, match="reports test BLEU 53.77, --eval_results e.json 54.0: they describe different"):
        protocol.check_describes("en-fr", "test_2016_flickr", 54.0, "--eval_results e.json")
    with pytest.raises(ValueError, match="is a en-fr run tested on test_2016_flickr, --eval_results e.json a en-de"):
        protocol.check_describes("en-de", "test_2016_flickr", 53.77, "--eval_results e.json")
    with pytest.raises(ValueError, match="lacks .*not a training run of benchmarks/search_quality.py"):
        ProtocolRun.load(RESULTS / "en-fr" / "search-fast-s0.json", REPO)
