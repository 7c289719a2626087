#!/usr/bin/env python
"""How stable is the search across seeds? Reads the output folders of several searches with the same recipe
and different ``--seed`` and reports, per α node (a searched split of a tied block):

- the op each seed derives (argmax of softmax(α) over the non-``zero`` ops, as the derivation does);
- the share of nodes on which all seeds agree, and the mean pairwise share, beside what chance would give
  (uniform draws from k candidates: 1/k per pair, 1/k^(n-1) for all n);
- the Spearman rank correlation of α between each pair of seeds (per node, then the mean over nodes): do the
  seeds rank the candidate ops alike, not only the winner;
- each search's decisiveness (mean top weight), wall time and final validation loss.

    python benchmarks/search_stability.py runs/stability/seed0 runs/stability/seed1 runs/stability/seed2 \\
        --out benchmarks/results/search_stability/multi30k-en-de

Writes ``<out>.json`` and ``<out>.md``; folders are recorded by name, never by absolute path.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS  # noqa: E402


def _ops(folder: Path, side: str) -> list[str]:
    """The search space of ``side``: the supernet's config if saved, else the default op set."""
    config = folder / "supernet" / "config.json"
    if config.is_file():
        ops = json.loads(config.read_text()).get(f"search_{side}_ops")
        if ops:
            return list(ops)
    return list(ENCODER_OPS if side == "encoder" else DECODER_OPS)


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ranks(np.asarray(a)), _ranks(np.asarray(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / np.sqrt((ra * ra).sum() * (rb * rb).sum()))


def load(folder: Path) -> dict[str, Any]:
    alphas = json.loads((folder / "arch_parameters.json").read_text())
    summary = json.loads((folder / "search_summary.json").read_text())
    derived, top = {}, []
    for node, logits in alphas.items():
        ops = _ops(folder, node.split(".")[0])
        if len(ops) != len(logits):
            raise ValueError(f"{folder.name}: α node {node} has {len(logits)} logits for {len(ops)} ops")
        p = np.exp(np.asarray(logits) - max(logits))
        p /= p.sum()
        top.append(float(p.max()))
        derived[node] = max((o for o in ops if o != "zero"), key=lambda o: p[ops.index(o)])
    return {"name": folder.name, "alphas": alphas, "derived": derived, "genotype": summary["genotype"],
            "mean_top_weight": statistics.fmean(top), "seconds": summary.get("seconds"),
            "steps": summary.get("steps"), "val_loss_last": summary.get("val_loss_last"),
            "candidates": {node: len([o for o in _ops(folder, node.split(".")[0]) if o != "zero"]) for node in alphas}}


def report(runs: list[dict[str, Any]]) -> dict[str, Any]:
    nodes = list(runs[0]["alphas"])
    if any(list(r["alphas"]) != nodes for r in runs):
        raise ValueError("the searches have different α nodes: not the same recipe")
    n = len(runs)
    per_node, all_agree, pair_agree, rho = [], 0, [], []
    for node in nodes:
        chosen = [r["derived"][node] for r in runs]
        k = runs[0]["candidates"][node]
        pairs = list(itertools.combinations(range(n), 2))
        node_rho = [spearman(runs[i]["alphas"][node], runs[j]["alphas"][node]) for i, j in pairs]
        per_node.append({"node": node, "derived": chosen, "all_agree": len(set(chosen)) == 1,
                         "spearman_mean": statistics.fmean(node_rho), "candidates": k})
        all_agree += len(set(chosen)) == 1
        pair_agree += [chosen[i] == chosen[j] for i, j in pairs]
        rho += node_rho
    k = statistics.fmean(p["candidates"] for p in per_node)
    return {
        "searches": [{key: r[key] for key in ("name", "genotype", "mean_top_weight", "seconds", "steps",
                                              "val_loss_last")} for r in runs],
        "nodes": per_node,
        "all_agree_fraction": all_agree / len(nodes),
        "pairwise_agree_fraction": statistics.fmean(pair_agree),
        "chance_all_agree": 1 / k ** (n - 1), "chance_pairwise": 1 / k,
        "spearman_mean": statistics.fmean(rho), "spearman_min_node": min(p["spearman_mean"] for p in per_node),
    }


def markdown(r: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "", "| search | mean top weight | wall min | steps | val loss | genotype |",
             "|---|---|---|---|---|---|"]
    for s in r["searches"]:
        wall = f"{s['seconds'] / 60:.1f}" if s["seconds"] else "-"
        lines.append(f"| {s['name']} | {s['mean_top_weight']:.3f} | {wall} | {s['steps']} | "
                     f"{s['val_loss_last']:.3f} | `{json.dumps(s['genotype'])}` |")
    lines += ["", "| α node | derived per seed | all agree | Spearman ρ of α (mean over pairs) |", "|---|---|---|---|"]
    for p in r["nodes"]:
        lines.append(f"| {p['node']} | {', '.join(p['derived'])} | {'yes' if p['all_agree'] else 'no'} | "
                     f"{p['spearman_mean']:.2f} |")
    lines += ["", f"All seeds agree on {r['all_agree_fraction']:.0%} of the nodes (chance {r['chance_all_agree']:.4f}); "
              f"pairs of seeds on {r['pairwise_agree_fraction']:.0%} (chance {r['chance_pairwise']:.3f}). "
              f"Rank correlation of α between seeds: mean ρ = {r['spearman_mean']:.2f} (lowest node "
              f"{r['spearman_min_node']:.2f})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="search output folders (same recipe, different seeds)")
    p.add_argument("--out", type=Path, required=True, help="path without suffix for .json and .md")
    p.add_argument("--title", default="Search stability across seeds")
    a = p.parse_args(argv)
    if len(a.folders) < 2:
        p.error("give at least two search folders")
    result = report([load(f) for f in a.folders])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(result, a.title)
    a.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
