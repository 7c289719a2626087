"""The protocol's report, rebuilt from the run records alone: for each pair ``summary.json``, ``summary.md``
(table, significance, replicas, searched genotypes) and ``bleu_per_kind.png``; beside the pairs' folders
``overview.json``/``overview.md``, every pair's searched rows against the goal.

The goal a searched row is judged on: its mean over searches (each the mean of its training seeds) at least the
standard Transformer's + 2.0 BLEU with pooled paired-bootstrap p < 0.05, and above the mean of the random genotypes
by at least 2 standard errors of that difference (``GOAL_OVER_STANDARD``, ``GOAL_OVER_RANDOM_SE``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.atomic import atomic_savefig, atomic_write_json, atomic_write_text
from .compare import (
    goal_mean,
    goal_spread,
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
from .record import RunRecord, load_random_searches, load_runs, replica_pairs, repo_path

logger = logging.getLogger(__name__)
# The search's goal (the overview's verdicts): BLEU over the standard Transformer, and standard errors over the
# random genotypes' mean.
GOAL_OVER_STANDARD, GOAL_OVER_RANDOM_SE = 2.0, 2.0
SHORT_RECIPE = ("--d_model", "--encoder_layers", "--decoder_layers", "--max_steps", "--max_tokens", "--dropout", "--lr",
                "--warmup_steps")


@dataclass(frozen=True)
class ReportSettings:
    """What a pair's summary states beside its runs' figures: where its records are (``results``; their paths are
    relative to the repository ``root``), the pair, its data and test split, the sizes it was run with, its
    recipe (``ProtocolConfig.recipe_for``) and scale; ``planned``: every pair's planned sizes, for the overview
    (a run with ``--random 3`` records only what it was asked for)."""

    root: Path
    results: Path
    pair: str
    dataset: Path
    splits: dict[str, str]
    sizes: dict[str, int]
    recipe: dict[str, Any]
    scale: str | None = None
    planned: dict[str, dict[str, int]] = field(default_factory=dict)


def recipe_short(recipe: dict[str, Any]) -> str:
    """The recipe in one line, as the tables and cards show it."""
    return (", ".join(f"{k.strip('-')}={v}" for k, v in {**recipe["model"], **recipe["train"]}.items() if k in SHORT_RECIPE)
            + f", average of last {recipe['average_last']} checkpoints, beam {recipe['evaluate']['--num_beams']}"
            + f", length penalty {recipe['evaluate'].get('--length_penalty', 1.0)}")


def summarize(settings: ReportSettings, runs: list[RunRecord], searches: list[RunRecord],
              replicas: list[tuple[RunRecord, RunRecord]], references: list[str],
              random_searches: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A pair's summary (``summary.json``) from its records, its random searches' records and the test split's
    references."""
    root, rows = settings.root, sorted({r.row for r in runs})
    kinds = table(runs, searches)
    summary: dict[str, Any] = {
        "pair": settings.pair, "scale": settings.scale, "dataset": repo_path(settings.dataset, root),
        "test_split": settings.splits["test"], "tuning_split": settings.splits["val"], "sizes": settings.sizes,
        "recipe": settings.recipe, "recipe_short": recipe_short(settings.recipe),
        "bleu_signature": runs[0].test["bleu_signature"],
        "kinds": kinds,
        "significance": significance(runs, root, references),
        "significance_variants": {kind: significance(runs, root, references, kind)
                                  for kind in rows if kind.startswith("searched-")},
        "significance_random": {kind: significance_random(runs, root, references, kind)
                                for kind in rows if kind.startswith("searched")},
        "replicas": replica_rows(replicas),
        "significance_same_machine": significance_same_machine(runs, replicas, root, references),
        "devices": {x.run: x.device or "unrecorded" for x in searches + runs},
        "total_cpu_hours": round(sum(x.cpu_seconds for x in runs + searches) / 3600, 3),
        "total_wall_hours": round(sum(x.wall_seconds for x in runs + searches) / 3600, 3),
    }
    if "random" in kinds:
        summary["minus_random_mean"], summary["minus_random_mean_se"] = minus_random(kinds)
        summary["random_percentile"] = random_percentile(kinds, runs)
    if random_searches:
        summary["random_search"] = random_search_rows(random_searches, runs, kinds, root, references)
    return summary


def count_runs(row: dict[str, Any], unit: str = "") -> str:
    """A searched row's runs as its mean counts them: "4", or "3 searches, 4 runs" where a search has several
    training seeds (``unit``: the word after a plain count)."""
    searches = row.get("searches", row["runs"])
    if searches == row["runs"]:
        return f"{row['runs']} {unit}".strip()
    return f"{searches} search{'es' if searches > 1 else ''}, {row['runs']} runs"


def markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the table, where each run ran, the paired bootstraps, the replicas, the searched genotypes."""
    k = summary["kinds"]
    lines = [
        f"# Search quality — Multi30k {summary['pair']} (test: {summary['test_split']})",
        "",
        f"Recipe: {summary['recipe_short']}. BLEU = cased detokenised sacreBLEU "
        f"(`{summary['bleu_signature']}`); lc = lowercased 13a.",
        "",
        "| kind | runs | BLEU mean ± std | lc BLEU mean ± std | parameters | updates | train wall h (mean) | CPU h (total) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in training_rows(k):
        r = k[kind]
        lines.append(
            f"| {kind} | {r['runs']} | {r['bleu_mean']:.2f} ± {r['bleu_std']:.2f} | "
            f"{r['bleu_lowercase_mean']:.2f} ± {r['bleu_lowercase_std']:.2f} | {r['parameters_mean'] / 1e6:.2f}M | "
            f"{', '.join(map(str, r['updates']))} | {r['train_wall_hours_mean']:.2f} | {r['cpu_hours_total']:.2f} |"
        )
    for kind in search_rows(k):
        lines.append(f"| {kind} | {k[kind]['runs']} | | | | | {k[kind]['wall_hours_mean']:.2f} | "
                     f"{k[kind]['cpu_hours_total']:.2f} |")
    lines += [f"\n{kind.capitalize()} over its {k[kind]['searches']} searches (each the mean of its training seeds, the "
              f"figure the goal judges): {k[kind]['bleu_search_mean']:.2f} ± {k[kind]['bleu_search_std']:.2f}."
              for kind in training_rows(k) if 1 < k[kind].get("searches", k[kind]["runs"]) != k[kind]["runs"]]
    devices: dict[str, list[str]] = {}
    for name, device in summary.get("devices", {}).items():
        devices.setdefault(device, []).append(name)
    if devices:
        lines += ["", "Ran on: " + "; ".join(f"{d} ({', '.join(sorted(n))})" for d, n in devices.items())
                  + ". Wall and CPU hours compare only within one machine."]
    lines += ["", "Runs: " + ", ".join(f"{n} {b:.2f}" for kind in training_rows(k) for n, b in k[kind]["bleu"].items())]
    for kind, sig in [("searched", summary["significance"]), *summary.get("significance_variants", {}).items()]:
        if "pooled" not in sig:
            continue
        p = sig["pooled"]
        lines += ["", f"Paired bootstrap, {kind} vs standard (pooled over {p['pairs']} seed pair(s), "
                  f"{p['n_samples']} resamples): Δ = {p['delta']:+.2f} BLEU, p = {p['p_value']:.4f}; "
                  f"{kind} {p['mean_a']:.2f} ± {p['ci_a']:.2f}, standard {p['mean_b']:.2f} ± {p['ci_b']:.2f} (95% CI)."]
        for s in sig["per_seed"]:
            lines.append(f"- {s['searched']} vs {s['standard']}: Δ = {s['delta']:+.2f}, p = {s['p_value']:.4f}")
    for kind, sig in summary.get("significance_random", {}).items():
        if "pooled" not in sig:
            continue
        p = sig["pooled"]
        lines += ["", f"Paired bootstrap, {kind} vs each random genotype (pooled over {p['pairs']} pair(s)): "
                  f"Δ = {p['delta']:+.2f} BLEU, p = {p['p_value']:.4f} (the pooled test repeats each test sentence "
                  "once per pair, so its p is optimistic; the pairs:)"]
        lines += [f"- {s['searched']} vs {s['random']}: Δ = {s['delta']:+.2f}, p = {s['p_value']:.4f}" for s in sig["per_seed"]]
    if summary.get("replicas"):
        lines += ["", "Same command again (`--replicate`): a gap between machines is the machine's, not the genotype's.",
                  "", "| run | ran on | BLEU | val loss | again on | BLEU | val loss | Δ BLEU |", "|---|---|---|---|---|---|---|---|"]
        for r in summary["replicas"]:
            loss = [f"{v:.3f}" if v is not None else "" for v in (r["val_loss"], r["replica_val_loss"])]
            lines.append(f"| {r['run']} | {r['device']} | {r['bleu']:.2f} | {loss[0]} | {r['replica_device']} | "
                         f"{r['replica_bleu']:.2f} | {loss[1]} | {r['delta_bleu']:+.2f} |")
    for replica, same in summary.get("significance_same_machine", {}).items():
        lines += ["", f"Paired bootstrap on one machine ({same['device']}): each run trained there (`-on-…`: trained "
                  f"again with `--replicate`) against `{replica}`, the standard run trained there:"]
        lines += [f"- {s['run']} ({kind}) vs {replica}: Δ = {s['delta']:+.2f}, p = {s['p_value']:.4f}"
                  for kind, sig in same["rows"].items() for s in sig["per_seed"]]
    if summary.get("minus_random_mean"):
        se = summary.get("minus_random_mean_se", {})
        lines += [""] + [f"{kind.capitalize()} mean − random mean: {delta:+.2f} BLEU"
                         + (f" (standard error {se[kind]:.2f}: {delta / se[kind]:+.1f} SE)." if se.get(kind) else ".")
                         for kind, delta in summary["minus_random_mean"].items()]
        lines += [f"{kind.capitalize()} mean above {p['below']:g} of the {p['of']} random genotypes' runs "
                  f"(percentile {p['percentile']:.0f})." for kind, p in summary.get("random_percentile", {}).items()]
    for rs in summary.get("random_search", []):
        if rs.get("candidates_from"):
            lines += ["", f"The supernet's best-scored genotypes halved (`{rs['run']}`, `benchmarks/random_search.py "
                      f"--candidates_from {rs['candidates_from']}`): its {rs['candidates']} best of the sampled genotypes "
                      f"halved on validation loss, {rs['updates_total']} updates ({rs['trainings']:.2f} trainings), "
                      f"{rs['cpu_hours']:.2f} CPU h, {rs['cpu_hours_with_search']:.2f} with the search; its survivor "
                      f"{rs['survivor']} ({rs['parameters'] / 1e6:.2f}M parameters) scores {rs['bleu']:.2f}."]
            lines += [f"- vs the random search `{run}` ({r['bleu']:.2f}, {r['cpu_hours']:.2f} CPU h): "
                      f"Δ = {r['delta']:+.2f}, p = {r['p_value']:.4f}" for run, r in rs["against_random_search"].items()]
        else:
            lines += ["", f"Random search at the same compute (`{rs['run']}`, `benchmarks/random_search.py`): "
                      f"{rs['candidates']} random genotypes halved on validation loss, {rs['updates_total']} updates "
                      f"({rs['trainings']:.2f} trainings), {rs['cpu_hours']:.2f} CPU h; its survivor {rs['survivor']} "
                      f"({rs['parameters'] / 1e6:.2f}M parameters) scores {rs['bleu']:.2f}."]
        lines += [f"- {kind} ({count_runs(r, 'runs')}, {r['bleu_mean']:.2f}"
                  + (f"; search + training {r['cpu_hours_search_and_training']:.2f} CPU h" if r[
                      "cpu_hours_search_and_training"] is not None else "")
                  + f") vs the survivor: Δ = {r['delta']:+.2f}, p = {r['p_value']:.4f}" for kind, r in rs["searched"].items()]
    for kind in search_rows(k):
        genotypes = k[kind]["genotypes"]
        lines += ["", f"Searched genotypes ({kind}):"] + [f"- {n}: `{json.dumps(g)}`" for n, g in genotypes.items()]
        distinct = {json.dumps(g, sort_keys=True) for g in genotypes.values()}
        if len(distinct) < len(genotypes):
            lines.append(f"\n{len(genotypes)} searches, {len(distinct)} distinct genotype(s): a genotype derived by "
                         "several seeds is trained once per training seed (under the first search's name).")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], runs: list[RunRecord], path: Path) -> None:
    """``bleu_per_kind.png``: each run's test BLEU (dots) and each row's mean (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = training_rows(summary["kinds"])
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(kinds), 3.6))
    for x, kind in enumerate(kinds):
        values = [r.bleu for r in runs if r.row == kind]
        offsets = [(i - (len(values) - 1) / 2) * 0.08 for i in range(len(values))]
        ax.scatter([x + o for o in offsets], values, s=28, zorder=3, label=None)
        mean = summary["kinds"][kind]["bleu_mean"]
        ax.hlines(mean, x - 0.3, x + 0.3, colors="black", linewidth=1.5, zorder=2)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_xlim(-0.6, len(kinds) - 0.4)
    ax.set_ylabel("test BLEU (cased sacreBLEU)")
    ax.set_title(f"Multi30k {summary['pair']}: runs (dots), mean (bar)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, bbox_inches=None)  # the size set above, which grows with the rows
    plt.close(fig)


def write_summary(settings: ReportSettings) -> dict[str, Any]:
    """Build the pair's summary.json, summary.md and bleu_per_kind.png from its records, then the overview."""
    from ..training.data import load_parallel_text

    runs, searches = load_runs(settings.results)
    if not runs:
        raise RuntimeError(f"no finished training runs in {settings.results}")
    src, tgt = settings.pair.split("-")
    _, references = load_parallel_text(settings.dataset, src, tgt, settings.splits["test"], None,
                                       settings.recipe["evaluate"].get("--max_examples"))
    summary = summarize(settings, runs, searches, replica_pairs(settings.results, runs), references,
                        load_random_searches(settings.results))
    atomic_write_json(settings.results / "summary.json", summary)
    atomic_write_text(settings.results / "summary.md", markdown(summary))
    plot(summary, runs, settings.results / "bleu_per_kind.png")
    logger.info("summary: %s", repo_path(settings.results / "summary.md", settings.root))
    write_overview(settings.results.parent, settings.planned)
    return summary


# ---------------------------------------------------------------------- every pair ---------------------------
def beats_random(minus_random: float | None, se: float | None) -> bool | None:
    """The goal over the random genotypes' mean: a gain of ``GOAL_OVER_RANDOM_SE`` standard errors. A gain whose
    SE is unknown (one run of a kind) decides nothing yet; no gain at all fails whatever the noise."""
    if minus_random is None:
        return None
    if minus_random <= 0:
        return False
    return minus_random >= GOAL_OVER_RANDOM_SE * se if se else None


def overview_rows(summary: dict[str, Any], plan: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per searched row of a pair's summary: its BLEU beside standard and random, and the goal.
    ``plan``: the pair's planned sizes (default: those the summary was run with)."""
    k, sizes = summary["kinds"], plan or summary.get("sizes", {})
    rows = []
    for kind in [r for r in training_rows(k) if r.startswith("searched")]:
        sig = (summary["significance"] if kind == "searched" else summary.get("significance_variants", {}).get(kind, {}))
        pooled = sig.get("pooled")
        minus_rand = summary.get("minus_random_mean", {}).get(kind)
        se = summary.get("minus_random_mean_se", {}).get(kind)
        minus_standard = round(goal_mean(k[kind]) - k["standard"]["bleu_mean"], 2) if "standard" in k else None
        rows.append({
            "pair": summary["pair"] + (f" ({summary['scale']})" if summary.get("scale") else ""), "row": kind,
            "runs": k[kind]["runs"], "searches": k[kind].get("searches", k[kind]["runs"]),
            "bleu_mean": goal_mean(k[kind]), "bleu_std": goal_spread(k[kind])[1],
            "standard_mean": k.get("standard", {}).get("bleu_mean"), "standard_runs": k.get("standard", {}).get("runs", 0),
            "standard_planned": sizes.get("seeds"),
            "random_mean": k.get("random", {}).get("bleu_mean"), "random_runs": k.get("random", {}).get("runs", 0),
            "random_planned": sizes.get("random"),
            "minus_standard": minus_standard, "p_value": pooled["p_value"] if pooled else None,
            "minus_random_mean": minus_rand,
            "minus_random_mean_se": se,
            "beats_standard": (minus_standard >= GOAL_OVER_STANDARD and pooled["p_value"] < 0.05) if pooled else None,
            "beats_random_mean": beats_random(minus_rand, se),
            "random_below": summary.get("random_percentile", {}).get(kind),
        })
    return rows


def write_overview(results_root: Path, pairs: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """``overview.md``/``overview.json`` in ``results_root``: every pair's searched rows against standard and
    random in one table, from the pairs' summary.json files; a planned pair with no summary yet is listed as
    not run."""
    results_root = Path(results_root)
    folders = sorted({*pairs, *(p.parent.name for p in results_root.glob("*/summary.json"))})
    paths = {name: results_root / name / "summary.json" for name in folders}
    summaries = {name: json.loads(path.read_text(encoding="utf-8")) for name, path in paths.items() if path.is_file()}
    rows = [row for name, summary in summaries.items() for row in overview_rows(summary, pairs.get(name))]
    missing = [name for name in folders if name not in summaries]

    def num(value: float | None, fmt: str = ".2f") -> str:
        return "—" if value is None else format(value, fmt)

    def verdict(value: bool | None) -> str:
        return "—" if value is None else ("yes" if value else "no")

    def below(value: dict[str, Any] | None) -> str:
        return "—" if value is None else f"{value['below']:g} of {value['of']}"

    lines = [
        "# Does the search pay? Every pair of the protocol",
        "",
        "Built from each pair's `summary.json` (`benchmarks/search_quality.py`); cased sacreBLEU on test_2016_flickr. "
        "Searched BLEU: the mean over searches, each the mean of its training seeds (± the std between searches, or "
        "between the training seeds of one search). "
        f"Goal: searched mean ≥ standard mean + {GOAL_OVER_STANDARD:.1f} BLEU with paired bootstrap p < 0.05 (pooled "
        f"over the training seeds), and above the mean of the random genotypes by ≥ {GOAL_OVER_RANDOM_SE:.0f} standard "
        "errors of that difference (between searches, or a search's training seeds, and between random runs; in "
        "brackets: the difference in SE). \"—\": not measured yet (one "
        "run of a kind has no SE).",
        "",
        "| pair | searched row | searched BLEU (runs) | standard (runs of T) | random mean (runs of K) | "
        f"Δ standard (p) | Δ random mean (in SE) | ≥ standard + {GOAL_OVER_STANDARD:.0f} | "
        f"≥ random + {GOAL_OVER_RANDOM_SE:.0f} SE | random runs below it |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        se = r["minus_random_mean_se"]
        lines.append(
            f"| {r['pair']} | {r['row']} | {num(r['bleu_mean'])} ± {num(r['bleu_std'])} ({count_runs(r)}) | "
            f"{num(r['standard_mean'])} ({r['standard_runs']} of {r['standard_planned']}) | "
            f"{num(r['random_mean'])} ({r['random_runs']} of {r['random_planned']}) | "
            f"{num(r['minus_standard'], '+.2f')} ({num(r['p_value'], '.3f')}) | "
            f"{num(r['minus_random_mean'], '+.2f')} ({num(r['minus_random_mean'] / se if se else None, '+.1f')}) | "
            f"{verdict(r['beats_standard'])} | {verdict(r['beats_random_mean'])} | {below(r['random_below'])} |")
    if missing:
        lines += ["", "No finished run yet: " + ", ".join(missing) + "."]
    lines += random_search_lines(summaries)
    lines += ranking_lines(results_root, folders)
    atomic_write_json(results_root / "overview.json", {"rows": rows, "not_run": missing})
    atomic_write_text(results_root / "overview.md", "\n".join(lines) + "\n")
    return rows


def random_search_lines(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """The overview's table of random search at the same compute against each searched row, from the pairs'
    summaries (by folder name), where a random search ran."""
    rows = []
    for name, summary in summaries.items():
        for rs in summary.get("random_search", []):
            if rs.get("candidates_from"):
                source = f"top {rs['candidates']} of `{rs['candidates_from']}`"
                hours = f"{rs['cpu_hours_with_search']:.2f} (with search)"
            else:
                source, hours = f"{rs['candidates']} random", f"{rs['cpu_hours']:.2f}"
            for kind, r in rs["searched"].items():
                cost = r["cpu_hours_search_and_training"]
                rows.append(f"| {name} | {rs['run']} | {source} → {rs['survivor']} | {rs['trainings']:.2f} | "
                            f"{hours} | {rs['bleu']:.2f} | {kind} | {r['bleu_mean']:.2f} ({count_runs(r)}) | "
                            f"{'—' if cost is None else format(cost, '.2f')} | {r['delta']:+.2f} ({r['p_value']:.3f}) |")
    if not rows:
        return []
    return ["", "## Search or random search at the same compute?", "",
            "Random search with successive halving (`benchmarks/random_search.py`): genotypes drawn from the space, "
            "trained briefly, halved on validation loss, the survivor trained with the recipe and scored once; with "
            "`--candidates_from`, the same halving of the genotypes a search's supernet scored best (its CPU hours "
            "include the search's). Beside it each searched row, its CPU hours being one search's plus one "
            "training's (means), and the paired bootstrap of the row's runs against the survivor (pooled).", "",
            "| pair | random search | candidates → survivor | trainings of updates | CPU h | survivor BLEU | "
            "searched row | its BLEU (runs) | search + training CPU h | Δ searched − survivor (p) |",
            "|---|---|---|---|---|---|---|---|---|---|", *rows]


def ranking_lines(results_root: Path, folders: list[str]) -> list[str]:
    """The overview's ranking table: per pair, each predictor's Kendall τ against the genotypes' stand-alone
    validation loss, from ``<pair>/ranking/ranking.json`` (``benchmarks/supernet_ranking.py``), where it exists."""
    rows = []
    for name in folders:
        path = results_root / name / "ranking" / "ranking.json"
        if path.is_file():
            ranking = json.loads(path.read_text(encoding="utf-8"))
            recipes = ranking.get("search_recipes", {})
            rows += [f"| {name} | {predictor} | {predictor_recipe(predictor, recipes)} | {r['genotypes']} | "
                     f"{r['tau']:+.2f} | [{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}] |"
                     for predictor, r in ranking["against_val_loss"].items() if r.get("tau") is not None]
    if not rows:
        return []
    return ["", "## Does anything rank the genotypes?", "",
            "Kendall τ-b of each predictor against the genotypes' stand-alone validation loss (averaged model at the "
            "recipe's budget), 95% bootstrap interval over genotypes (`benchmarks/supernet_ranking.py`; "
            "`<pair>/ranking/ranking.md`). A supernet's estimate: its held-out loss with only the genotype's ops.",
            "", "| pair | predictor | search recipe | genotypes | τ | 95% interval |", "|---|---|---|---|---|---|", *rows]


def predictor_recipe(predictor: str, recipes: dict[str, str]) -> str:
    """The recipe of the search behind a ranking predictor ("supernet <run>", "α of <run>"): "default" or a named
    search variant, from ``ranking.json``'s ``search_recipes``; "—" for the predictors that are not a search's."""
    run = predictor.removeprefix("supernet ").removeprefix("α of ")
    return "—" if run == predictor else recipes.get(run, "—")
