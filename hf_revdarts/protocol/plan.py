"""The plan of one pair's protocol: which runs it has (searches, then the trainings of their genotypes, the
standard Transformer and random genotypes, each under its name, with its ``--genotype``), where each stands, and
which run the zoo publishes. Nothing here runs a script (``execution`` does)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model.genotype import Genotype
from ..training.run_folder import running
from ..utils.atomic import atomic_write_json
from ..utils.integrity import complete_checkpoints
from .recipe import random_genotype
from .record import RunRecord, load_runs, replica_pairs, repo_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRun:
    """A training run of the plan: its name, kind, ``--genotype`` (a search's folder, ``standard`` or a genotype
    file), training seed, and the record fields of its kind."""

    name: str
    kind: str
    genotype: str
    seed: int
    meta: dict[str, Any]


@dataclass(frozen=True)
class PairPlan:
    """The runs of one pair's protocol: its sizes (S searches, T seeds, K random genotypes), recipe and search
    variant; records in ``results``, run folders in ``work``, paths relative to the repository ``root``.
    ``draw``: write the random genotypes' files (a dry run only names them)."""

    sizes: dict[str, int]
    recipe: dict[str, Any]
    variant: str | None
    variant_flags: dict[str, Any]
    results: Path
    work: Path
    root: Path
    draw: bool = True

    def rel(self, path: str | os.PathLike) -> str:
        return repo_path(path, self.root)

    def search_name(self, seed: int) -> str:
        return f"search-{self.variant}-s{seed}" if self.variant else f"search-s{seed}"

    def searches(self) -> dict[int, RunRecord | None]:
        """The finished searches' records by seed (None: not finished)."""
        paths = {s: self.results / f"{self.search_name(s)}.json" for s in range(self.sizes["searches"])}
        return {s: RunRecord.load(p) if p.is_file() else None for s, p in paths.items()}

    def trainings(self, searches: dict[int, RunRecord | None]) -> list[PlannedRun]:
        """Every training run of the protocol in order, given the search records by seed; with a search variant,
        the trainings of the variant's genotypes only. Seeds that derive the same genotype share its trainings,
        under the first search's name."""
        out = []
        first_with: dict[str, int] = {}
        for s in range(self.sizes["searches"]):
            genotype = searches[s].genotype if searches.get(s) else None
            key = genotype.to_json() if genotype is not None else f"unknown-{s}"
            if key in first_with:
                first = self.search_name(first_with[key])
                logger.info("%s derived the genotype of %s: its trainings are %s's", self.search_name(s), first, first)
                continue
            first_with[key] = s
            search = self.search_name(s)
            out += [PlannedRun(f"searched{search[len('search'):]}-t{t}", "searched", self.rel(self.work / search), t,
                               {"search": search, "search_genotype": genotype, "search_variant": self.variant})
                    for t in range(self.sizes["seeds"])]
        if self.variant:
            return out
        out += [PlannedRun(f"standard-t{t}", "standard", "standard", t, {}) for t in range(self.sizes["seeds"])]
        for k in range(self.sizes["random"]):
            path = self.random_genotype_file(k)
            drawn = Genotype.load(path) if path.is_file() else None
            out.append(PlannedRun(f"random-r{k}", "random", self.rel(path), 0, {"random_seed": k, "drawn_genotype": drawn}))
        return out

    def random_genotype_file(self, k: int) -> Path:
        """genotype.json of random genotype k (``recipe.random_genotype``), beside the run folders (train.py wants
        its output folder empty)."""
        path = self.work / f"random-r{k}.genotype.json"
        if not path.is_file() and self.draw:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, random_genotype(self.recipe, k).to_dict())
        return path

    def genotype_of(self, record: RunRecord) -> str:
        """The --genotype that trains a finished run's genotype again from its record alone (a fresh clone has no
        search folders or drawn files, and a changed recipe would draw other random genotypes): ``standard``, or
        the genotype the run trained, written beside the run folders as ``<run>.genotype.json``."""
        if (record.replica_of_kind or record.kind) == "standard":
            return "standard"
        record.require("run", "genotype", what="a training run whose genotype can be trained again")
        path = self.work / f"{record.run}.genotype.json"
        if self.draw:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, record.genotype.to_dict())
        return self.rel(path)

    def status(self) -> list[dict[str, Any]]:
        """Where each run stands: done with its BLEU, running now (its folder's lock is held), stopped at a
        checkpoint, or not started, and the updates left (nothing is run or written)."""
        searches = self.searches()
        budgets = {self.search_name(s): int({**self.recipe["search"], **self.variant_flags}["--max_steps"])
                   for s in searches}
        budgets.update({t.name: int(self.recipe["train"]["--max_steps"]) for t in self.trainings(searches)})
        rows = []
        for i, (name, steps) in enumerate(budgets.items()):
            result = self.results / f"{name}.json"
            if result.is_file():
                record = RunRecord.load(result)
                state, step = (f"done, BLEU {record.bleu:.2f}" if record.test else "done"), steps
            else:
                checkpoints = complete_checkpoints(self.work / name)
                step = int(checkpoints[-1].name.split("-")[-1]) if checkpoints else 0
                holder = running(self.work / name)
                at = f"last checkpoint at {step} of {steps} updates" if step else f"no checkpoint yet of {steps} updates"
                state = (f"running ({holder}), {at}" if holder
                         else f"stopped at {step} of {steps} updates" if step else "not started")
            rows.append({"run": name, "kind": "search" if i < len(searches) else "training", "state": state,
                         "updates_left": steps - step})
        return rows


def cpu_hours_left(rows: list[dict[str, Any]], results: Path) -> str | None:
    """The CPU-hours the status's training updates left take at the median rate of the pair's finished CPU
    trainings (None: nothing left, or no such training yet)."""
    import statistics

    per_update = [r.cpu_seconds / r.updates for r in load_runs(results)[0] if (r.device or "").startswith("CPU")]
    left = sum(r["updates_left"] for r in rows if r["kind"] == "training")
    if not per_update or not left:
        return None
    rate = statistics.median(per_update)
    return (f"{left} training updates left: about {left * rate / 3600:.1f} CPU-hours at the {rate:.2f} "
            "CPU-seconds per update of this pair's finished CPU trainings")


def zoo_ranking(results: Path, kind: str = "searched") -> list[RunRecord]:
    """The zoo's candidates by the validation loss of their averaged model, lowest first: the finished runs of
    ``kind`` (searched, standard) of a pair and the replicas of them (a replica keeps the search of the run it
    repeats)."""
    runs, _ = load_runs(results)
    candidates = [r for r in runs if r.kind == kind]
    candidates += [again.with_search_of(first) for again, first in replica_pairs(results, runs) if first.kind == kind]
    return sorted((r for r in candidates if r.val_loss is not None), key=lambda r: r.val_loss)


def zoo_choice(ranked: list[RunRecord], here: Callable[[RunRecord], bool], results: str,
               kind: str = "searched") -> RunRecord:
    """The first of ``ranked`` whose model is on this machine (``here``); says which better ones it passes over."""
    if not ranked:
        raise RuntimeError(f"--publish: no finished {kind} run in {results} to publish")
    logger.info("publish: candidates by validation loss: %s", ", ".join(
        f"{r.run} {r.val_loss:.3f}{'' if here(r) else ' (model not on this machine)'}" for r in ranked))
    available = [r for r in ranked if here(r)]
    if not available:
        raise RuntimeError(
            f"--publish: no {kind} run of {results} has its model on this machine "
            f"({', '.join(str(r.work_dir) for r in ranked)}); train one again here with --rebuild "
            f"{ranked[0].run if not ranked[0].replica_of else 'replicas/' + ranked[0].run}")
    if available[0] is not ranked[0]:
        logger.warning("publish: %s has the lowest validation loss but its model is not on this machine; "
                       "publishing %s", ranked[0].run, available[0].run)
    return available[0]
