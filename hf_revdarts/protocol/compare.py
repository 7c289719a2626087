"""The protocol's comparisons, from run records: the table of each kind (mean ± std of the test BLEU, sizes,
cost), the paired bootstrap of each searched row against the standard Transformer and the random genotypes,
the runs trained again beside the runs they repeat, the comparison with the machine held fixed, and each
searched row's mean against the random genotypes' mean with its standard error between runs.

The rows of a table: ``searched`` (the base search's genotypes), ``searched-<variant>`` (a search variant's),
``standard``, ``random``, and the searches (``search``, ``search-<variant>``) with their genotypes and cost.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .record import RunRecord


def training_rows(rows: Iterable[str]) -> list[str]:
    """Rows of training runs in table order: searched, its variants, standard, random."""
    rows = set(rows)
    variants = sorted(k for k in rows if k.startswith("searched-"))
    return [k for k in ("searched", *variants, "standard", "random") if k in rows]


def search_rows(rows: Iterable[str]) -> list[str]:
    return sorted(k for k in rows if k == "search" or k.startswith("search-"))


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation, rounded to 0.01 (the std of one value: 0.0)."""
    if not values:
        return None, None
    return round(statistics.fmean(values), 2), round(statistics.stdev(values), 2) if len(values) > 1 else 0.0


def search_means(runs: list[RunRecord]) -> list[float]:
    """A searched row's BLEU per search: the mean over that search's training seeds."""
    by_search: dict[str, list[float]] = {}
    for r in runs:
        by_search.setdefault(r.search or r.run, []).append(r.bleu)
    return [statistics.fmean(v) for v in by_search.values()]


def goal_mean(row: dict[str, Any]) -> float:
    """The figure a searched row is judged by: the mean over its searches (each the mean of its training seeds), so
    that a search trained with more seeds does not weigh more; other rows: the mean over runs."""
    return row.get("bleu_search_mean", row["bleu_mean"])


def goal_spread(row: dict[str, Any]) -> tuple[int, float]:
    """How many values the goal mean of a row averages, and their std: its searches where it has several, else its
    runs (the training seeds of its one search, or the runs of a row that is no search's)."""
    if row.get("searches", 1) > 1:
        return row["searches"], row["bleu_search_std"]
    return row["runs"], row["bleu_std"]


def table(runs: list[RunRecord], searches: list[RunRecord]) -> dict[str, Any]:
    """Each row's figures: a training row's runs, BLEU (cased and lowercased) mean ± std, each run's BLEU,
    mean parameters, updates, mean wall hours and total CPU hours, and a searched row's mean ± std over its
    searches; a search row's genotypes and cost."""
    kinds: dict[str, Any] = {}
    for kind in {r.row for r in runs}:
        rs = [r.require("test.bleu", "test.bleu_lowercase", "parameters", "updates", "wall_seconds", "cpu_seconds")
              for r in runs if r.row == kind]
        bleu, lower = mean_std([r.bleu for r in rs]), mean_std([r.bleu_lowercase for r in rs])
        kinds[kind] = {
            "runs": len(rs),
            "bleu_mean": bleu[0], "bleu_std": bleu[1], "bleu_lowercase_mean": lower[0], "bleu_lowercase_std": lower[1],
            "bleu": {r.run: r.bleu for r in rs},
            "parameters_mean": round(statistics.fmean(r.parameters for r in rs)),
            "updates": sorted({r.updates for r in rs}),
            "train_wall_hours_mean": round(statistics.fmean(r.wall_seconds for r in rs) / 3600, 3),
            "cpu_hours_total": round(sum(r.cpu_seconds for r in rs) / 3600, 3),
        }
        if kind.startswith("searched"):
            means = search_means(rs)
            per_search = mean_std(means)
            kinds[kind].update(searches=len(means), bleu_search_mean=per_search[0], bleu_search_std=per_search[1])
    for kind in {s.row for s in searches}:
        ss = [s.require("genotype", "wall_seconds", "cpu_seconds", what="a finished search")
              for s in searches if s.row == kind]
        kinds[kind] = {
            "runs": len(ss),
            "genotypes": {s.run: s.genotype.to_dict() for s in ss},
            "wall_hours_mean": round(statistics.fmean(s.wall_seconds for s in ss) / 3600, 3),
            "cpu_hours_total": round(sum(s.cpu_seconds for s in ss) / 3600, 3),
        }
    return {kind: kinds[kind] for kind in training_rows(kinds) + search_rows(kinds)}


def minus_random(kinds: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(each searched row's mean over searches − the random genotypes' mean, the standard error of that
    difference: between searches, the unit a user draws from, where the row has several; between the training
    seeds of its one search otherwise, a new training being new noise; only for rows of more than one run)."""
    if "random" not in kinds:
        return {}, {}
    rand = kinds["random"]
    delta = {kind: round(goal_mean(kinds[kind]) - rand["bleu_mean"], 2)
             for kind in training_rows(kinds) if kind.startswith("searched")}
    se = {}
    for kind in delta:
        n, std = goal_spread(kinds[kind])
        if n > 1 and rand["runs"] > 1:
            se[kind] = round((std ** 2 / n + rand["bleu_std"] ** 2 / rand["runs"]) ** 0.5, 2)
    return delta, se


# ---------------------------------------------------------------------- paired bootstrap ---------------------
def bootstrap(pairs: list[tuple[RunRecord, RunRecord]], root: Path, references: list[str],
              names: tuple[str, str]) -> dict[str, Any]:
    """Paired bootstrap of each (a, b) pair of runs on their test translations (files relative to ``root``),
    and pooled (those pairs' test sets concatenated, so every pair counts once)."""
    from ..evaluation.significance import paired_bootstrap

    def hyps(run: RunRecord) -> list[str]:
        return (Path(root) / run.hypotheses).read_text(encoding="utf-8").split("\n")[: len(references)]

    out: dict[str, Any] = {"per_seed": []}
    pooled_a: list[str] = []
    pooled_b: list[str] = []
    for a, b in pairs:
        ha, hb = hyps(a), hyps(b)
        res = paired_bootstrap(ha, hb, references)
        out["per_seed"].append({names[0]: a.run, names[1]: b.run, **res.to_dict()})
        pooled_a += ha
        pooled_b += hb
    if len(pairs) > 1:
        pooled = paired_bootstrap(pooled_a, pooled_b, references * len(pairs))
        out["pooled"] = {"pairs": len(pairs), **pooled.to_dict()}
    else:
        out["pooled"] = dict(out["per_seed"][0], pairs=1)
    return out


def significance(runs: list[RunRecord], root: Path, references: list[str], searched: str = "searched") -> dict[str, Any]:
    """Paired bootstrap of the ``searched`` row vs standard: each of its runs against the standard run of its
    training seed, and pooled over those pairs."""
    standard = {r.train_seed: r for r in runs if r.kind == "standard"}
    pairs = [(r, standard[r.train_seed]) for r in runs if r.row == searched and r.train_seed in standard]
    if not pairs:
        return {"note": "no searched/standard pair with the same training seed yet"}
    return bootstrap(pairs, root, references, ("searched", "standard"))


def significance_random(runs: list[RunRecord], root: Path, references: list[str], searched: str) -> dict[str, Any]:
    """Paired bootstrap of each run of the ``searched`` row against each random genotype's run, and pooled: is
    the searched genotype better than a draw from the same space?"""
    randoms = [r for r in runs if r.kind == "random"]
    pairs = [(r, q) for r in runs if r.row == searched for q in randoms]
    if not pairs:
        return {"note": "no searched and random runs yet"}
    return bootstrap(pairs, root, references, ("searched", "random"))


def random_percentile(kinds: dict[str, Any], runs: list[RunRecord]) -> dict[str, dict[str, float]]:
    """Where each searched row's mean over searches lies among the random genotypes' runs: how many score below it
    (a tie counts half) of how many, and that as a percentile."""
    randoms = [r.bleu for r in runs if r.kind == "random"]
    out = {}
    for kind in [k for k in training_rows(kinds) if k.startswith("searched")] if randoms else []:
        mean = goal_mean(kinds[kind])
        below = sum(1.0 if b < mean else 0.5 if b == mean else 0.0 for b in randoms)
        out[kind] = {"below": below, "of": len(randoms), "percentile": round(100 * below / len(randoms), 1)}
    return out


def random_search_rows(random_searches: list[dict[str, Any]], runs: list[RunRecord], kinds: dict[str, Any],
                       root: Path, references: list[str]) -> list[dict[str, Any]]:
    """Each random search at the same compute (``benchmarks/random_search.py``'s records) against each searched
    row: the survivor's test BLEU and cost beside the row's mean and the cost of a search plus one training, and
    the paired bootstrap of the row's runs against the survivor (pooled over the row's runs)."""
    out = []
    survivors = {rs["run"]: RunRecord(run=rs["run"], kind="random_search", test=rs["test"]) for rs in random_searches}
    for rs in random_searches:
        survivor = survivors[rs["run"]]
        rows = {}
        for kind in [k for k in training_rows(kinds) if k.startswith("searched")]:
            search = kinds.get(kind.replace("searched", "search", 1))
            cost = (search["cpu_hours_total"] / search["runs"] + kinds[kind]["cpu_hours_total"] / kinds[kind]["runs"]
                    if search else None)
            sig = bootstrap([(r, survivor) for r in runs if r.row == kind], root, references, ("searched", "random_search"))
            rows[kind] = {"runs": kinds[kind]["runs"], "searches": kinds[kind].get("searches", kinds[kind]["runs"]),
                          "bleu_mean": goal_mean(kinds[kind]),
                          "cpu_hours_search_and_training": round(cost, 3) if cost is not None else None,
                          "delta": sig["pooled"]["delta"], "p_value": sig["pooled"]["p_value"]}
        source = rs.get("candidates_from")
        row = {"run": rs["run"], "kind": rs["kind"], "survivor": rs["survivor"],
               "parameters": rs["parameters"], "candidates": len(rs["candidates"]), "updates_total": rs["updates_total"],
               "trainings": round(rs["updates_total"] / rs["schedule"][-1]["budget"], 2),
               "cpu_hours": round(rs["cpu_seconds"] / 3600, 3), "bleu": rs["test"]["bleu"], "searched": rows}
        if source:  # the search's best-scored genotypes halved: its cost includes the search's, set against random search
            row |= {"candidates_from": source["search"],
                    "cpu_hours_with_search": round((rs["cpu_seconds"] + source["search_cpu_seconds"]) / 3600, 3)}
            row["against_random_search"] = {}
            for other in (o for o in random_searches if o["kind"] == "random_search"):
                sig = bootstrap([(survivor, survivors[other["run"]])], root, references, ("halving", "random_search"))
                row["against_random_search"][other["run"]] = {
                    "bleu": other["test"]["bleu"], "cpu_hours": round(other["cpu_seconds"] / 3600, 3),
                    "delta": sig["pooled"]["delta"], "p_value": sig["pooled"]["p_value"]}
        out.append(row)
    return out


def replica_rows(replicas: list[tuple[RunRecord, RunRecord]]) -> list[dict[str, Any]]:
    """Each ``--replicate`` run beside the run it repeats: same command, another (or the same) machine."""
    return [{
        "run": first.run, "device": first.device or "unrecorded", "bleu": first.bleu, "val_loss": first.best_val_loss,
        "replica": again.run, "replica_device": again.device, "replica_bleu": again.bleu,
        "replica_val_loss": again.best_val_loss, "delta_bleu": round(again.bleu - first.bleu, 2),
    } for again, first in replicas]


def significance_same_machine(runs: list[RunRecord], replicas: list[tuple[RunRecord, RunRecord]], root: Path,
                              references: list[str]) -> dict[str, Any]:
    """Paired bootstrap with the machine held fixed: for each standard run, of the table or a ``--replicate``
    copy, every searched and random run (or copy) trained on its device against it, wherever a copy takes part
    (the table's own runs on one machine are the table's significance). When the table's kinds ran on
    different machines, this is the comparison that does not mix them."""
    # a copy sits in the row of the run it repeats (a copy may lack the search variant it was trained with)
    copies = [replace(again, kind=first.kind, search_variant=first.search_variant) for again, first in replicas]
    copied = {id(c) for c in copies}
    everyone = runs + copies
    out: dict[str, Any] = {}
    for standard in [r for r in everyone if r.kind == "standard"]:
        same = [r for r in everyone if r.kind in ("searched", "random") and r.device == standard.device]
        if not same or not (id(standard) in copied or any(id(r) in copied for r in same)):
            continue
        out[standard.run] = {"device": standard.device, "rows": {
            kind: bootstrap([(r, standard) for r in same if r.row == kind], root, references, ("run", "standard"))
            for kind in training_rows({r.row for r in same})}}
    return out
