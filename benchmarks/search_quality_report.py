"""The summary of one pair of ``benchmarks/search_quality.py``: table, significance, plot (from the run JSONs).

Reads every ``<run>.json`` in the pair's results folder, so the summary can be rebuilt at any time from
committed files alone (``python benchmarks/search_quality_report.py benchmarks/results/en-de``). Each summary
also rebuilds ``overview.md`` beside the pairs' folders: every pair's searched rows against the issue's goal.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

logger = logging.getLogger("search_quality")
KINDS = ("searched", "standard", "random")


def row(record: dict[str, Any]) -> str:
    """The table row of a run: its kind, with the search variant of a searched run or search (searched-long)."""
    variant = record.get("search_variant")
    return f"{record['kind']}-{variant}" if variant and record["kind"] in ("searched", "search") else record["kind"]


def training_rows(kinds: dict[str, Any]) -> list[str]:
    """Rows of training runs in table order: searched, its variants, standard, random."""
    variants = sorted(k for k in kinds if k.startswith("searched-"))
    return [k for k in ("searched", *variants, "standard", "random") if k in kinds]


def search_rows(kinds: dict[str, Any]) -> list[str]:
    return sorted(k for k in kinds if k == "search" or k.startswith("search-"))


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return round(statistics.fmean(values), 2), round(statistics.stdev(values), 2) if len(values) > 1 else 0.0


def load_runs(results: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training runs, search runs) recorded in ``results``, sorted by name."""
    runs, searches = [], []
    for path in sorted(results.glob("*.json")):
        if path.name.startswith("summary"):
            continue
        record = json.loads(path.read_text())
        if record.get("kind") == "search":
            searches.append(record)
        elif record.get("kind") in KINDS:
            runs.append(record)
    return runs, searches


def replica_pairs(results: Path, runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], Path]]:
    """(copy, the run of ``runs`` it repeats, the copy's record) for each ``--replicate`` run in ``results/replicas``."""
    by_name = {r["run"]: r for r in runs}
    out = []
    for path in sorted((results / "replicas").glob("*.json")):
        again = json.loads(path.read_text())
        if again.get("replica_of") in by_name:
            out.append((again, by_name[again["replica_of"]], path))
    return out


def replicas(results: Path, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ``--replicate`` run beside the run it repeats: same command, another (or the same) machine."""
    out = []
    for again, first, _ in replica_pairs(results, runs):
        out.append({
            "run": first["run"], "device": first.get("device", "unrecorded"), "bleu": first["test"]["bleu"],
            "val_loss": (first.get("val_best") or {}).get("val_loss"),
            "replica": again["run"], "replica_device": again["device"], "replica_bleu": again["test"]["bleu"],
            "replica_val_loss": (again.get("val_best") or {}).get("val_loss"),
            "delta_bleu": round(again["test"]["bleu"] - first["test"]["bleu"], 2),
        })
    return out


def _bootstrap(pairs: list[tuple[dict[str, Any], dict[str, Any]]], repo: Path, references: list[str],
               names: tuple[str, str]) -> dict[str, Any]:
    """Paired bootstrap of each (a, b) pair of runs, and pooled (those pairs' test sets concatenated, so every
    pair counts once)."""
    from hf_revdarts.evaluation.significance import paired_bootstrap

    def hyps(run: dict[str, Any]) -> list[str]:
        return (repo / run["test"]["hypotheses"]).read_text(encoding="utf-8").split("\n")[: len(references)]

    out: dict[str, Any] = {"per_seed": []}
    pooled_a: list[str] = []
    pooled_b: list[str] = []
    for a, b in pairs:
        ha, hb = hyps(a), hyps(b)
        res = paired_bootstrap(ha, hb, references)
        out["per_seed"].append({names[0]: a["run"], names[1]: b["run"], **res.to_dict()})
        pooled_a += ha
        pooled_b += hb
    if len(pairs) > 1:
        pooled = paired_bootstrap(pooled_a, pooled_b, references * len(pairs))
        out["pooled"] = {"pairs": len(pairs), **pooled.to_dict()}
    else:
        out["pooled"] = dict(out["per_seed"][0], pairs=1)
    return out


def significance(runs: list[dict[str, Any]], repo: Path, references: list[str], searched: str = "searched") -> dict[str, Any]:
    """Paired bootstrap of the ``searched`` row vs standard: each of its runs against the standard run of its
    training seed, and pooled over those pairs."""
    standard = {r["train_seed"]: r for r in runs if r["kind"] == "standard"}
    pairs = [(r, standard[r["train_seed"]]) for r in runs if row(r) == searched and r["train_seed"] in standard]
    if not pairs:
        return {"note": "no searched/standard pair with the same training seed yet"}
    return _bootstrap(pairs, repo, references, ("searched", "standard"))


def significance_random(runs: list[dict[str, Any]], repo: Path, references: list[str], searched: str) -> dict[str, Any]:
    """Paired bootstrap of each run of the ``searched`` row against each random genotype's run, and pooled: is the
    searched genotype better than a draw from the same space?"""
    randoms = [r for r in runs if r["kind"] == "random"]
    pairs = [(r, q) for r in runs if row(r) == searched for q in randoms]
    if not pairs:
        return {"note": "no searched and random runs yet"}
    return _bootstrap(pairs, repo, references, ("searched", "random"))


def significance_same_machine(results: Path, runs: list[dict[str, Any]], repo: Path,
                              references: list[str]) -> dict[str, Any]:
    """Paired bootstrap with the machine held fixed: for each standard run, of the table or a ``--replicate`` copy,
    every searched and random run (or copy) trained on its device against it, wherever a copy takes part (the
    table's own runs on one machine are the table's significance). When the table's kinds ran on different
    machines, this is the comparison that does not mix them."""
    # a copy sits in the row of the run it repeats (an older copy did not keep its search variant)
    copies = [{**again, "kind": first["kind"], "search_variant": first.get("search_variant"), "copy": True}
              for again, first, _ in replica_pairs(results, runs)]
    everyone = runs + copies
    out: dict[str, Any] = {}
    for standard in [r for r in everyone if r["kind"] == "standard"]:
        same = [r for r in everyone if r["kind"] in ("searched", "random") and r.get("device") == standard.get("device")]
        if not same or not (standard.get("copy") or any(r.get("copy") for r in same)):
            continue
        out[standard["run"]] = {"device": standard["device"], "rows": {
            kind: _bootstrap([(r, standard) for r in same if row(r) == kind], repo, references, ("run", "standard"))
            for kind in training_rows({row(r): None for r in same})}}
    return out


def table(runs: list[dict[str, Any]], searches: list[dict[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, Any] = {}
    for kind in {row(r) for r in runs}:
        rs = [r for r in runs if row(r) == kind]
        bleu, lower = [r["test"]["bleu"] for r in rs], [r["test"]["bleu_lowercase"] for r in rs]
        kinds[kind] = {
            "runs": len(rs),
            "bleu_mean": _mean_std(bleu)[0], "bleu_std": _mean_std(bleu)[1],
            "bleu_lowercase_mean": _mean_std(lower)[0], "bleu_lowercase_std": _mean_std(lower)[1],
            "bleu": {r["run"]: r["test"]["bleu"] for r in rs},
            "parameters_mean": round(statistics.fmean(r["parameters"] for r in rs)),
            "updates": sorted({r["updates"] for r in rs}),
            "train_wall_hours_mean": round(statistics.fmean(r["wall_seconds"] for r in rs) / 3600, 3),
            "cpu_hours_total": round(sum(r["cpu_seconds"] for r in rs) / 3600, 3),
        }
    for kind in {row(s) for s in searches}:
        ss = [s for s in searches if row(s) == kind]
        kinds[kind] = {
            "runs": len(ss),
            "genotypes": {s["run"]: s["genotype"] for s in ss},
            "wall_hours_mean": round(statistics.fmean(s["wall_seconds"] for s in ss) / 3600, 3),
            "cpu_hours_total": round(sum(s["cpu_seconds"] for s in ss) / 3600, 3),
        }
    return {kind: kinds[kind] for kind in training_rows(kinds) + search_rows(kinds)}


def markdown(summary: dict[str, Any]) -> str:
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
                         + (f" (standard error over runs {se[kind]:.2f}: {delta / se[kind]:+.1f} SE)." if se.get(kind) else ".")
                         for kind, delta in summary["minus_random_mean"].items()]
    for kind in search_rows(k):
        genotypes = k[kind]["genotypes"]
        lines += ["", f"Searched genotypes ({kind}):"] + [f"- {n}: `{json.dumps(g)}`" for n, g in genotypes.items()]
        distinct = {json.dumps(g, sort_keys=True) for g in genotypes.values()}
        if len(distinct) < len(genotypes):
            lines.append(f"\n{len(genotypes)} searches, {len(distinct)} distinct genotype(s): a genotype derived by "
                         "several seeds is trained once per training seed (under the first search's name).")
    if summary.get("flags_not_supported"):
        lines += ["", f"Recipe flags the scripts did not support yet (left out): {', '.join(summary['flags_not_supported'])}"]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = training_rows(summary["kinds"])
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(kinds), 3.6))
    for x, kind in enumerate(kinds):
        values = [r["test"]["bleu"] for r in runs if row(r) == kind]
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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_summary(protocol: Any) -> dict[str, Any]:
    """Build summary.json, summary.md and bleu_per_kind.png for ``protocol`` (a search_quality.Protocol)."""
    from search_quality import PAIRS, REPO, atomic_write, rel, write_json

    from hf_revdarts.training.data import load_parallel_text

    runs, searches = load_runs(protocol.results)
    if not runs:
        raise RuntimeError(f"no finished training runs in {protocol.results}")
    _, refs = load_parallel_text(protocol.data, protocol.src, protocol.tgt, protocol.splits["test"], None,
                                 protocol.recipe["evaluate"].get("--max_examples"))
    r = protocol.recipe
    summary: dict[str, Any] = {
        "pair": protocol.pair, "scale": protocol.scale, "dataset": rel(protocol.data), "test_split": protocol.splits["test"],
        "tuning_split": protocol.splits["val"], "sizes": protocol.sizes, "recipe": r,
        "recipe_short": ", ".join(f"{k.strip('-')}={v}" for k, v in {**r["model"], **r["train"]}.items()
                                  if k in ("--d_model", "--encoder_layers", "--decoder_layers", "--max_steps",
                                           "--max_tokens", "--dropout", "--lr", "--warmup_steps"))
                        + f", average of last {r['average_last']} checkpoints, beam {r['evaluate']['--num_beams']}"
                        + f", length penalty {r['evaluate'].get('--length_penalty', 1.0)}",
        "bleu_signature": runs[0]["test"]["bleu_signature"],
        "kinds": table(runs, searches),
        "significance": significance(runs, REPO, refs),
        "significance_variants": {kind: significance(runs, REPO, refs, kind) for kind in sorted({row(r) for r in runs})
                                  if kind.startswith("searched-")},
        "significance_random": {kind: significance_random(runs, REPO, refs, kind)
                                for kind in sorted({row(r) for r in runs}) if kind.startswith("searched")},
        "replicas": replicas(protocol.results, runs),
        "significance_same_machine": significance_same_machine(protocol.results, runs, REPO, refs),
        "flags_not_supported": sorted({f for x in runs + searches for f in x.get("flags_not_supported", [])}),
        "devices": {x["run"]: x.get("device", "unrecorded") for x in searches + runs},
        "total_cpu_hours": round(sum(x["cpu_seconds"] for x in runs + searches) / 3600, 3),
        "total_wall_hours": round(sum(x["wall_seconds"] for x in runs + searches) / 3600, 3),
    }
    k = summary["kinds"]
    if "random" in k:  # each searched row (the base search and its variants) against the random genotypes
        summary["minus_random_mean"] = {kind: round(k[kind]["bleu_mean"] - k["random"]["bleu_mean"], 2)
                                        for kind in training_rows(k) if kind.startswith("searched")}
        # Between runs, the unit a user draws from (a new training is new noise): the difference's standard error.
        summary["minus_random_mean_se"] = {
            kind: round((k[kind]["bleu_std"] ** 2 / k[kind]["runs"] + k["random"]["bleu_std"] ** 2 / k["random"]["runs"])
                        ** 0.5, 2)
            for kind in summary["minus_random_mean"] if k[kind]["runs"] > 1 and k["random"]["runs"] > 1}
    write_json(protocol.results / "summary.json", summary)
    atomic_write(protocol.results / "summary.md", markdown(summary))
    plot(summary, runs, protocol.results / "bleu_per_kind.png")
    logger.info("summary: %s", rel(protocol.results / "summary.md"))
    write_overview(protocol.results.parent, {} if protocol.args.smoke else PAIRS)
    return summary


def overview_rows(summary: dict[str, Any], plan: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per searched row of a pair's summary: its BLEU beside standard and random, and the issue's goal
    (mean over seeds >= standard + 1.0 BLEU with pooled paired-bootstrap p < 0.05; above the random mean).
    ``plan``: the pair's planned sizes (PAIRS), as a run with ``--random 3`` records only what it was asked for."""
    k, sizes = summary["kinds"], plan or summary.get("sizes", {})
    rows = []
    for kind in [r for r in training_rows(k) if r.startswith("searched")]:
        sig = (summary["significance"] if kind == "searched" else summary.get("significance_variants", {}).get(kind, {}))
        pooled = sig.get("pooled")
        minus_random = summary.get("minus_random_mean", {}).get(kind)
        minus_standard = round(k[kind]["bleu_mean"] - k["standard"]["bleu_mean"], 2) if "standard" in k else None
        rows.append({
            "pair": summary["pair"] + (f" ({summary['scale']})" if summary.get("scale") else ""), "row": kind,
            "runs": k[kind]["runs"],
            "bleu_mean": k[kind]["bleu_mean"], "bleu_std": k[kind]["bleu_std"],
            "standard_mean": k.get("standard", {}).get("bleu_mean"), "standard_runs": k.get("standard", {}).get("runs", 0),
            "standard_planned": sizes.get("seeds"),
            "random_mean": k.get("random", {}).get("bleu_mean"), "random_runs": k.get("random", {}).get("runs", 0),
            "random_planned": sizes.get("random"),
            "minus_standard": minus_standard, "p_value": pooled["p_value"] if pooled else None,
            "minus_random_mean": minus_random,
            "minus_random_mean_se": summary.get("minus_random_mean_se", {}).get(kind),
            "beats_standard": (minus_standard >= 1.0 and pooled["p_value"] < 0.05) if pooled else None,
            "beats_random_mean": (minus_random > 0) if minus_random is not None else None,
        })
    return rows


def write_overview(results_root: Path, pairs: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """``overview.md``/``overview.json`` in ``results_root``: every pair's searched rows against standard and random
    in one table, from the pairs' summary.json files; a pair with no summary yet is listed as not run."""
    from search_quality import atomic_write, write_json

    folders = sorted({*pairs, *(p.parent.name for p in results_root.glob("*/summary.json"))})
    rows, missing = [], []
    for name in folders:
        path = results_root / name / "summary.json"
        if path.is_file():
            rows += overview_rows(json.loads(path.read_text()), pairs.get(name))
        else:
            missing.append(name)

    def num(value: float | None, fmt: str = ".2f") -> str:
        return "—" if value is None else format(value, fmt)

    def verdict(value: bool | None) -> str:
        return "—" if value is None else ("yes" if value else "no")

    lines = [
        "# Does the search pay? Every pair of the protocol",
        "",
        "Built from each pair's `summary.json` (`benchmarks/search_quality.py`); cased sacreBLEU on test_2016_flickr. "
        "Goal: searched mean ≥ standard mean + 1.0 BLEU with paired bootstrap p < 0.05 (pooled over the training "
        "seeds), and above the mean of the random genotypes (SE: standard error of that difference between runs). \"—\": not measured yet.",
        "",
        "| pair | searched row | searched BLEU (runs) | standard (runs of T) | random mean (runs of K) | "
        "Δ standard (p) | Δ random mean (SE) | ≥ standard + 1 | > random |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        se = r["minus_random_mean_se"]
        lines.append(
            f"| {r['pair']} | {r['row']} | {num(r['bleu_mean'])} ± {num(r['bleu_std'])} ({r['runs']}) | "
            f"{num(r['standard_mean'])} ({r['standard_runs']} of {r['standard_planned']}) | "
            f"{num(r['random_mean'])} ({r['random_runs']} of {r['random_planned']}) | "
            f"{num(r['minus_standard'], '+.2f')} ({num(r['p_value'], '.3f')}) | "
            f"{num(r['minus_random_mean'], '+.2f')} ({num(r['minus_random_mean'] / se if se else None, '+.1f')}) | "
            f"{verdict(r['beats_standard'])} | {verdict(r['beats_random_mean'])} |")
    if missing:
        lines += ["", "No finished run yet: " + ", ".join(missing) + "."]
    write_json(results_root / "overview.json", {"rows": rows, "not_run": missing})
    atomic_write(results_root / "overview.md", "\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":  # rebuild the markdown of an existing summary.json
    folder = Path(sys.argv[1])
    print(markdown(json.loads((folder / "summary.json").read_text())))
