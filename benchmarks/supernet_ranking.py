#!/usr/bin/env python
"""Does the supernet rank architectures the way training them alone does?

    python benchmarks/supernet_ranking.py --pair en-de                       # every search of the pair found here
    python benchmarks/supernet_ranking.py --pair en-de --search search-s0 --search search-long-s0
    python benchmarks/supernet_ranking.py --smoke                            # the smoke protocol's runs

For every genotype the protocol trained on the pair (standard, searched and random runs; their records in
``benchmarks/results/<pair>/``, replicas left out) it sets side by side:

- **stand-alone**: the validation loss of the genotype's averaged model at the recipe's budget, the mean over its
  training seeds (from the records; nothing is trained here);
- **supernet estimate**, one per search: the held-out NLL per token, on the first ``--val_sentences`` of the val
  split, of that search's trained supernet (``<work_dir>/<pair>/<search>/supernet``) computing only the genotype's
  ops with the weights it inherited (``hf_revdarts.search.selection.fixed_genotype``). A genotype the supernet
  cannot compute (another depth, or layers its tied blocks cannot hold) gets none; a genotype stacked from a
  proxy's block is unstacked to it; a search whose supernet is another's weight for weight (the ``sampled``
  variant differs from the base search of its seed only in its selection) is ranked once; a search that kept its
  θ warm-up (``warmup/``) is ranked a second time with those weights (``<search> warm-up``): the supernet before
  any α step, which is what the ``spos`` variant selects on;
- **α**, one per search: the log-probability its architecture weights give the genotype (the sum over α nodes of
  log softmax(α) of the genotype's op; what argmax maximises), so that α's ranking meets the supernet's;
- **parameter count**, the cheapest predictor.

Kendall's τ-b (scipy) of each predictor against the stand-alone losses, oriented so that +1 is perfect agreement
(lower estimate, or more parameters, predicting lower loss), with a 95% bootstrap interval over genotypes; beside
them the τ between two training seeds of the same genotypes (how well one training run ranks the next: the
ceiling of any estimate) and the parameter count's τ with test BLEU. Writes ``ranking/ranking.json`` and
``ranking/ranking.md`` in the pair's results folder, and rebuilds the cross-pair ``overview.md`` (its ranking table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau

from hf_revdarts.model.genotype import Genotype
from hf_revdarts.protocol.plan import load_runs
from hf_revdarts.protocol.recipe import ProtocolConfig
from hf_revdarts.protocol.report import predictor_recipe, write_overview
from hf_revdarts.utils.atomic import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
CONFIG = ProtocolConfig.load(REPO / "configs" / "protocol" / "multi30k.yaml")
TRAINED_KINDS = ("standard", "searched", "random")
WARMUP = "warm-up"  # a search's supernet at the end of its θ warm-up, ranked beside its final one
logger = logging.getLogger("supernet_ranking")


def tau(x: list[float], y: list[float]) -> float | None:
    """Kendall's τ-b; None where it is undefined (fewer than 2 items, or a constant ranking)."""
    if len(x) < 2:
        return None
    value = kendalltau(x, y).statistic
    return None if np.isnan(value) else float(value)


def tau_interval(x: list[float], y: list[float], samples: int = 2000, seed: int = 0) -> list[float] | None:
    """95% percentile bootstrap interval of τ, genotypes resampled with replacement."""
    if len(x) < 3:
        return None
    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(x), np.asarray(y)
    draws = []
    for _ in range(samples):
        idx = rng.integers(0, len(xs), len(xs))
        value = kendalltau(xs[idx], ys[idx]).statistic
        if not np.isnan(value):
            draws.append(value)
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if draws else None


def trained_genotypes(results: Path) -> list[dict[str, Any]]:
    """One row per distinct trained genotype: its runs, parameters, stand-alone val losses per seed, test BLEU."""
    runs, _ = load_runs(results)
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run.kind not in TRAINED_KINDS or run.val_loss is None:
            continue
        row = rows.setdefault(run.genotype.to_json(), {"genotype": run.genotype, "runs": [], "kind": run.kind,
                                                      "parameters": run.parameters, "val_loss": {}, "bleu": {}})
        row["runs"].append(run.run)
        row["val_loss"][run.train_seed] = run.val_loss
        row["bleu"][run.train_seed] = run.bleu
    return list(rows.values())


def unstacked(genotype: Genotype, supernet: Any) -> Genotype | None:
    """``genotype`` at the supernet's depth: itself, the block it is stacked from (a proxy searched one tied block
    and stacked it), or None."""
    cfg = supernet.config
    depth = {"encoder": cfg.encoder_layers, "decoder": cfg.decoder_layers}
    out = {}
    for side in ("encoder", "decoder"):
        rows, n = genotype[side], depth[side]
        if len(rows) % n or any(rows[i] != rows[i % n] for i in range(len(rows))):
            return None
        out[side] = rows[:n]
    return Genotype.from_dict(out)


def heldout_batches(tokenizer: Any, data: Path, src: str, tgt: str, split: str, sentences: int,
                    max_length: int) -> list[dict[str, torch.Tensor]]:
    from hf_revdarts.training.data import load_parallel_text
    from hf_revdarts.training.tokenization import encode_pairs

    sources, targets = load_parallel_text(data, src, tgt, split, None, sentences)
    return [dict(encode_pairs(tokenizer, sources[i:i + 64], targets[i:i + 64], max_length=max_length))
            for i in range(0, len(sources), 64)]


def has_alpha_phase(folder: Path) -> bool:
    """Whether the search in ``folder`` took α steps (a search whose summary predates ``alpha_steps`` did). Without
    them (the ``spos`` variant) its α is the random initialisation: no ranking of its own, and its warm-up is its
    final supernet."""
    summary = folder / "search_summary.json"
    return not (summary.is_file() and json.loads(summary.read_text(encoding="utf-8")).get("alpha_steps") == 0)


def warmup_weights(folder: Path) -> Path | None:
    """The θ warm-up a search keeps for α-phase seeds (``warmup/checkpoint-*``): its supernet before any α step,
    which is all a search without an α phase (the ``spos`` variant) trains. None: the search kept none (it had no
    warm-up, or started its α phase from another search's), or it had no α phase."""
    if not has_alpha_phase(folder):
        return None  # its warm-up is its final supernet, already ranked
    found = sorted((folder / "warmup").glob("checkpoint-*/model.safetensors"))
    return found[-1] if found else None


def load_weights(supernet: torch.nn.Module, weights: Path) -> None:
    """Every weight of ``supernet`` from a checkpoint's ``model.safetensors``, or an error naming the file. A
    checkpoint stores a tied tensor (tied blocks' α, the output embedding) under one of its names only: a missing
    name is accepted only where it shares its storage with one that was loaded."""
    from safetensors.torch import load_file

    state = load_file(weights)
    missing, unexpected = supernet.load_state_dict(state, strict=False)
    ours = supernet.state_dict(keep_vars=True)
    loaded = {ours[k].data_ptr() for k in state if k in ours}
    untied = [k for k in missing if ours[k].data_ptr() not in loaded]
    if untied or unexpected:
        raise ValueError(f"{weights}: not this supernet's weights (missing {untied[:5]}, unexpected "
                         f"{unexpected[:5]})")


def supernet_estimates(folder: Path, rows: list[dict[str, Any]], data: Path, src: str, tgt: str, split: str,
                       sentences: int, weights: Path | None = None) -> tuple[list[float | None], list[float | None]]:
    """The supernet's held-out NLL of each row's genotype, and its α's log-probability of it (None: not in its
    space); with ``weights``, of the supernet with those weights (a warm-up checkpoint's) instead of the final."""
    from transformers import AutoTokenizer

    from hf_revdarts.search import RevDartsSupernet
    from hf_revdarts.search.selection import genotype_log_prob, score_genotypes

    supernet = RevDartsSupernet.from_pretrained(folder / "supernet").eval()
    if weights is not None:
        load_weights(supernet, weights)
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    batches = heldout_batches(tokenizer, data, src, tgt, split, sentences, supernet.config.max_position_embeddings)
    out: list[float | None] = []
    log_probs: list[float | None] = []
    for row in rows:
        genotype = unstacked(row["genotype"], supernet)
        try:
            out.append(score_genotypes(supernet, [genotype], batches)[0] if genotype is not None else None)
            log_probs.append(genotype_log_prob(supernet, genotype) if genotype is not None else None)
        except ValueError as e:  # layers the tied blocks cannot hold, or ops outside the supernet's space
            logger.info("%s: not in the space of %s (%s)", ",".join(row["runs"]), folder.name, e)
            out.append(None)
            log_probs.append(None)
    return out, log_probs


def distinct_supernets(work: Path, searches: list[str]) -> list[str]:
    """The searches whose trained supernets differ: a variant that changes only the selection (``sampled``) trains
    the same supernet as the base search of its seed, weight for weight, and would only repeat its τ."""
    first: dict[str, str] = {}
    for search in searches:
        digest = hashlib.sha256((work / search / "supernet" / "model.safetensors").read_bytes()).hexdigest()
        if digest in first:
            logger.info("%s: the same supernet as %s (the same search before selection): ranked once", search,
                        first[digest])
        else:
            first[digest] = search
    return list(first.values())


def ranking(rows: list[dict[str, Any]], estimates: dict[str, list[float | None]],
            log_probs: dict[str, list[float | None]] | None = None) -> dict[str, Any]:
    """τ of each predictor against the stand-alone validation loss (mean over seeds), with intervals: each
    supernet's estimate, each search's α (``log_probs``: a higher probability predicting a lower loss), the
    parameter count, another training seed."""
    loss = [float(np.mean(list(r["val_loss"].values()))) for r in rows]
    table: dict[str, Any] = {}
    predictors = [(f"supernet {s}", v) for s, v in estimates.items()]
    predictors += [(f"α of {s}", [None if p is None else -p for p in v]) for s, v in (log_probs or {}).items()]
    for name, values in predictors:
        keep = [i for i, v in enumerate(values) if v is not None]
        x, y = [values[i] for i in keep], [loss[i] for i in keep]
        table[name] = {"genotypes": len(keep), "tau": tau(x, y), "ci95": tau_interval(x, y)}
    params = [-float(r["parameters"]) for r in rows]  # more parameters predicting lower loss counts as agreement
    table["parameter count"] = {"genotypes": len(rows), "tau": tau(params, loss), "ci95": tau_interval(params, loss)}
    seeded = [r for r in rows if 0 in r["val_loss"] and 1 in r["val_loss"]]
    a, b = [r["val_loss"][0] for r in seeded], [r["val_loss"][1] for r in seeded]
    table["another training seed (ceiling)"] = {"genotypes": len(seeded), "tau": tau(a, b), "ci95": tau_interval(a, b)}
    bleu = [float(np.mean(list(r["bleu"].values()))) for r in rows]
    return {"against_val_loss": table,
            "parameters_vs_test_bleu": {"tau": tau([-p for p in params], bleu), "ci95": tau_interval([-p for p in params], bleu)},
            "val_loss_vs_test_bleu": {"tau": tau([-v for v in loss], bleu), "ci95": tau_interval([-v for v in loss], bleu)}}


def search_recipes(results: Path, searches: list[str]) -> dict[str, str]:
    """Each search's recipe, from its record: "default" (the base search) or its ``search_variants`` name."""
    recipes = {}
    for search in searches:
        record = results / f"{search}.json"
        if not record.is_file():
            raise SystemExit(f"{record}: no record of the search {search} (its supernet is in the work folder, but "
                             "the ranking names each supernet's recipe from the record)")
        recipes[search] = json.loads(record.read_text(encoding="utf-8")).get("search_variant") or "default"
    return recipes


def markdown(pair: str, rows: list[dict[str, Any]], estimates: dict[str, list[float | None]], result: dict[str, Any],
             sentences: int, recipes: dict[str, str] | None = None) -> str:
    def fmt(v: float | None, digits: int = 3) -> str:
        return "—" if v is None else f"{v:.{digits}f}"

    def interval(ci: list[float] | None) -> str:
        return "—" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"

    lines = [f"# Does the supernet rank architectures? {pair}", "",
             "Kendall τ-b against the stand-alone validation loss (averaged model at the recipe's budget, mean over "
             f"training seeds); supernet estimates: held-out NLL on the first {sentences} val sentences with only the "
             "genotype's ops (`benchmarks/supernet_ranking.py`). +1: the predictor orders the genotypes as training "
             "them alone does. 95% bootstrap interval over genotypes.", "",
             "| predictor | search recipe | genotypes | τ | 95% interval |", "|---|---|---|---|---|"]
    for name, row in result["against_val_loss"].items():
        lines.append(f"| {name} | {predictor_recipe(name, recipes or {})} | {row['genotypes']} | "
                     f"{fmt(row['tau'], 2)} | {interval(row['ci95'])} |")
    p, v = result["parameters_vs_test_bleu"], result["val_loss_vs_test_bleu"]
    lines += ["", f"Against test BLEU: parameter count τ {fmt(p['tau'], 2)} {interval(p['ci95'])}; stand-alone "
              f"validation loss τ {fmt(v['tau'], 2)} {interval(v['ci95'])}.", "",
              "| runs | kind | parameters | stand-alone val loss | test BLEU |" + "".join(f" {s} |" for s in estimates),
              "|---|---|---|---|---|" + "---|" * len(estimates)]
    for i, r in enumerate(rows):
        cells = "".join(f" {fmt(values[i])} |" for values in estimates.values())
        lines.append(f"| {', '.join(r['runs'])} | {r['kind']} | {r['parameters'] / 1e6:.2f}M | "
                     f"{fmt(float(np.mean(list(r['val_loss'].values()))))} | "
                     f"{float(np.mean(list(r['bleu'].values()))):.2f} |" + cells)
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=sorted(CONFIG.pairs), default="en-de")
    p.add_argument("--smoke", action="store_true", help="the smoke protocol's runs (bundled sample)")
    p.add_argument("--search", action="append", default=[], metavar="RUN",
                   help="a search whose supernet is in the work folder (default: every one found there)")
    p.add_argument("--data", default=None, help="folder of {split}.{lang}.gz (default: the protocol's)")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "protocol"))
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--val_sentences", type=int, default=500, help="held-out sentences the supernets are scored on")
    p.add_argument("--num_threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.val_sentences < 1:
        p.error("--val_sentences must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    pair = "en-de" if args.smoke else args.pair
    name = f"{pair}-smoke" if args.smoke else pair
    results, work = Path(args.results_dir) / name, Path(args.work_dir) / name
    data = Path(args.data) if args.data else REPO / (CONFIG.smoke["dataset"] if args.smoke else CONFIG.dataset)
    splits = CONFIG.smoke["splits"] if args.smoke else CONFIG.splits
    rows = trained_genotypes(results)
    if len(rows) < 2:
        raise SystemExit(f"{results}: {len(rows)} trained genotype(s) with records; a ranking needs at least 2")
    searches = args.search or sorted(p.parent.parent.name for p in work.glob("search*/supernet/config.json"))
    missing = [s for s in searches if not (work / s / "supernet" / "config.json").is_file()]
    if missing:
        raise SystemExit(f"no trained supernet for {', '.join(missing)} in {work} (run its search, or "
                         "benchmarks/search_quality.py --rebuild, first)")
    searches = distinct_supernets(work, searches)
    src, tgt = pair.split("-")
    both = {s: supernet_estimates(work / s, rows, data, src, tgt, splits["val"], args.val_sentences) for s in searches}
    estimates = {s: v[0] for s, v in both.items()}
    log_probs = {s: v[1] for s, v in both.items() if has_alpha_phase(work / s)}
    recipes = search_recipes(results, searches)
    for s in searches:  # the same supernet before its α phase: does the α phase make it rank better?
        if (weights := warmup_weights(work / s)) is not None:
            estimates[f"{s} {WARMUP}"] = supernet_estimates(work / s, rows, data, src, tgt, splits["val"],
                                                            args.val_sentences, weights)[0]
            recipes[f"{s} {WARMUP}"] = f"{recipes[s]}, {WARMUP} only"
    result = ranking(rows, estimates, log_probs)
    per_genotype = [{"runs": r["runs"], "kind": r["kind"], "parameters": r["parameters"],
                     "val_loss": {str(k): v for k, v in r["val_loss"].items()},
                     "test_bleu": {str(k): v for k, v in r["bleu"].items()},
                     "supernet_estimates": {s: values[i] for s, values in estimates.items()},
                     "alpha_log_prob": {s: v[i] for s, v in log_probs.items()}} for i, r in enumerate(rows)]
    # In a folder of its own: the pair's folder holds run records only (``load_runs`` reads every JSON there).
    (results / "ranking").mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / "ranking" / "ranking.json", {"pair": pair, "val_sentences": args.val_sentences,
                                                 "searches": searches, "search_recipes": recipes, **result,
                                                 "genotypes": per_genotype})
    text = markdown(pair, rows, estimates, result, args.val_sentences, recipes)
    atomic_write_text(results / "ranking" / "ranking.md", text)
    if not args.smoke:  # the cross-pair overview shows every pair's τ
        write_overview(results.parent, CONFIG.pairs)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
