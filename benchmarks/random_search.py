#!/usr/bin/env python
"""Random search with successive halving: the practitioner's alternative to running the search.

    python benchmarks/random_search.py --pair en-de --candidates 8 --first_budget 250 --jobs 2 --num_threads 1
    python benchmarks/random_search.py --pair en-de --dry_run        # the schedule, its updates, nothing run
    python benchmarks/random_search.py --pair en-de --parameter_band 2.22 2.50   # draws of the default search's sizes
    python benchmarks/random_search.py --smoke                       # bundled sample, tiny, a minute
    python benchmarks/random_search.py --pair en-de --candidates_from search-spos-s0 --candidates 4 --first_budget 500

Draws ``--candidates`` genotypes uniformly from the protocol's search space (``hf_revdarts.protocol.recipe.
random_genotype``, seeds 1000·(seed+1)+i, apart from the protocol's own random runs), trains each with the
protocol's recipe to ``--first_budget`` updates, keeps the best ``1/eta`` on validation loss, continues those to
``eta`` times the budget, ... until one is left, and trains it on to the recipe's budget
(``hf_revdarts.protocol.halving``). The survivor's model is then exactly a recipe training of its genotype: its
last checkpoints are averaged and the test split translated once, as every protocol run. Only validation loss
decides anything.

Compute: the schedule's updates (printed; 8 candidates from 250 updates with eta 2: 7,000 updates, 1.75 recipe
trainings, about a full-size search's CPU-hours plus one training on En→De), to be set beside those. Writes
``benchmarks/results/<pair>/random_search/random-search-s<seed>.json`` (the schedule, every candidate's genotype,
parameters and validation loss per rung, the survivor's test scores, CPU and wall seconds) and the survivor's test
translations beside it; checkpoints under ``runs/protocol/<pair>/random-search-s<seed>/``. Resumable: a finished
rung of a candidate is not trained again, a stopped one resumes from its last checkpoint, and the CPU and wall
seconds add up over sittings (``timing.json`` beside the checkpoints).

``--parameter_band LOW HIGH`` (millions) keeps only draws whose model, as train.py builds it with the recipe's sizes
and the pair's tokenizer, has LOW to HIGH million parameters: candidate i is the i-th draw of the seed's sequence in
the band (without a band, draw i). Random genotypes are smaller than searched ones (the search favours attention
and ffn ops), so this is random search at matched size; its run is ``random-search-s<seed>-<LOW>M-<HIGH>M``.

``--candidates_from SEARCH`` halves the genotypes a search's supernet scored best instead of random draws: the
search's ``--selection sampled`` list (``selection.json``: hundreds of sampled genotypes, each scored by the
supernet's held-out loss), its ``--candidates`` lowest, distinct. This is the search's selection "train the top
few", decided by the same validation loss; its cost is the search's CPU seconds (from its record) plus the schedule's,
both in its record (kind ``supernet_halving``, run ``halving-<SEARCH>``). 4 candidates from 500 updates cost 1.5
trainings, so with a ``spos`` search (0.4 CPU-h) it costs about what 8 random draws from 250 do.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from hf_revdarts.model import RevDartsForConditionalGeneration
from hf_revdarts.model.genotype import Genotype
from hf_revdarts.protocol.execution import Jobs, add_seconds, joint_tokenizer, machine, run_script
from hf_revdarts.protocol.halving import halving_schedule, schedule_updates, survivors
from hf_revdarts.protocol.recipe import ProtocolConfig, flag_list, random_genotype
from hf_revdarts.protocol.record import RunRecord, find_run, repo_path
from hf_revdarts.training.arguments import DataArguments, ModelArguments
from hf_revdarts.training.run_config import build_config
from hf_revdarts.training.tokenization import load_tokenizer
from hf_revdarts.utils.atomic import atomic_write_json, atomic_write_text
from hf_revdarts.utils.integrity import complete_checkpoints

REPO = Path(__file__).resolve().parents[1]
CONFIG = ProtocolConfig.load(REPO / "configs" / "protocol" / "multi30k.yaml")
logger = logging.getLogger("random_search")
DRAWS_PER_SEED = 1000  # seed s draws from 1000·(s+1): the sequences of two seeds never meet


def parameter_count(recipe: dict[str, Any], genotype: Genotype, tokenizer: Any | None) -> int:
    """Parameters of the model train.py builds for ``genotype`` with the recipe's sizes (on the meta device: no
    memory, no time); ``tokenizer=None``: the recipe's vocabulary size."""
    model_args = ModelArguments(**{k.lstrip("-"): v for k, v in recipe["model"].items()})
    config = build_config(model_args, tokenizer, DataArguments.max_length, genotype)
    if tokenizer is None:
        config.vocab_size = int(recipe["vocab_size"])
    with torch.device("meta"):
        model = RevDartsForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


class RandomSearch:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pair = "en-de" if args.smoke else args.pair
        self.src, self.tgt = self.pair.split("-")
        name = f"{self.pair}-smoke" if args.smoke else self.pair
        self.data = Path(args.data) if args.data else REPO / (CONFIG.smoke["dataset"] if args.smoke else CONFIG.dataset)
        self.splits = CONFIG.smoke["splits"] if args.smoke else CONFIG.splits
        self.recipe = CONFIG.recipe_for(args.smoke)
        band = args.parameter_band
        self.run = (f"halving-{args.candidates_from}" if args.candidates_from else
                    f"random-search-s{args.seed}" + (f"-{band[0]:g}M-{band[1]:g}M" if band else ""))
        self.band = [round(x * 1e6) for x in band] if band else None  # in parameters
        self.work = Path(args.work_dir) / name / self.run
        self.results = Path(args.results_dir) / name / "random_search"
        final = int(self.recipe["train"]["--max_steps"])
        self.rungs = halving_schedule(args.candidates, args.first_budget or max(1, final // 8), final, args.eta)
        # Over every sitting: a resumed search adds to the seconds of the rungs trained before it was stopped.
        self.timing_path = self.work / "timing.json"
        self.timing: dict[str, Any] = {"commands": []}
        if self.timing_path.is_file() and not args.dry_run:
            self.timing = json.loads(self.timing_path.read_text())
        self.lock = threading.Lock()

    def draws(self) -> list[int]:
        """The draw (``random_genotype``'s k) of each candidate: the seed's first ``--candidates``, or with
        ``--parameter_band`` its first ones whose model has that many parameters."""
        first = DRAWS_PER_SEED * (self.args.seed + 1)
        if not self.band:
            return [first + i for i in range(self.args.candidates)]
        low, high = self.band
        tokenizer_path = self.work.parent / "tokenizer"
        tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path.exists() else None
        kept, seen = [], []
        for k in range(first, first + DRAWS_PER_SEED):
            count = parameter_count(self.recipe, random_genotype(self.recipe, k), tokenizer)
            seen.append(count)
            if low <= count <= high:
                kept.append(k)
                if len(kept) == self.args.candidates:
                    return kept
        raise ValueError(f"--parameter_band {self.args.parameter_band[0]:g} {self.args.parameter_band[1]:g}: only "
                         f"{len(kept)} of {DRAWS_PER_SEED} draws have {low:,} to {high:,} parameters (the draws range "
                         f"over {min(seen):,} to {max(seen):,}); widen the band or ask for fewer --candidates")

    def search_record(self) -> RunRecord:
        """The record of the search ``--candidates_from`` names (its cost is part of this run's)."""
        record = find_run(self.results.parent, self.args.candidates_from, "--candidates_from")
        if record.kind != "search":
            raise ValueError(f"--candidates_from {self.args.candidates_from}: a {record.kind!r} record, not a search's")
        return record

    def supernet_top(self) -> list[tuple[Genotype, dict[str, Any]]]:
        """The ``--candidates`` distinct genotypes the search's supernet scored lowest, with their scores."""
        path = self.work.parent / self.args.candidates_from / "selection.json"
        if not path.is_file():
            raise FileNotFoundError(f"--candidates_from {self.args.candidates_from}: no {path} (not a finished search "
                                    "of this pair)")
        scored = json.loads(path.read_text()).get("sampled", {}).get("scored")
        if not scored:
            raise ValueError(f"--candidates_from {self.args.candidates_from}: {path} has no scored sampled genotypes "
                             "(the search ran without --selection sampled)")
        ranked = sorted(enumerate(scored), key=lambda e: (e[1]["loss"], e[0]))
        top: dict[str, tuple[Genotype, dict[str, Any]]] = {}
        for rank, (_, entry) in enumerate(ranked):
            genotype = Genotype.from_dict(entry["genotype"])
            top.setdefault(json.dumps(genotype.to_dict(), sort_keys=True),
                           (genotype, {"supernet_rank": rank, "supernet_loss": entry["loss"]}))
        if len(top) < self.args.candidates:
            raise ValueError(f"--candidates_from {self.args.candidates_from}: its supernet scored {len(top)} distinct "
                             f"genotypes, fewer than --candidates {self.args.candidates}")
        return list(top.values())[: self.args.candidates]

    def sources(self) -> list[tuple[Genotype, dict[str, Any]]]:
        """Each candidate's genotype and where it came from (its draw, or its supernet score)."""
        if self.args.candidates_from:
            return self.supernet_top()
        return [(random_genotype(self.recipe, k), {"draw": k}) for k in self.draws()]

    def candidate(self, i: int, genotype: Genotype) -> tuple[str, Path]:
        name = f"c{i}"
        path = self.work / f"{name}.genotype.json"
        if not self.args.dry_run:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, genotype.to_dict())
        return name, path

    def script(self, script: str, flags: list[str], log: Path, stage: str) -> None:
        """Run a training script (a dry run prints its command); its time is added and saved even if it fails,
        under a lock since ``--jobs`` runs candidates side by side."""
        timing: dict[str, Any] = {}
        try:
            shown = run_script(REPO, script, flags, log, timing, stage, self.args.dry_run)
        finally:
            with self.lock:
                self.timing["commands"] += timing.get("commands", [])
                for name, t in timing.items():
                    if name != "commands":
                        add_seconds(self.timing, name, t["wall_seconds"], t["cpu_seconds"])
                if not self.args.dry_run:
                    atomic_write_json(self.timing_path, self.timing)
        if self.args.dry_run:
            print(shown)

    def train(self, name: str, genotype: Path, budget: int, final: bool) -> None:
        """Train (or continue) candidate ``name`` to ``budget`` updates; the final rung averages its checkpoints."""
        out = self.work / name
        summary = out / "train_summary.json"
        if summary.is_file() and json.loads(summary.read_text())["steps"] >= budget:
            return
        train = {**self.recipe["train"], "--max_steps": budget}
        if not final:  # a short rung writes too few checkpoints to average; it is judged by its validation loss
            train.pop("--average_checkpoints")
            train["--eval_every"] = self.rungs[0].budget
        rel = lambda p: repo_path(p, REPO)  # noqa: E731
        flags = ["--dataset", rel(self.data), "--src_lang", self.src, "--tgt_lang", self.tgt, "--genotype", rel(genotype),
                 "--tokenizer", rel(self.work.parent / "tokenizer"), "--output_dir", rel(out), "--seed", "0",
                 "--train_split", self.splits["train"], "--eval_split", self.splits["val"],
                 *flag_list(self.recipe["model"]), *flag_list(train)]
        flags += ["--num_threads", str(self.args.num_threads)] if self.args.num_threads else []
        flags += ["--resume_from_checkpoint", "latest"] if complete_checkpoints(out) else []
        self.script("train.py", flags, self.work / f"{name}.log", "train")

    def val_loss(self, name: str, budget: int) -> float:
        history = json.loads((self.work / name / "train_summary.json").read_text())["history"]
        at = [h["val_loss"] for h in history if h["step"] == budget]
        if not at:
            raise RuntimeError(f"{name} has no validation loss at step {budget} (its eval_every must divide it)")
        return float(at[-1])

    def execute(self) -> dict[str, Any] | None:
        logger.info("schedule: %s; %d updates in all (%.2f recipe trainings)",
                    ", ".join(f"{r.candidates} to {r.budget}" for r in self.rungs), schedule_updates(self.rungs),
                    schedule_updates(self.rungs) / self.rungs[-1].budget)
        if not self.args.dry_run:
            joint_tokenizer(self.work.parent / "tokenizer", self.data, self.src, self.tgt, self.splits["train"],
                            self.recipe["vocab_size"])
        search = self.search_record() if self.args.candidates_from else None
        self.origins = self.sources()
        candidates = dict(self.candidate(i, g) for i, (g, _) in enumerate(self.origins))
        alive, losses = list(candidates), {name: {} for name in candidates}
        jobs = Jobs(1 if self.args.dry_run else self.args.jobs)
        for k, rung in enumerate(self.rungs):
            if k > 0:  # a dry run has no losses: it shows the first candidates' commands
                before = self.rungs[k - 1].budget
                alive = alive[:rung.candidates] if self.args.dry_run else survivors(
                    {n: losses[n][before] for n in alive}, rung.candidates)
            for name in alive:
                jobs.submit(self.train, name, candidates[name], rung.budget, k == len(self.rungs) - 1)
            jobs.join()
            if self.args.dry_run:
                continue
            for name in alive:
                losses[name][rung.budget] = self.val_loss(name, rung.budget)
            logger.info("rung %d (%d updates): %s", k, rung.budget,
                        ", ".join(f"{n} {losses[n][rung.budget]:.3f}" for n in alive))
        if self.args.dry_run:
            return None
        (best,) = alive
        out = self.work / best
        test_json = out / "eval_test.json"
        if not test_json.is_file():
            flags = ["--dataset", repo_path(self.data, REPO), "--src_lang", self.src, "--tgt_lang", self.tgt,
                     "--model", repo_path(out / "averaged", REPO), "--split", self.splits["test"],
                     "--output", repo_path(test_json, REPO), *flag_list(self.recipe["evaluate"])]
            flags += ["--num_threads", str(self.args.num_threads)] if self.args.num_threads else []
            self.script("evaluate.py", flags, self.work / f"{best}.log", "evaluate")
        return self.record(candidates, losses, best, json.loads(test_json.read_text()), search)

    def record(self, candidates: dict[str, Path], losses: dict[str, dict[int, float]], best: str,
               test: dict[str, Any], search: RunRecord | None = None) -> dict[str, Any]:
        summary = json.loads((self.work / best / "train_summary.json").read_text())
        self.results.mkdir(parents=True, exist_ok=True)
        hypotheses = self.results / f"{self.run}.test.txt"
        atomic_write_text(hypotheses, "\n".join(test["hypotheses"]) + "\n")
        stages = {k: v for k, v in self.timing.items() if isinstance(v, dict)}
        record = {
            "run": self.run, "kind": "supernet_halving" if search else "random_search", "pair": self.pair,
            "seed": self.args.seed, "eta": self.args.eta,
            "schedule": [{"candidates": r.candidates, "budget": r.budget} for r in self.rungs],
            "updates_total": schedule_updates(self.rungs),
            "parameter_band": self.band,
            "candidates_from": {"search": search.run, "search_cpu_seconds": search.cpu_seconds,
                                "search_wall_seconds": search.wall_seconds} if search else None,
            "candidates": [{"name": n, **origin, "genotype": json.loads(p.read_text()),
                            "parameters": json.loads((self.work / n / "train_summary.json").read_text())["parameters"],
                            "val_loss": {str(b): v for b, v in losses[n].items()}}
                           for (n, p), (_, origin) in zip(candidates.items(), self.origins)],
            "survivor": best, "genotype": summary["genotype"], "parameters": summary["parameters"],
            "val_averaged": {k: (summary.get("averaged") or {}).get(k) for k in ("steps", "val_loss", "bleu")},
            "test": {k: test.get(k) for k in ("split", "num_beams", "length_penalty", "bleu", "bleu_signature",
                                              "bleu_lowercase", "chrf", "chrf_signature")}
            | {"sentences": len(test["hypotheses"]), "hypotheses": repo_path(hypotheses, REPO)},
            "device": machine(), "stages": stages,
            "cpu_seconds": round(sum(v["cpu_seconds"] for v in stages.values()), 1),
            "wall_seconds": round(sum(v["wall_seconds"] for v in stages.values()), 1),
            "note": "wall/CPU seconds of every stage over every sitting, a stage stopped midway included"
                    + ("; the search's own are in candidates_from, not in these" if search else ""),
            "commands": self.timing["commands"],
        }
        atomic_write_json(self.results / f"{self.run}.json", record)
        logger.info("%s: survivor %s, test BLEU %.2f, %d updates in all", self.run, best, test["bleu"],
                    record["updates_total"])
        return record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=sorted(CONFIG.pairs), default="en-de")
    p.add_argument("--smoke", action="store_true", help="bundled sample, the smoke recipe's tiny sizes")
    p.add_argument("--candidates", type=int, default=8, help="genotypes drawn")
    p.add_argument("--first_budget", type=int, default=None, help="updates of the first rung (default: 1/8 of the recipe's)")
    p.add_argument("--eta", type=int, default=2, help="1/eta of the candidates survive each rung")
    p.add_argument("--seed", type=int, default=0, help="which draw of candidates (the run's name)")
    p.add_argument("--candidates_from", default=None, metavar="SEARCH",
                   help="a search of the pair (run name, e.g. search-spos-s0): halve the genotypes its supernet scored "
                        "best instead of random draws")
    p.add_argument("--parameter_band", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="only draws whose model has LOW to HIGH million parameters (random search at matched size)")
    p.add_argument("--data", default=None)
    p.add_argument("--work_dir", default=str(REPO / "runs" / "protocol"))
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--num_threads", type=int, default=0)
    p.add_argument("--dry_run", action="store_true", help="print the schedule and commands, run nothing")
    args = p.parse_args(argv)
    for key, least in (("candidates", 1), ("eta", 2), ("jobs", 1), ("seed", 0)):
        if getattr(args, key) < least:
            p.error(f"--{key} must be >= {least}")
    if args.parameter_band and not 0 < args.parameter_band[0] <= args.parameter_band[1]:
        p.error(f"--parameter_band {args.parameter_band[0]:g} {args.parameter_band[1]:g}: give 0 < LOW <= HIGH "
                "(millions of parameters)")
    if args.candidates_from and (args.parameter_band or args.seed):
        p.error("--candidates_from takes its candidates from the search's supernet: --parameter_band and --seed choose "
                "random draws and do not apply")
    if args.first_budget is not None and args.first_budget < 1:
        p.error("--first_budget must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    record = RandomSearch(parse_args(argv)).execute()
    if record is not None:
        print(json.dumps({k: record[k] for k in ("run", "survivor", "updates_total", "cpu_seconds")} | {
            "test_bleu": record["test"]["bleu"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
