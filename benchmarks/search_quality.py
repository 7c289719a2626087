#!/usr/bin/env python
"""Does the search pay? Searched vs standard vs random genotypes, same size, same update budget.

One command per language pair (Multi30k, ``../shared/data/multi30k`` relative to the repository):

    python benchmarks/search_quality.py --pair en-de                     # S=2 searches, T=2 seeds, K=4 random
    python benchmarks/search_quality.py --pair en-fr                     # S=1, T=1, K=2
    python benchmarks/search_quality.py --pair en-de --jobs 2 --num_threads 1   # 2 CPU cores: two runs at once
    python benchmarks/search_quality.py --pair en-de --dry_run           # print the commands only
    python benchmarks/search_quality.py --pair en-de --status            # where each run stands, updates left
    python benchmarks/search_quality.py --smoke                          # bundled sample, tiny, minutes
    python benchmarks/search_quality.py --pair en-de --search_variant long     # a variant of the search
    python benchmarks/search_quality.py --pair en-de --replicate random-r0    # a finished run again, here
    python benchmarks/search_quality.py --pair en-de --publish           # then the zoo: model folder + card
    python benchmarks/search_quality.py --pair en-de --scale wide --jobs 9   # d=576, 6+6, on a GPU: <pair>-wide/

For a pair it (1) trains one joint tokenizer shared by every run, (2) runs S searches (seeds 0..S-1,
``training/search.py``), (3) trains the derived genotype of each search with T training seeds, the standard
self_attn/ffn genotype with T seeds, and K genotypes drawn uniformly from the search space
(``hf_revdarts.model.genotype``, ``zero`` excluded as in the derivation), all with the same
d_model, depth, recipe and update budget (``training/train.py``), (4) averages the last N checkpoints of
each run (``train.py --average_checkpoints``) and translates ``test_2016_flickr`` with beam search and a
length penalty (``training/evaluate.py``). Model selection
and early decisions use ``val`` only; the test split is translated once per run, at the end.

Outputs, under ``--results_dir/<pair>/`` (default ``benchmarks/results``; paths inside are relative to the
repository): one ``<run>.json`` per search/training run (+ ``<run>.test.txt``, its test translations),
``summary.json`` and ``summary.md`` (mean ± std per kind, parameters, updates, wall and CPU time, paired
bootstrap searched vs standard) and ``bleu_per_kind.png``. Working folders (checkpoints, logs) go under
``--work_dir`` (default ``runs/protocol``, ignored by git).

``--search_variant NAME`` runs the searches of a variant of the search recipe (``SEARCH_VARIANTS``: what was
tried to make the search win) and trains their genotypes with the same recipe, as runs ``search-NAME-s*`` and
``searched-NAME-s*-t*``; the standard and random runs are the base protocol's, so the variant gets a row and a
paired bootstrap of its own in the same table.

``--replicate RUN`` trains a finished run again with its own command (genotype, seed, recipe) on this
machine, into ``replicas/<RUN>-on-<cpu|gpu>.json``, and the summary sets the two side by side: when the kinds of
a table were trained on different machines, this says whether a gap is the genotype's or the machine's (CPU
and CUDA draw different dropout masks from one seed and run different kernels).

``--publish`` then builds the pair's zoo entry: the searched run whose averaged model has the lowest validation
loss goes through ``training/publish.py`` (weights, tokenizer, code, card with this protocol's comparison table and
the run's commands) into ``published/revdarts-multi30k-<pair>/`` (not in git), and its card into
``model_cards/revdarts-multi30k-<pair>/``. With ``--zoo_steps N`` that run is first trained longer, from its last
checkpoint to N updates with the same recipe (``zoo/zoo-<run>.json``), and the longer-trained model is published.
Only a run whose model is on this machine can be published: when the best one trained elsewhere (a lent GPU) and
its weights stayed there, ``--replicate`` it here first; its replica is then a candidate like the run it repeats.

Resumable: a run whose ``<run>.json`` exists is skipped; an interrupted training run continues from its
latest checkpoint (``--resume_from_checkpoint latest``), an interrupted search likewise. The summary is rebuilt
after every finished run, so it always holds what has finished; run the same command again until every run has.
The pairs can run in separate sittings or in parallel.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRAINING = REPO / "training"
logger = logging.getLogger("search_quality")

# =========================================================================================================
# THE RECIPE — the one place that fixes sizes, budgets and flags. Every run of a pair uses the same values.
# =========================================================================================================
PAIRS: dict[str, dict[str, int]] = {  # S searches, T training seeds (searched, standard), K random genotypes
    "en-de": {"searches": 2, "seeds": 2, "random": 4},
    "en-fr": {"searches": 1, "seeds": 1, "random": 2},
    "en-cs": {"searches": 1, "seeds": 1, "random": 2},
}
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
RECIPE: dict[str, Any] = {
    "vocab_size": 8000,  # one joint BPE vocabulary per pair, shared by every run of the pair
    "average_last": 5,  # final model = mean of the last N checkpoints (needs checkpoints_total_limit >= N)
    "model": {"--d_model": 192, "--encoder_layers": 4, "--decoder_layers": 4, "--num_heads": 4},
    "train": {  # configs/multi30k-en-de-train.yaml's recipe (the README's "Recipes"), at the protocol's budget
        "--dropout": 0.3, "--attention_dropout": 0.1, "--activation_dropout": 0.1, "--label_smoothing": 0.1,
        "--lr": 1.5e-3, "--warmup_steps": 1000, "--max_tokens": 4096,
        "--max_steps": 4000, "--eval_every": 500, "--max_eval_examples": 500, "--bleu_sentences": 500,
        "--save_every": 250, "--checkpoints_total_limit": 5,  # --average_checkpoints is set from average_last
        "--memory_mode": "ordinary",  # a 2M-parameter model fits anywhere; the same gradients, 1.4x faster than reversible
    },
    "search": {  # configs/multi30k-en-de-search.yaml: the supernet at the trained size; --arch_lr left to the rule
        "--tie_blocks": 2, "--max_steps": 150, "--warmup_steps": 40, "--arch_start_step": 30,
        "--max_tokens": 1500, "--dropout": 0.1, "--label_smoothing": 0.1, "--selection": "argmax",
        "--max_train_examples": 29000, "--eval_every": 30, "--save_every": 30, "--vocab_size": 8000,
    },
    "evaluate": {"--num_beams": 4, "--length_penalty": 1.0, "--max_new_tokens": 64},
    # ---- FLAGS THE SCRIPTS DO NOT HAVE YET (issue 10 recipe). Passed only once a script's --help lists
    # them; until then they are left out, logged, and recorded in each run's JSON as "flags_not_supported".
    "pending": {
        "train": {},
        "search": {},
        "evaluate": {},
    },
}

# Search settings tried to make the search win, each a change of the recipe's search flags (``--search_variant``).
# A variant's runs are search-<v>-s<seed> and searched-<v>-s<seed>-t<t>, a row of their own in the table; the
# standard and random runs are shared by every variant. Trained at the recipe's size and budget like any genotype.
SEARCH_VARIANTS: dict[str, dict[str, Any]] = {
    # The base search stops after 0.2M target tokens, when the supernet does not use the source yet (DARTS-PT:
    # no encoder op matters), so its encoder α record noise. A standard model starts to translate after ~4M
    # tokens (val BLEU 0.7 at 2M, 11 at 4M). This variant trains θ alone for 1000 batches of 4096 tokens
    # (4.1M) and then moves α for 300 steps (arch_lr 0.03 from the rule); to afford that on 2 cores, on a proxy
    # supernet of half the width and one tied block of 2 layers per stack, stacked to 4+4 for training.
    "long": {
        "--d_model": 96, "--encoder_layers": 2, "--decoder_layers": 2,
        "--max_tokens": 4096, "--lr": 1.5e-3, "--warmup_steps": 400, "--max_steps": 1300, "--arch_start_step": 1000,
        "--prune_below": 0.01, "--eval_every": 100, "--save_every": 100,
    },
}

# The same protocol at another model size (``--scale``): runs and results of its own (``<pair>-<scale>/``), the
# recipe otherwise unchanged. ``wide`` is the issue's GPU setting (about d=512, 6+6): d must split evenly into the
# encoder's 2 and the decoder's 3 parts, so 576, not 512. It is meant for a lent GPU (``--jobs`` trainings side
# by side there): on the 2 cores one training of it would take the better part of a day.
SCALES: dict[str, dict[str, Any]] = {
    "wide": {
        "model": {"--d_model": 576, "--encoder_layers": 6, "--decoder_layers": 6, "--num_heads": 8},
        # the long variant's proxy supernet at half the trained width, as at d=192 (d=96)
        "search_variants": {"long": {"--d_model": 288}},
    },
}

SMOKE: dict[str, Any] = {  # tiny sizes on the bundled sample: every kind, a few steps, about a minute
    "data": REPO / "samples" / "en-de", "splits": {"train": "train", "val": "val", "test": "test"},
    "pair": {"searches": 1, "seeds": 1, "random": 1},
    "vocab_size": 300, "average_last": 2,
    "model": {"--d_model": 48, "--encoder_layers": 2, "--decoder_layers": 2, "--num_heads": 2},
    "train": {"--max_steps": 4, "--warmup_steps": 2, "--max_tokens": 512, "--eval_every": 4, "--save_every": 2,
              "--checkpoints_total_limit": 3, "--max_eval_examples": 8, "--bleu_sentences": 4, "--max_length": 32},
    "search": {"--tie_blocks": 1, "--max_steps": 3, "--warmup_steps": 1, "--arch_start_step": 1, "--max_tokens": 512,
               "--eval_every": 3, "--save_every": 3, "--vocab_size": 300, "--max_eval_examples": 8,
               "--eval_batches": 1, "--max_length": 32, "--no_figures": None},
    "search_variants": {"long": {"--max_steps": 4, "--arch_start_step": 2, "--prune_below": 0.01}},
    "evaluate": {"--num_beams": 2, "--max_new_tokens": 16, "--max_examples": 8},
}
# =========================================================================================================


def machine() -> str:
    """The machine the runs use: the GPU's name, else the CPU count (wall times only compare on one machine)."""
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {os.cpu_count()} cores"


def machine_kind() -> str:
    """``gpu`` or ``cpu``: the suffix of a replica's name."""
    return "gpu" if machine().startswith("GPU") else "cpu"


def rel(path: Path | str) -> str:
    """A path as recorded in committed files: relative to the repository, never absolute."""
    return os.path.relpath(Path(path).resolve(), REPO)


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def complete_checkpoints(folder: Path) -> list[Path]:
    """A run's checkpoint-* folders that were written to the end, oldest first: the rule of
    ``hf_revdarts.integrity.complete_checkpoints``, restated here because importing the package pulls in
    transformers (5 s), which the driver and ``--status`` never need otherwise."""
    return sorted(c.parent for c in folder.glob("checkpoint-*/train_state.json"))


def flag_list(flags: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in flags.items():
        out += [key] if value is None else [key, str(value)]
    return out


class Protocol:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        smoke = args.smoke
        self.pair = "en-de" if smoke else args.pair
        self.src, self.tgt = self.pair.split("-")
        self.data = Path(SMOKE["data"] if smoke and args.data is None else args.data or REPO.parent / "shared/data/multi30k")
        self.splits = SMOKE["splits"] if smoke else SPLITS
        sizes = dict(SMOKE["pair"] if smoke else PAIRS[self.pair])
        for key in ("searches", "seeds", "random"):
            if getattr(args, key) is not None:
                sizes[key] = getattr(args, key)
        self.sizes = sizes
        self.scale = args.scale
        name = f"{self.pair}-smoke" if smoke else self.pair
        if self.scale:
            name += f"-{self.scale}"
        self.results = Path(args.results_dir) / name
        self.work = Path(args.work_dir) / name
        self.recipe = self._recipe(smoke)
        self.variant = args.search_variant
        self.variant_flags = dict((SMOKE["search_variants"] if smoke else SEARCH_VARIANTS).get(self.variant, {}))
        if self.scale and self.variant:
            self.variant_flags.update(SCALES[self.scale]["search_variants"].get(self.variant, {}))
        self._help: dict[str, str] = {}
        self._summary_lock = threading.Lock()  # runs finish on --jobs threads
        self.timing_note = "wall/CPU seconds of finished stages; a stage killed midway is not counted"

    # ---- recipe ------------------------------------------------------------------------------------------
    def _recipe(self, smoke: bool) -> dict[str, Any]:
        r = json.loads(json.dumps(RECIPE))  # a copy
        if smoke:
            for key in ("vocab_size", "average_last", "model"):
                r[key] = SMOKE[key]
            r["train"].update(SMOKE["train"])
            r["evaluate"].update(SMOKE["evaluate"])
            r["search"] = SMOKE["search"]
        if self.args.scale:
            r["model"].update(SCALES[self.args.scale]["model"])
        r["train"]["--average_checkpoints"] = r["average_last"]
        if self.args.max_steps is not None:
            r["train"]["--max_steps"] = self.args.max_steps
        if r["train"]["--checkpoints_total_limit"] < r["average_last"]:
            raise ValueError("checkpoints_total_limit must be >= average_last: the averaged checkpoints must be kept")
        return r

    def supported(self, script: str) -> str:
        """The script's --help text (cached by the script's content), to tell which pending flags exist."""
        if script not in self._help:
            path = TRAINING / script
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            cache = self.work.parent / f".help-{script}-{digest}.txt"
            if not cache.is_file():
                out = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True,
                                     cwd=REPO, env=self.env())
                if out.returncode != 0:
                    raise RuntimeError(f"{script} --help failed:\n{out.stderr[-2000:]}")
                atomic_write(cache, out.stdout)
            self._help[script] = cache.read_text()
        return self._help[script]

    def with_pending(self, script: str, kind: str, flags: list[str], **fill: str) -> tuple[list[str], list[str]]:
        """``flags`` plus the pending recipe flags this script accepts; also the names it does not accept."""
        known = set(re.findall(r"--[A-Za-z0-9_]+", self.supported(script)))
        extra, missing = [], []
        for key, value in self.recipe["pending"][kind].items():
            if key in known:
                extra += [key, str(value).format(**fill)]
            else:
                missing.append(key)
        return flags + extra, missing

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return env

    def data_flags(self) -> list[str]:
        return ["--dataset", rel(self.data), "--src_lang", self.src, "--tgt_lang", self.tgt]

    def common_flags(self) -> list[str]:
        return ["--num_threads", str(self.args.num_threads)] if self.args.num_threads else []

    # ---- running ----------------------------------------------------------------------------------------
    def run(self, script: str, flags: list[str], log: Path, timing: dict[str, Any], stage: str) -> None:
        cmd = [sys.executable, str(TRAINING / script), *flags]
        shown = " ".join(shlex.quote(c) for c in ["python", f"training/{script}", *flags])
        timing.setdefault("commands", []).append(shown)
        if self.args.dry_run:
            print(shown)
            return
        logger.info("%s: %s", stage, shown)
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"\n### {time.strftime('%F %T')} {shown}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env(), stdout=f, stderr=subprocess.STDOUT)
            # This child's own CPU time: RUSAGE_CHILDREN would also count runs of other --jobs finishing meanwhile.
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{stage} failed (exit {proc.returncode}); log {log}:\n{tail}")
        t = timing.setdefault(stage, {"wall_seconds": 0.0, "cpu_seconds": 0.0})
        t["wall_seconds"] = round(t["wall_seconds"] + time.time() - start, 1)
        t["cpu_seconds"] = round(t["cpu_seconds"] + usage.ru_utime + usage.ru_stime, 1)

    @staticmethod
    def restart_flags(out: Path) -> list[str]:
        """Resume from the latest checkpoint; a run that died before its first one left a non-empty folder,
        which the scripts refuse without --overwrite_output_dir (it clears the folder)."""
        if complete_checkpoints(out):
            return ["--resume_from_checkpoint", "latest"]
        return ["--overwrite_output_dir"] if out.is_dir() and any(out.iterdir()) else []

    def tokenizer(self) -> Path:
        """One joint BPE tokenizer per pair (trained on the train split), shared by every run."""
        folder = self.work / "tokenizer"
        if (folder / "tokenizer.json").is_file() or self.args.dry_run:
            return folder
        from hf_revdarts.training.data import get_tokenizer, load_parallel_text
        from hf_revdarts.training.tokenization import save_tokenizer

        src, tgt = load_parallel_text(self.data, self.src, self.tgt, self.splits["train"])
        tmp = Path(tempfile.mkdtemp(dir=self.work, prefix=".tmp-tokenizer-"))
        save_tokenizer(get_tokenizer(src + tgt, self.recipe["vocab_size"]), tmp)
        os.replace(tmp, folder)
        return folder

    def search_name(self, seed: int) -> str:
        return f"search-{self.variant}-s{seed}" if self.variant else f"search-s{seed}"

    def search(self, seed: int, tokenizer: Path) -> dict[str, Any] | None:
        name = self.search_name(seed)
        result = self.results / f"{name}.json"
        if result.is_file():
            logger.info("%s: done (%s)", name, rel(result))
            return json.loads(result.read_text())
        out = self.work / name
        timing = self._timing(out)
        flags = [*self.data_flags(), "--tokenizer", rel(tokenizer), "--output_dir", rel(out), "--seed", str(seed),
                 "--train_split", self.splits["train"], "--eval_split", self.splits["val"],
                 *flag_list({**self.recipe["model"], **self.recipe["search"], **self.variant_flags}),
                 *self.common_flags()]
        if not (out / "search_summary.json").is_file():
            flags += self.restart_flags(out)
            flags, missing = self.with_pending("search.py", "search", flags)
            timing["flags_not_supported"] = missing
            self.run("search.py", flags, out.parent / f"{out.name}.log", timing, "search")
            self._save_timing(out, timing)
        if self.args.dry_run:
            return None
        summary = json.loads((out / "search_summary.json").read_text())
        record = {
            "run": name, "kind": "search", "pair": self.pair, "seed": seed, "search_variant": self.variant,
            "variant_flags": self.variant_flags,
            "genotype": json.loads((out / "genotype.json").read_text()),
            "search_steps": summary["steps"], "stopped_early": summary.get("stopped_early"),
            "search_summary": summary, "work_dir": rel(out), **self._timing_record(timing),
            **({"note": timing["note"]} if "note" in timing else {}),  # e.g. a search run outside the protocol
        }
        write_json(result, record)
        return record

    def train(self, name: str, kind: str, genotype: str, seed: int, tokenizer: Path, meta: dict[str, Any],
              results: Path | None = None, max_steps: int | None = None, start_from: Path | None = None) -> None:
        """Train (or resume) run ``name`` with the recipe, average, translate the test split once, record it.
        ``max_steps``/``start_from``: a longer budget, continuing another run's checkpoint (the zoo)."""
        results = results or self.results
        result = results / f"{name}.json"
        max_steps = max_steps or int(self.recipe["train"]["--max_steps"])
        if result.is_file():
            updates = json.loads(result.read_text())["updates"]
            if updates != max_steps:  # a table must not mix budgets
                raise ValueError(f"{rel(result)} was trained for {updates} updates, this protocol asks {max_steps}; "
                                 "give another --results_dir and --work_dir for another budget")
            logger.info("%s: done (%s)", name, rel(result))
            return
        out = self.work / name
        timing = self._timing(out)
        # Finished: the budget trained and the last checkpoints averaged (averaged/ comes just before the summary).
        finished = (out / "train_summary.json").is_file() and json.loads(
            (out / "train_summary.json").read_text())["steps"] >= max_steps and (out / "averaged/config.json").is_file()
        if not finished:
            flags = [*self.data_flags(), "--genotype", genotype, "--tokenizer", rel(tokenizer), "--output_dir",
                     rel(out), "--seed", str(seed), "--train_split", self.splits["train"],
                     "--eval_split", self.splits["val"], *flag_list(self.recipe["model"]),
                     *flag_list({**self.recipe["train"], "--max_steps": max_steps}), *self.common_flags()]
            if start_from is not None and not complete_checkpoints(out):
                # The inverse-sqrt schedule does not depend on --max_steps: continuing a run is training it longer.
                flags += ["--resume_from_checkpoint", rel(start_from)]
            else:
                flags += self.restart_flags(out)
            flags, missing = self.with_pending("train.py", "train", flags)
            timing["flags_not_supported"] = missing
            self.run("train.py", flags, out.parent / f"{out.name}.log", timing, "train")
            self._save_timing(out, timing)
        final = self.average(out, timing)
        test_json = out / "eval_test.json"
        if not test_json.is_file():
            flags = [*self.data_flags(), "--model", rel(final), "--split", self.splits["test"], "--output",
                     rel(test_json), *flag_list(self.recipe["evaluate"]), *self.common_flags()]
            flags, missing = self.with_pending("evaluate.py", "evaluate", flags)
            timing["evaluate_flags_not_supported"] = missing
            self.run("evaluate.py", flags, out.parent / f"{out.name}.log", timing, "evaluate")
            self._save_timing(out, timing)
        if self.args.dry_run:
            return
        self._write_train_record(name, kind, seed, out, final, test_json, timing, meta, results)
        self.summarize()

    def summarize(self) -> dict[str, Any]:
        """Rebuild the pair's summary (and the cross-pair overview) from the finished runs. Called after each
        run as well as at the end, so a sitting that stops midway leaves the table of what it finished."""
        from search_quality_report import write_summary

        with self._summary_lock:
            return write_summary(self)

    def genotype_of(self, record: dict[str, Any]) -> str:
        """The --genotype a training run of this protocol was given: its search's folder, standard, or its draw
        (a replica: those of the run it repeats)."""
        kind = record.get("replica_of_kind", record["kind"])
        if kind == "searched":
            return rel(self.work / record["search"])
        if kind == "random":
            return rel(self.random_genotype_file(record["random_seed"]))
        return "standard"

    def replicate(self, run: str, tokenizer: Path) -> None:
        """Train the finished run ``run`` again, with its genotype, seed and this recipe, on this machine."""
        source = self.results / f"{run}.json"
        if not source.is_file():
            raise ValueError(f"--replicate {run}: no finished run {rel(source)} to replicate")
        record = json.loads(source.read_text())
        if record["kind"] not in ("searched", "standard", "random"):
            raise ValueError(f"--replicate {run}: a {record['kind']} run, not a training run")
        meta = {k: record[k] for k in ("search", "search_genotype", "search_variant", "random_seed") if k in record}
        self.train(f"{run}-on-{machine_kind()}", "replica", self.genotype_of(record), record["train_seed"], tokenizer,
                   {**meta, "replica_of": run, "replica_of_kind": record["kind"],
                    "replica_of_device": record.get("device", "unrecorded"),
                    "protocol_summary": rel(self.results / "summary.json")}, results=self.results / "replicas")

    def train_longer(self, run: dict[str, Any], steps: int, tokenizer: Path) -> dict[str, Any]:
        """``zoo-<run>``: the protocol run ``run`` continued from its last checkpoint to ``steps`` updates with the
        same recipe and seed, then averaged and tested like every run (results in ``zoo/``, outside the table)."""
        if steps <= run["updates"]:
            raise ValueError(f"--zoo_steps {steps} must exceed the {run['updates']} updates of {run['run']}")
        checkpoints = complete_checkpoints(REPO / run["work_dir"])
        name = f"zoo-{run['run']}"
        result = self.results / "zoo" / f"{name}.json"
        if not checkpoints and not result.is_file():
            raise FileNotFoundError(f"--zoo_steps: {run['work_dir']} has no checkpoint of {run['run']} to continue")
        meta = {k: run[k] for k in ("search", "search_genotype", "search_variant", "random_seed", "replica_of",
                                    "replica_of_kind") if k in run}
        self.train(name, run["kind"], self.genotype_of(run), run["train_seed"], tokenizer,
                   {**meta, "continues": run["run"], "protocol_summary": rel(self.results / "summary.json")},
                   results=self.results / "zoo", max_steps=steps, start_from=checkpoints[-1] if checkpoints else None)
        return json.loads(result.read_text())

    def zoo_candidate(self) -> tuple[dict[str, Any], Path]:
        """(run, its record) that ``--publish`` takes: of the finished searched runs and their replicas whose model
        is on this machine, the lowest validation loss of the averaged model. A run trained on a lent GPU may have
        left its weights there; a ``--replicate`` of it here (same command) can then be published in its place."""
        from search_quality_report import load_runs, replica_pairs

        runs, _ = load_runs(self.results)
        records = {r["run"]: self.results / f"{r['run']}.json" for r in runs if r["kind"] == "searched"}
        candidates = [r for r in runs if r["kind"] == "searched"]
        for again, source, path in replica_pairs(self.results, runs):
            if source["kind"] == "searched":  # a replica written before it kept the search
                meta = {k: source[k] for k in ("search", "search_genotype", "search_variant") if k in source}
                candidates.append({**meta, **again})
                records[again["run"]] = path
        candidates = [r for r in candidates if (r.get("val_averaged") or {}).get("val_loss") is not None]
        if not candidates:
            raise RuntimeError(f"--publish: no finished searched run in {rel(self.results)} to publish")

        def here(run: dict[str, Any]) -> bool:
            folder = REPO / run["work_dir"]
            if self.args.zoo_steps:  # continued from its checkpoints, or already continued
                return bool(complete_checkpoints(folder)) or (self.results / "zoo" / f"zoo-{run['run']}.json").is_file()
            return (folder / "averaged" / "config.json").is_file()

        ranked = sorted(candidates, key=lambda r: r["val_averaged"]["val_loss"])
        logger.info("publish: searched runs by validation loss: %s", ", ".join(
            f"{r['run']} {r['val_averaged']['val_loss']:.3f}{'' if here(r) else ' (model not on this machine)'}"
            for r in ranked))
        available = [r for r in ranked if here(r)]
        if not available:
            raise RuntimeError(
                f"--publish: no searched run of {rel(self.results)} has its model on this machine "
                f"({', '.join(r['work_dir'] for r in ranked)}); train one again here with --replicate "
                f"{ranked[0].get('replica_of', ranked[0]['run'])}")
        best = available[0]
        if best is not ranked[0]:
            logger.warning("publish: %s has the lowest validation loss but its model is not on this machine; "
                           "publishing %s", ranked[0]["run"], best["run"])
        return best, records[best["run"]]

    def publish(self, tokenizer: Path) -> Path:
        """The pair's zoo entry: of the finished searched runs (every search variant), the one whose averaged model
        has the lowest validation loss (val, never test, picks it) goes through training/publish.py into
        ``--published_dir/revdarts-multi30k-<pair>``; its card (README.md, eval_results.json, genotype.png; no
        weights) replaces ``--model_cards_dir/revdarts-multi30k-<pair>``. Which run: ``zoo_candidate``."""
        from hf_revdarts.training.data import load_parallel_text
        from hf_revdarts.training.training_utils import atomic_folder

        best, record = self.zoo_candidate()
        if self.args.zoo_steps:
            best = self.train_longer(best, self.args.zoo_steps, tokenizer)
            record = self.results / "zoo" / f"{best['run']}.json"
        name = f"revdarts-multi30k-{self.pair}" if not self.args.smoke else f"revdarts-smoke-{self.pair}"
        if self.scale:
            name += f"-{self.scale}"
        run_dir, out = REPO / best["work_dir"], Path(self.args.published_dir) / name
        pairs = len(load_parallel_text(self.data, self.src, self.tgt, self.splits["train"])[0])
        flags = ["--model", rel(run_dir / "averaged"), "--eval_results", rel(run_dir / "eval_test.json"),
                 "--train_summary", rel(run_dir / "train_summary.json"), "--search_dir", rel(self.work / best["search"]),
                 "--protocol_run", rel(record), "--output_dir", rel(out),
                 "--model_name", name, "--overwrite", "--dataset_description",
                 f"{self.data.name}, {self.splits['train']} split ({pairs:,} {self.src}–{self.tgt} pairs); one joint BPE "
                 f"vocabulary of {self.recipe['vocab_size']:,} shared by every run of the protocol"]
        self.run("publish.py", flags, self.work / f"{name}.publish.log", {}, "publish")
        with atomic_folder(Path(self.args.model_cards_dir) / name, overwrite=True) as tmp:
            for file in ("README.md", "eval_results.json", "genotype.png"):
                shutil.copyfile(out / file, tmp / file)
        logger.info("publish: %s and its card in %s", rel(out), rel(Path(self.args.model_cards_dir) / name))
        return out

    def average(self, out: Path, timing: dict[str, Any]) -> Path:
        """The mean of the last N checkpoints as a model folder, as train.py --average_checkpoints wrote it."""
        final = out / "averaged"
        if self.args.dry_run:
            return final
        if not (final / "config.json").is_file():
            raise RuntimeError(f"{rel(out)}: train.py finished without writing averaged/ (--average_checkpoints)")
        averaged = json.loads((out / "train_summary.json").read_text()).get("averaged") or {}
        timing["averaged_checkpoints"] = averaged.get("checkpoints")
        self._save_timing(out, timing)
        return final

    def _write_train_record(self, name: str, kind: str, seed: int, out: Path, final: Path, test_json: Path,
                            timing: dict[str, Any], meta: dict[str, Any], results: Path) -> None:
        summary = json.loads((out / "train_summary.json").read_text())
        test = json.loads(test_json.read_text())  # evaluate.py's scores: BLEU cased and lowercased, chrF
        hyps = test["hypotheses"]
        averaged = summary.get("averaged") or {}
        results.mkdir(parents=True, exist_ok=True)
        atomic_write(results / f"{name}.test.txt", "\n".join(hyps) + "\n")
        record = {
            "run": name, "kind": kind, "pair": self.pair, "train_seed": seed, **meta,
            "genotype": summary["genotype"], "parameters": summary["parameters"], "updates": summary["steps"],
            "train_seconds": summary["train_seconds"], "val_best": summary.get("best"),
            "val_history": [{k: h.get(k) for k in ("step", "val_loss", "bleu")} for h in summary.get("history", [])],
            "val_averaged": {k: averaged.get(k) for k in ("steps", "val_loss", "bleu")},
            "test": {"split": self.splits["test"], "model": "average of the last "
                     f"{self.recipe['average_last']} checkpoints", "averaged_steps": averaged.get("steps"),
                     "num_beams": test.get("num_beams"), "length_penalty": test.get("length_penalty"),
                     **{k: test[k] for k in ("bleu", "bleu_signature", "bleu_lowercase", "bleu_lowercase_signature")},
                     "chrf": test.get("chrf"), "chrf_signature": test.get("chrf_signature"),
                     "sentences": len(hyps), "hypotheses": rel(results / f"{name}.test.txt")},
            "dataset": rel(self.data), "work_dir": rel(out), **self._timing_record(timing),
        }
        write_json(results / f"{name}.json", record)
        logger.info("%s: test BLEU %.2f (lowercased %.2f)", name, test["bleu"], test["bleu_lowercase"])

    def _timing(self, out: Path) -> dict[str, Any]:
        path = out.parent / f"{out.name}.timing.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _save_timing(self, out: Path, timing: dict[str, Any]) -> None:
        if not self.args.dry_run:
            write_json(out.parent / f"{out.name}.timing.json", timing)

    def _timing_record(self, timing: dict[str, Any]) -> dict[str, Any]:
        stages = {k: v for k, v in timing.items() if isinstance(v, dict) and "wall_seconds" in v}
        if "device" not in timing:  # where the stages ran (a run finished in another sitting keeps its own)
            timing["device"] = machine()
        return {
            "device": timing["device"],
            "wall_seconds": round(sum(v["wall_seconds"] for v in stages.values()), 1),
            "cpu_seconds": round(sum(v.get("cpu_seconds", 0.0) for v in stages.values()), 1),
            "stages": stages, "timing_note": self.timing_note,
            "commands": timing.get("commands", []),
            "flags_not_supported": sorted(set(timing.get("flags_not_supported", []))
                                          | set(timing.get("evaluate_flags_not_supported", []))),
        }

    # ---- the protocol ------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any] | None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.results.mkdir(parents=True, exist_ok=True)
        tokenizer = self.tokenizer()
        jobs = Jobs(1 if self.args.dry_run else self.args.jobs)
        if self.args.replicate:  # only these runs, then the summary
            for run in self.args.replicate:
                jobs.submit(self.replicate, run, tokenizer)
        else:
            self.submit_protocol(jobs, tokenizer)
        jobs.join()
        if self.args.dry_run:
            return None
        summary = self.summarize()
        if self.args.publish:
            self.publish(tokenizer)
        return summary

    def submit_protocol(self, jobs: Jobs, tokenizer: Path) -> None:
        """The searches (waited for: their genotypes are trained), then every training run of the protocol; with
        ``--search_variant``, the variant's searches and the trainings of their genotypes only."""
        records: dict[int, dict[str, Any] | None] = {}
        for s in range(self.sizes["searches"]):
            jobs.submit(lambda s: records.__setitem__(s, self.search(s, tokenizer)), s)
        jobs.join()
        for name, kind, genotype, seed, meta in self.trainings(records):
            jobs.submit(self.train, name, kind, genotype, seed, tokenizer, meta)

    def trainings(self, records: dict[int, dict[str, Any] | None]) -> list[tuple[str, str, str, int, dict[str, Any]]]:
        """Every training run of the protocol in order, as (name, kind, --genotype, seed, record metadata), given
        the search records by seed (None: not finished)."""
        T, K = self.sizes["seeds"], self.sizes["random"]
        out = []
        first_with: dict[str, int] = {}  # seeds that derive the same genotype share its trainings
        for s in range(self.sizes["searches"]):
            genotype = records.get(s) and records[s]["genotype"]
            key = json.dumps(genotype, sort_keys=True) if genotype else f"unknown-{s}"
            if key in first_with:
                first = self.search_name(first_with[key])
                logger.info("%s derived the genotype of %s: its trainings are %s's", self.search_name(s), first, first)
                continue
            first_with[key] = s
            search = self.search_name(s)
            out += [(f"searched{search[len('search'):]}-t{t}", "searched", rel(self.work / search), t,
                     {"search": search, "search_genotype": genotype, "search_variant": self.variant}) for t in range(T)]
        if self.variant:
            return out
        out += [(f"standard-t{t}", "standard", "standard", t, {}) for t in range(T)]
        for k in range(K):
            path = self.random_genotype_file(k)
            out.append((f"random-r{k}", "random", rel(path), 0,
                        {"random_seed": k, "drawn_genotype": json.loads(path.read_text()) if path.is_file() else None}))
        return out

    def status(self) -> list[dict[str, Any]]:
        """Where each run of the protocol stands (nothing is run or written): done with its BLEU, stopped at a
        checkpoint, or not started, and the updates left."""
        names = [self.search_name(s) for s in range(self.sizes["searches"])]
        records = {s: json.loads(p.read_text()) if (p := self.results / f"{name}.json").is_file() else None
                   for s, name in enumerate(names)}
        budget = {name: int({**self.recipe["search"], **self.variant_flags}["--max_steps"]) for name in names}
        budget.update({t[0]: int(self.recipe["train"]["--max_steps"]) for t in self.trainings(records)})
        rows = []
        for name, steps in budget.items():
            result = self.results / f"{name}.json"
            if result.is_file():
                record = json.loads(result.read_text())
                state, step = (f"done, BLEU {record['test']['bleu']:.2f}" if "test" in record else "done"), steps
            else:
                checkpoints = complete_checkpoints(self.work / name)
                step = int(checkpoints[-1].name.split("-")[-1]) if checkpoints else 0
                state = f"stopped at {step} of {steps} updates" if step else "not started"
            rows.append({"run": name, "kind": "search" if name in names else "training", "state": state,
                         "updates_left": steps - step})
        return rows

    def random_genotype_file(self, k: int) -> Path:
        """genotype.json of random genotype k: same node layout and op lists as the search, ``zero`` excluded."""
        from hf_revdarts.model.genotype import Genotype

        path = self.work / f"random-r{k}.genotype.json"  # beside the run folder, which train.py wants empty
        if not path.is_file():
            s = self.recipe["search"]
            # The search's depth: its genotype (a tied block when --tie_blocks) is what train.py stacks.
            sizes = {"encoder_layers": self.recipe["model"]["--encoder_layers"],
                     "decoder_layers": self.recipe["model"]["--decoder_layers"]}
            ops = {side: s[f"--{side}_ops"].split(",") if s.get(f"--{side}_ops") else None
                   for side in ("encoder", "decoder")}
            geno = Genotype.random(sizes, ops["encoder"], ops["decoder"], seed=k,
                                   tie_blocks=int(s.get("--tie_blocks", 0))).to_dict()
            if not self.args.dry_run:
                write_json(path, geno)
        return path


class Jobs:
    """Runs of a protocol, up to ``n`` at once (``--jobs``; 1: one after another, in submission order). ``join``
    waits for every job, then raises the first failure: one failed run does not stop the others, whose results
    are kept for the next sitting."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool = ThreadPoolExecutor(max_workers=n) if n > 1 else None  # joined once per phase, then reused
        self.futures: list[Future] = []
        self.lock = threading.Lock()

    def submit(self, fn: Any, *args: Any) -> None:
        if self.pool is None:
            fn(*args)
            return
        with self.lock:
            self.futures.append(self.pool.submit(fn, *args))

    def join(self) -> None:
        if self.pool is None:
            return
        while True:
            with self.lock:
                pending = [f for f in self.futures if not f.done()]
            if not pending:
                break
            wait(pending)
        errors = [f.exception() for f in self.futures if f.exception() is not None]
        self.futures = []
        for err in errors[1:]:
            logger.error("another run failed too: %s", err)
        if errors:
            raise errors[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair", choices=sorted(PAIRS), default="en-de")
    p.add_argument("--data", default=None, help="folder of {split}.{lang}.gz (default: ../shared/data/multi30k)")
    p.add_argument("--work_dir", default=str(REPO / "runs" / "protocol"), help="checkpoints and logs (not in git)")
    p.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--searches", type=int, default=None, help="S (default: per pair, see PAIRS)")
    p.add_argument("--seeds", type=int, default=None, help="T training seeds for searched and standard")
    p.add_argument("--random", type=int, default=None, help="K random genotypes")
    p.add_argument("--max_steps", type=int, default=None, help="override the recipe's update budget")
    p.add_argument("--num_threads", type=int, default=0, help="torch threads per run (0: the scripts' default)")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once (a GPU machine: several; 2 CPU cores: 2 with --num_threads 1, about 1.4-1.5x the "
                        "updates per hour of one run on 2 threads)")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--status", action="store_true", help="print where each run stands, run nothing")
    p.add_argument("--replicate", action="append", default=[], metavar="RUN",
                   help="train the finished run RUN (e.g. standard-t0) again on this machine and report both; "
                        "repeatable; runs nothing else")
    p.add_argument("--search_variant", choices=sorted(SEARCH_VARIANTS), default=None,
                   help="run the searches of this variant of the search recipe (SEARCH_VARIANTS) and train their "
                        "genotypes; the standard and random runs are the base protocol's")
    p.add_argument("--publish", action="store_true",
                   help="then publish the searched run with the lowest validation loss (training/publish.py, with the "
                        "protocol's comparison in its card) and put its card in --model_cards_dir")
    p.add_argument("--zoo_steps", type=int, default=None,
                   help="with --publish: first train that run longer, from its last checkpoint to this many updates with "
                        "the same recipe (run zoo-<run>, results in zoo/), and publish that model")
    p.add_argument("--published_dir", default=str(REPO / "published"), help="where --publish writes the model folder")
    p.add_argument("--model_cards_dir", default=str(REPO / "model_cards"), help="where --publish puts the card")
    p.add_argument("--smoke", action="store_true", help="bundled sample, tiny sizes, a few steps, every kind")
    p.add_argument("--scale", choices=sorted(SCALES), default=None,
                   help="the protocol at another model size (SCALES; wide: d=576, 6+6 layers, for a GPU), with runs and "
                        "results of its own in <pair>-<scale>/")
    args = p.parse_args(argv)
    if args.zoo_steps is not None and not args.publish:
        p.error("--zoo_steps trains the model --publish publishes: give --publish too")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    for key in ("searches", "seeds", "random", "max_steps"):
        value = getattr(args, key)
        if value is not None and value < (1 if key in ("seeds", "max_steps") else 0):
            p.error(f"--{key} must be >= {1 if key in ('seeds', 'max_steps') else 0}")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    args = parse_args(argv)
    args.dry_run = args.dry_run or args.status  # --status writes nothing either
    protocol = Protocol(args)
    if args.status:
        rows = protocol.status()
        print("\n".join(f"{r['run']:<24} {r['state']}" for r in rows))
        from search_quality_report import load_runs

        per_update = [r["cpu_seconds"] / r["updates"] for r in load_runs(protocol.results)[0]
                      if r.get("device", "").startswith("CPU")]
        left = sum(r["updates_left"] for r in rows if r["kind"] == "training")
        if per_update and left:
            rate = statistics.median(per_update)
            print(f"{left} training updates left: about {left * rate / 3600:.1f} CPU-hours at the {rate:.2f} "
                  "CPU-seconds per update of this pair's finished CPU trainings")
        return 0
    if not (protocol.data / f"{protocol.splits['train']}.{protocol.src}.gz").is_file() and not any(
        protocol.data.glob(f"{protocol.splits['train']}.{protocol.src}*")
    ):
        raise SystemExit(f"no {protocol.splits['train']}.{protocol.src}[.gz] in {protocol.data}; give --data")
    summary = protocol.execute()
    if summary is not None:
        print(Path(protocol.results / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
