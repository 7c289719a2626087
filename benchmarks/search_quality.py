#!/usr/bin/env python
"""Does the search pay? Searched vs standard vs random genotypes, same size, same update budget.

One command per language pair (Multi30k, ``../shared/data/multi30k`` relative to the repository):

    python benchmarks/search_quality.py --pair en-de                     # S=3 searches, T=2 seeds, K=8 random
    python benchmarks/search_quality.py --pair en-fr                     # S=1, T=1, K=2
    python benchmarks/search_quality.py --pair en-de --jobs 2 --num_threads 1   # 2 CPU cores: two runs at once
    python benchmarks/search_quality.py --pair en-de --dry_run           # print the commands only
    python benchmarks/search_quality.py --pair en-de --status            # where each run stands, updates left
    python benchmarks/search_quality.py --pair en-de --report            # rebuild the summary from the records
    python benchmarks/search_quality.py --smoke                          # bundled sample, tiny, minutes
    python benchmarks/search_quality.py --pair en-de --search_variant long     # a variant of the search
    python benchmarks/search_quality.py --pair en-de --replicate random-r0    # a finished run again, here
    python benchmarks/search_quality.py --pair en-de --rebuild standard-t0     # a recorded run's model, here
    python benchmarks/search_quality.py --pair en-de --publish           # the zoo, from finished runs: model_cards/<name>/
    python benchmarks/search_quality.py --pair en-de --scale wide --jobs 9   # d=576, 6+6, on a GPU: <pair>-wide/

For a pair it (1) trains one joint tokenizer shared by every run, (2) runs S searches (seeds 0..S-1,
``training/search.py``), (3) trains the derived genotype of each search with T training seeds, the standard
self_attn/ffn genotype with T seeds, and K genotypes drawn uniformly from the search space
(``hf_revdarts.model.genotype``, ``zero`` excluded as in the derivation), all with the same
d_model, depth, recipe and update budget (``training/train.py``), (4) averages the last N checkpoints of
each run (``train.py --average_checkpoints``) and translates ``test_2016_flickr`` with beam search and a
length penalty (``training/evaluate.py``). Model selection and early decisions use ``val`` only; the test
split is translated once per run, at the end. The recipe (sizes, budgets, flags, search variants, scales) is
``configs/protocol/multi30k.yaml``; the records, comparisons and report are ``hf_revdarts.protocol``.

Outputs, under ``--results_dir/<pair>/`` (default ``benchmarks/results``): one ``<run>.json`` per run (+
``<run>.test.txt``, its test translations), ``summary.json``/``.md`` (mean ± std per kind, parameters, updates, wall
and CPU time, paired bootstrap) and ``bleu_per_kind.png``; checkpoints and logs under ``--work_dir`` (not in git).

``--search_variant NAME`` runs the searches of a variant of the search recipe (what was tried to make the
search win) and trains their genotypes with the same recipe, as runs ``search-NAME-s*`` and
``searched-NAME-s*-t*``; the standard and random runs are the base protocol's, so the variant gets a row and a
paired bootstrap of its own in the same table.

``--replicate RUN`` trains a finished run again with its own command on this machine, into
``replicas/<RUN>-on-<cpu|gpu>.json``, beside it in the summary: whether a gap is the genotype's or the machine's.

``--publish`` builds the pair's zoo entry from the finished runs (it starts none of the plan's missing runs): the
searched run whose averaged model has the lowest validation loss goes through ``training/publish.py`` into
``model_cards/revdarts-multi30k-<pair>/``, the complete Hub folder (weights, tokenizer, code, card with the
protocol's comparison and the run's commands); ``--zoo_kind standard``: the standard Transformer of the recipe, as
``revdarts-multi30k-<pair>-standard``. ``--zoo_steps N`` first trains that run on from its last checkpoint to N
updates (``zoo/zoo-<run>.json``), chooses beam size and length penalty on ``val`` (the config's ``zoo_decoding``,
``training/tune_decoding.py``), and publishes that model; a larger N later trains the continuation on, its earlier
figures set aside in ``<work_dir>/zoo-<run>.at-<updates>/``. Only a model on this machine can be published:
``--rebuild RUN`` trains a recorded run again into its own work folder from its record alone (a fresh clone has the
records, not the weights; the new record goes to ``rebuilt/``), ``--replicate`` a GPU run again here as a new run.

Resumable: a run whose ``<run>.json`` exists is skipped; an interrupted run continues from its latest checkpoint.
The summary is rebuilt after every finished run; run the same command again until every run has.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

from hf_revdarts.protocol.execution import (
    Jobs,
    joint_tokenizer,
    machine_kind,
    restart_flags,
    run_script,
    search_record,
    set_aside_evaluation,
    training_record,
)
from hf_revdarts.protocol.plan import PairPlan, cpu_hours_left, zoo_choice, zoo_ranking
from hf_revdarts.protocol.recipe import ProtocolConfig, flag_list
from hf_revdarts.protocol.record import RunRecord, load_runs, rebuilt_run, repo_path
from hf_revdarts.protocol.report import ReportSettings, write_summary
from hf_revdarts.utils.atomic import atomic_write_json, atomic_write_text
from hf_revdarts.utils.integrity import complete_checkpoints

REPO = Path(__file__).resolve().parents[1]
CONFIG = ProtocolConfig.load(REPO / "configs" / "protocol" / "multi30k.yaml")
logger = logging.getLogger("search_quality")


def rel(path: Path | str) -> str:
    return repo_path(path, REPO)


class Protocol:
    """One pair's protocol on this machine, as the command line asks it. Which runs it has, under which names and
    genotypes, and where each stands is its ``plan`` (``hf_revdarts.protocol.plan``); this runs them: the
    training scripts as subprocesses (``run``: each command and its wall/CPU time go into the run's record), up
    to ``--jobs`` at once, searches first; a record and the rebuilt summary after each finished run;
    ``--replicate`` and the zoo (``zoo_candidate``, ``train_longer``, ``publish``). Resumable: a finished stage
    is skipped, an interrupted one resumes from its latest checkpoint."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, smoke, self.scale, self.variant = args, args.smoke, args.scale, args.search_variant
        self.pair = "en-de" if smoke else args.pair
        self.src, self.tgt = self.pair.split("-")
        default = REPO / (CONFIG.smoke["dataset"] if smoke else CONFIG.dataset)
        self.data = Path(args.data) if args.data is not None else default
        self.splits = CONFIG.smoke["splits"] if smoke else CONFIG.splits
        self.sizes = CONFIG.sizes(self.pair, smoke)
        self.sizes.update({k: getattr(args, k) for k in self.sizes if getattr(args, k) is not None})
        name = (f"{self.pair}-smoke" if smoke else self.pair) + (f"-{self.scale}" if self.scale else "")
        self.results, self.work = Path(args.results_dir) / name, Path(args.work_dir) / name
        self.recipe = CONFIG.recipe_for(smoke, self.scale, args.max_steps)
        self.variant_flags = CONFIG.variant_flags(self.variant, smoke, self.scale)
        self.plan = PairPlan(self.sizes, self.recipe, self.variant, self.variant_flags, self.results, self.work, REPO,
                             draw=not args.dry_run)
        self._summary_lock = threading.Lock()  # runs finish on --jobs threads

    # ---- running ----------------------------------------------------------------------------------------
    def data_flags(self) -> list[str]:
        return ["--dataset", rel(self.data), "--src_lang", self.src, "--tgt_lang", self.tgt]

    def run_flags(self, out: Path, seed: int) -> list[str]:
        """A search's or a training's tokenizer, folder, seed and splits."""
        return ["--tokenizer", rel(self.work / "tokenizer"), "--output_dir", rel(out), "--seed", str(seed),
                "--train_split", self.splits["train"], "--eval_split", self.splits["val"]]

    def threads(self) -> list[str]:
        return ["--num_threads", str(self.args.num_threads)] if self.args.num_threads else []

    def run(self, script: str, flags: list[str], log: Path, timing: dict[str, Any], stage: str, out: Path) -> None:
        """Run a training script (a dry run prints its command); its command and time go into ``timing``, saved
        beside run folder ``out`` even when it fails or is stopped (the next sitting resumes its checkpoints)."""
        try:
            shown = run_script(REPO, script, flags, log, timing, stage, self.args.dry_run)
        finally:
            self.timing(out, timing)
        if self.args.dry_run:
            print(shown)

    def timing(self, out: Path, timing: dict[str, Any] | None = None) -> dict[str, Any]:
        """The stages' times and commands of run folder ``out`` so far, kept beside it across sittings; with
        ``timing``, save it."""
        path = out.parent / f"{out.name}.timing.json"
        if timing is not None and not self.args.dry_run:
            atomic_write_json(path, timing)
        return timing if timing is not None else json.loads(path.read_text()) if path.is_file() else {}

    def tokenizer(self) -> Path:
        folder = self.work / "tokenizer"
        if self.args.dry_run:
            return folder
        return joint_tokenizer(folder, self.data, self.src, self.tgt, self.splits["train"], self.recipe["vocab_size"])

    def search(self, seed: int, again: RunRecord | None = None, results: Path | None = None) -> RunRecord | None:
        """Run (or resume) search ``seed`` of this protocol; ``again``: the recorded search to run again, with its
        own variant's flags (``--rebuild``), its record written to ``results``."""
        name = again.run if again else self.plan.search_name(seed)
        variant, variant_flags = (again.search_variant, again.variant_flags or {}) if again else (
            self.variant, self.variant_flags)
        result = (results or self.results) / f"{name}.json"
        if result.is_file():
            logger.info("%s: done (%s)", name, rel(result))
            return RunRecord.load(result)
        out = self.work / name
        timing = self.timing(out)
        if not (out / "search_summary.json").is_file():
            flags = [*self.data_flags(), *self.run_flags(out, seed), *flag_list(
                {**self.recipe["model"], **self.recipe["search"], **variant_flags}), *self.threads(),
                *restart_flags(out)]
            if self.args.shared_warmup and seed > 0 and not again:  # only the α phase: s0's θ warm-up
                flags += ["--warmup_from", rel(self.work / self.plan.search_name(0))]
            self.run("search.py", flags, out.parent / f"{out.name}.log", timing, "search", out)
        if self.args.dry_run:
            return None
        record = search_record(name, self.pair, seed, variant, variant_flags, out, rel(out), timing)
        result.parent.mkdir(parents=True, exist_ok=True)
        record.save(result)
        return record

    def train(self, name: str, kind: str, genotype: str, seed: int, meta: dict[str, Any], results: Path | None = None,
              max_steps: int | None = None, start_from: Path | None = None, tune: bool = False,
              extend: bool = False) -> None:
        """Train (or resume) run ``name`` with the recipe, average, translate the test split once, record it. ``meta``:
        its kind's record fields; ``max_steps``/``start_from``: a longer budget from a checkpoint (the zoo), ``tune``:
        decoding chosen on val (``zoo_decoding``); ``extend``: the finished run trains on (``set_aside_evaluation``)."""
        results = results or self.results
        result = results / f"{name}.json"
        max_steps = max_steps or int(self.recipe["train"]["--max_steps"])
        if result.is_file() and not extend:
            updates = RunRecord.load(result).updates
            if updates != max_steps:  # a table must not mix budgets
                raise ValueError(f"{rel(result)} was trained for {updates} updates, this protocol asks {max_steps}; "
                                 "give another --results_dir and --work_dir for another budget")
            logger.info("%s: done (%s)", name, rel(result))
            return
        out, log = self.work / name, self.work / f"{name}.log"
        timing = self.timing(out)
        # Finished: the budget trained and the last checkpoints averaged (averaged/ comes just before the summary).
        finished = (out / "train_summary.json").is_file() and json.loads(
            (out / "train_summary.json").read_text())["steps"] >= max_steps and (out / "averaged/config.json").is_file()
        if not finished:
            flags = [*self.data_flags(), "--genotype", genotype, *self.run_flags(out, seed),
                     *flag_list(self.recipe["model"]), *flag_list({**self.recipe["train"], "--max_steps": max_steps}),
                     *self.threads()]
            if start_from is not None and complete_checkpoints(out)[-1:] in ([], [start_from]):
                # The inverse-sqrt schedule does not depend on --max_steps: continuing a run is training it longer.
                flags += ["--resume_from_checkpoint", rel(start_from)]
            else:
                flags += restart_flags(out)
            self.run("train.py", flags, log, timing, "train", out)
        summary = {} if self.args.dry_run else json.loads((out / "train_summary.json").read_text())
        if not self.args.dry_run:  # the model tested: the mean of the last checkpoints, as train.py wrote it
            if not (out / "averaged" / "config.json").is_file():
                raise RuntimeError(f"{rel(out)}: train.py finished without writing averaged/ (--average_checkpoints)")
            timing["averaged_checkpoints"] = (summary.get("averaged") or {}).get("checkpoints")
            self.timing(out, timing)
        test_json, tuned, decoding = out / "eval_test.json", out / "decoding.json", self.recipe["evaluate"]
        tune = tune and bool(self.recipe["zoo_decoding"])
        if tune and (extend or not test_json.is_file() and not tuned.is_file()):
            shared = {k: v for k, v in decoding.items() if k in ("--max_new_tokens", "--max_examples")}
            flags = [*self.data_flags(), "--model", rel(out / "averaged"), "--split", self.splits["val"],
                     "--output", rel(tuned), *flag_list({**shared, **self.recipe["zoo_decoding"]}), *self.threads()]
            self.run("tune_decoding.py", flags, log, timing, "tune", out)
        if tune:
            decoding = {**{k: v for k, v in decoding.items() if k not in ("--num_beams", "--length_penalty")},
                        "--decoding": rel(tuned)}
        if extend or not test_json.is_file():
            flags = [*self.data_flags(), "--model", rel(out / "averaged"), "--split", self.splits["test"],
                     "--output", rel(test_json), *flag_list(decoding), *self.threads()]
            self.run("evaluate.py", flags, log, timing, "evaluate", out)
        if self.args.dry_run:
            return
        test = json.loads(test_json.read_text())  # evaluate.py's scores: BLEU cased and lowercased, chrF
        results.mkdir(parents=True, exist_ok=True)
        atomic_write_text(results / f"{name}.test.txt", "\n".join(test["hypotheses"]) + "\n")
        training_record(name, kind, self.pair, seed, meta, summary, test,
                        f"average of the last {self.recipe['average_last']} checkpoints",
                        rel(results / f"{name}.test.txt"), rel(self.data), rel(out), timing).save(result)
        logger.info("%s: test BLEU %.2f (lowercased %.2f)", name, test["bleu"], test["bleu_lowercase"])
        self.summarize()

    def summarize(self) -> dict[str, Any]:
        """Rebuild the pair's summary (and the cross-pair overview) from the finished runs. Called after each
        run as well as at the end, so a sitting that stops midway leaves the table of what it finished."""
        settings = ReportSettings(root=REPO, results=self.results, pair=self.pair, dataset=self.data,
                                  splits=self.splits, sizes=self.sizes, recipe=self.recipe, scale=self.scale,
                                  planned={} if self.args.smoke else CONFIG.pairs)
        with self._summary_lock:
            return write_summary(settings)

    # ---- the protocol ------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any] | None:
        """The searches (waited for: their genotypes are trained), then every training run of the plan; with
        ``--replicate``/``--rebuild``, only those runs again. Then the summary; with ``--publish`` only the summary
        and the zoo, from the runs that have finished."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        self.tokenizer()
        jobs = Jobs(1 if self.args.dry_run else self.args.jobs)
        if self.args.replicate or self.args.rebuild:
            for run in self.args.replicate:
                jobs.submit(self.replicate, run)
            for run in self.args.rebuild:
                jobs.submit(self.rebuild, run)
        elif not self.args.publish:  # the zoo is made of finished runs: publishing starts none of the plan's
            searches: dict[int, RunRecord | None] = {}
            if self.args.shared_warmup and self.sizes["searches"] > 0:
                searches[0] = self.search(0)  # its warm-up, before the seeds that start from it
            for s in range(1 if self.args.shared_warmup else 0, self.sizes["searches"]):
                jobs.submit(lambda s: searches.__setitem__(s, self.search(s)), s)
            jobs.join()
            for t in [] if self.args.searches_only else self.plan.trainings(searches):
                jobs.submit(self.train, t.name, t.kind, t.genotype, t.seed, t.meta)
        jobs.join()
        if self.args.dry_run and self.args.publish:
            self.publish()  # the zoo's commands: continue, tune, evaluate, publish
        if self.args.dry_run or (self.args.searches_only and not load_runs(self.results)[0]):
            return None  # no training run yet: no table to write
        summary = self.summarize()
        if self.args.publish:
            self.publish()
        return summary

    def replicate(self, run: str) -> None:
        """Train the finished run ``run`` again, with its genotype, seed and this recipe, on this machine."""
        source = self.results / f"{run}.json"
        if not source.is_file():
            raise ValueError(f"--replicate {run}: no finished run {rel(source)} to replicate")
        record = RunRecord.load(source)
        if record.kind not in ("searched", "standard", "random"):
            raise ValueError(f"--replicate {run}: a {record.kind} run, not a training run")
        meta = {k: getattr(record, k) for k in ("search", "search_genotype", "search_variant", "random_seed")}
        self.train(f"{run}-on-{machine_kind()}", "replica", self.plan.genotype_of(record), record.train_seed,
                   {**meta, "replica_of": run, "replica_of_kind": record.kind,
                    "replica_of_device": record.device or "unrecorded",
                    "protocol_summary": rel(self.results / "summary.json")}, results=self.results / "replicas")

    def rebuild(self, run: str) -> RunRecord | None:
        """Run the recorded run ``run`` (``standard-t0``, ``replicas/<name>``, ``search-long-s0``) again into its
        own work folder, from its record alone, so that its model is on this machine (for ``--publish`` and the
        ranking diagnostic): same genotype, seed and recipe; a search with its variant's flags. The new record goes
        to ``rebuilt/``; a test BLEU (a search: a genotype) that differs from the recorded one is reported."""
        source = self.results / f"{run}.json"
        if not source.is_file():
            raise ValueError(f"--rebuild {run}: no finished run {rel(source)} to train again")
        record = RunRecord.load(source)
        if record.kind == "search":  # its supernet and α, for --publish's search picture and the ranking diagnostic
            again = self.search(record.seed, again=record, results=self.results / "rebuilt")
            if again is not None:
                (logger.info if again.genotype == record.genotype else logger.warning)(
                    "rebuilt %s: genotype %s the recorded one", run,
                    "equal to" if again.genotype == record.genotype else "different from")
            return again
        if record.kind not in ("searched", "standard", "random", "replica"):
            raise ValueError(f"--rebuild {run}: a {record.kind} run, neither a search nor a training run")
        if record.continues:
            raise ValueError(f"--rebuild {run}: a run that continues {record.continues} from a checkpoint; rebuild "
                             f"{record.continues} and give --publish --zoo_steps {record.updates}")
        work = self.work / record.run
        if record.work_dir and (REPO / record.work_dir).resolve() != work.resolve():
            raise ValueError(f"--rebuild {run}: its work folder {record.work_dir} is not this protocol's {rel(work)}; "
                             "give the --work_dir and --scale it was run with")
        meta = {k: getattr(record, k) for k in ("search", "search_genotype", "search_variant", "random_seed",
                                                "replica_of", "replica_of_kind", "replica_of_device",
                                                ) if getattr(record, k) is not None}
        meta.update(rebuilt_from=rel(source), protocol_summary=rel(self.results / "summary.json"))
        results = self.results / "rebuilt"
        self.train(record.run, record.kind, self.plan.genotype_of(record), record.train_seed, meta, results=results,
                   max_steps=record.updates)
        if self.args.dry_run:
            return None
        again = RunRecord.load(results / f"{record.run}.json")
        same = abs(again.bleu - record.bleu) < 0.005
        (logger.info if same else logger.warning)(
            "rebuilt %s: test BLEU %.2f, recorded %.2f (%s; recorded on %s, rebuilt on %s)", run, again.bleu,
            record.bleu, "the same" if same else "different", record.device, again.device)
        return again

    def train_longer(self, run: RunRecord, steps: int) -> RunRecord:
        """``zoo-<run>``: the protocol run ``run`` continued from its last checkpoint to ``steps`` updates with the
        same recipe and seed, then averaged and tested like every run (results in ``zoo/``, outside the table)."""
        if steps <= run.updates:
            raise ValueError(f"--zoo_steps {steps} must exceed the {run.updates} updates of {run.run}")
        checkpoints = complete_checkpoints(REPO / run.work_dir)
        result, out = self.results / "zoo" / f"zoo-{run.run}.json", self.work / f"zoo-{run.run}"
        if not checkpoints and not result.is_file():
            raise FileNotFoundError(f"--zoo_steps: {run.work_dir} has no checkpoint of {run.run} to continue")
        # Already continued to fewer updates: that continuation trains on from its own last checkpoint.
        if extend := result.is_file() and RunRecord.load(result).updates < steps:
            if not (checkpoints := complete_checkpoints(out)):
                raise FileNotFoundError(f"--zoo_steps {steps}: {rel(out)} has no checkpoint of {out.name} to go on "
                                        "from")
            if not self.args.dry_run:
                set_aside_evaluation(out, result)
        meta = {k: getattr(run, k) for k in ("search", "search_genotype", "search_variant", "random_seed",
                                             "replica_of", "replica_of_kind")}
        self.train(f"zoo-{run.run}", run.kind, self.plan.genotype_of(run), run.train_seed,
                   {**meta, "continues": run.run, "protocol_summary": rel(self.results / "summary.json")},
                   results=self.results / "zoo", max_steps=steps, start_from=checkpoints[-1] if checkpoints else None,
                   tune=True, extend=extend)
        if self.args.dry_run and (extend or not result.is_file()):  # where the model will be, for publish's command
            return dataclasses.replace(run, run=out.name, work_dir=rel(out), source=result)
        return RunRecord.load(result)

    def zoo_candidate(self) -> RunRecord:
        """The run ``--publish`` takes: of the finished runs of ``--zoo_kind`` (searched: with their replicas) whose
        model is on this machine, the lowest validation loss of the averaged model. A run trained on a lent GPU, or
        in an earlier sitting, left its weights there; ``--rebuild`` (or ``--replicate``) trains it again here."""

        def here(run: RunRecord) -> bool:
            folder = REPO / run.work_dir
            if self.args.zoo_steps:  # continued from its checkpoints, or already continued here (a zoo record of
                # a run continued on another machine does not put its model here)
                continued = self.work / f"zoo-{run.run}"
                return bool(complete_checkpoints(folder)) or (continued / "averaged" / "config.json").is_file()
            return (folder / "averaged" / "config.json").is_file()

        kind = self.args.zoo_kind
        best = zoo_choice(zoo_ranking(self.results, kind), here, rel(self.results), kind)
        # Trained again here from its record (--rebuild): the model on this machine is the rebuild's, with its scores.
        rebuilt = rebuilt_run(self.results, best.run)
        return rebuilt.with_search_of(best) if rebuilt is not None else best

    def zoo_name(self) -> str:
        name = f"revdarts-smoke-{self.pair}" if self.args.smoke else f"revdarts-multi30k-{self.pair}"
        return name + (f"-{self.scale}" if self.scale else "") + ("-standard" if self.args.zoo_kind == "standard" else "")

    def publish(self) -> Path:
        """The pair's zoo entry: the ``zoo_candidate`` (trained longer with ``--zoo_steps``) goes through
        training/publish.py into ``--model_cards_dir/<name>``: the complete Hub folder (weights, config and code,
        tokenizer, card, scores), written atomically over the previous one."""
        from hf_revdarts.training.data import load_parallel_text

        best = self.zoo_candidate()
        if self.args.zoo_steps:
            best = self.train_longer(best, self.args.zoo_steps)
        name = self.zoo_name()
        run_dir, out = REPO / best.work_dir, Path(self.args.model_cards_dir) / name
        # A rebuilt run's scores are its rebuild's (the same figures when it reproduces, checked by publish.py).
        pairs = len(load_parallel_text(self.data, self.src, self.tgt, self.splits["train"])[0])
        flags = ["--model", rel(run_dir / "averaged"), "--eval_results", rel(run_dir / "eval_test.json"),
                 "--train_summary", rel(run_dir / "train_summary.json"), "--protocol_run", rel(best.source),
                 "--output_dir", rel(out), "--model_name", name, "--overwrite", "--dataset_description",
                 f"{self.data.name}, {self.splits['train']} split ({pairs:,} {self.src}–{self.tgt} pairs); one joint BPE "
                 f"vocabulary of {self.recipe['vocab_size']:,} shared by every run of the protocol"]
        # The search's folder where this machine ran it (its picture); else publish.py takes the search's cost
        # from the search's record.
        if best.search and (self.work / best.search / "search_summary.json").is_file():
            flags += ["--search_dir", rel(self.work / best.search)]
        self.run("publish.py", flags, self.work / f"{name}.publish.log", {}, "publish", self.work / f"{name}.publish")
        logger.info("publish: %s", rel(out))
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=sorted(CONFIG.pairs), default="en-de")
    p.add_argument("--data", default=None, help=f"folder of {{split}}.{{lang}}.gz (default: {CONFIG.dataset})")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "protocol"), help="checkpoints and logs (not in git)")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--searches", type=int, default=None, help="S (default: per pair, see the config's pairs)")
    p.add_argument("--seeds", type=int, default=None, help="T training seeds for searched and standard")
    p.add_argument("--random", type=int, default=None, help="K random genotypes")
    p.add_argument("--max_steps", type=int, default=None, help="override the recipe's update budget")
    p.add_argument("--num_threads", type=int, default=0, help="torch threads per run (0: the scripts' default)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (a GPU machine: several; 2 CPU cores: 2 with --num_threads 1, about 1.4-1.5x the "
                        "updates per hour of one run on 2 threads)")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--status", action="store_true", help="print where each run stands, run nothing")
    p.add_argument("--report", action="store_true",
                   help="rebuild the summary (summary.json/.md, bleu_per_kind.png) and overview.md from the records, "
                        "run nothing")
    p.add_argument("--replicate", action="append", default=[], metavar="RUN",
                   help="train the finished run RUN (e.g. standard-t0) again on this machine and report both; "
                        "repeatable; runs nothing else")
    p.add_argument("--searches_only", action="store_true",
                   help="run the searches (and write their records), not the trainings: those can follow in another "
                        "sitting or on another machine")
    p.add_argument("--shared_warmup", action="store_true",
                   help="searches s1, s2, ... run only their α phase, from search s0's θ warm-up (--warmup_from)")
    p.add_argument("--rebuild", action="append", default=[], metavar="RUN",
                   help="train the recorded run RUN (standard-t0, replicas/searched-long-s0-t0-on-cpu, ...) again into its "
                        "own work folder from its record alone, so that --publish finds its model here; the new record "
                        "goes to rebuilt/; repeatable; runs nothing else")
    p.add_argument("--search_variant", choices=sorted(CONFIG.search_variants), default=None,
                   help="run the searches of this variant of the search recipe (the config's search_variants) and "
                        "train their genotypes; the standard and random runs are the base protocol's")
    p.add_argument("--publish", action="store_true",
                   help="publish the finished searched run with the lowest validation loss (training/publish.py, with "
                        "the protocol's comparison in its card) into --model_cards_dir; runs none of the plan's runs")
    p.add_argument("--zoo_steps", type=int, default=None,
                   help="with --publish: first train that run longer, from its last checkpoint to this many updates with "
                        "the same recipe (run zoo-<run>, results in zoo/), and publish that model")
    p.add_argument("--zoo_kind", choices=("searched", "standard"), default="searched",
                   help="with --publish: the kind of run published (standard: the Transformer baseline of the same size "
                        "and recipe, as revdarts-multi30k-<pair>-standard)")
    p.add_argument("--model_cards_dir", default=str(REPO / "model_cards"),
                   help="the zoo: where --publish writes the complete model folder (weights, code, tokenizer, card)")
    p.add_argument("--smoke", action="store_true", help="bundled sample, tiny sizes, a few steps, every kind")
    p.add_argument("--scale", choices=sorted(CONFIG.scales), default=None,
                   help="the protocol at another model size (the config's scales; wide: d=576, 6+6 layers, for a GPU), "
                        "with runs and results of its own in <pair>-<scale>/")
    args = p.parse_args(argv)
    if args.zoo_kind != "searched" and not args.publish:
        p.error("--zoo_kind chooses the run --publish publishes: give --publish too")
    if args.zoo_steps is not None and not args.publish:
        p.error("--zoo_steps trains the model --publish publishes: give --publish too")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    for key in ("searches", "seeds", "random", "max_steps"):
        value, least = getattr(args, key), 1 if key in ("seeds", "max_steps") else 0
        if value is not None and value < least:
            p.error(f"--{key} must be >= {least}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_args(argv)
    args.dry_run = args.dry_run or args.status  # --status writes nothing either
    protocol = Protocol(args)
    if args.status:
        rows = protocol.plan.status()
        print("\n".join(f"{r['run']:<24} {r['state']}" for r in rows))
        if left := cpu_hours_left(rows, protocol.results):
            print(left)
        return 0
    if not any(protocol.data.glob(f"{protocol.splits['train']}.{protocol.src}*")):
        raise SystemExit(f"no {protocol.splits['train']}.{protocol.src}[.gz] in {protocol.data}; give --data")
    if args.report:
        protocol.summarize()
    elif protocol.execute() is None:
        return 0
    print(Path(protocol.results / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
