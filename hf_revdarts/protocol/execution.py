"""Running a protocol's runs: the machine a run uses, runs side by side (``Jobs``), a script run as a logged
subprocess with its wall and CPU time, the pair's joint tokenizer, and the records of finished runs made from
the scripts' outputs."""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from ..model.genotype import Genotype
from ..utils.atomic import atomic_folder, atomic_write_json
from ..utils.integrity import complete_checkpoints
from .record import RunRecord

logger = logging.getLogger(__name__)
TIMING_NOTE = ("wall/CPU seconds of every stage over every sitting, a stage stopped midway included (not one whose "
               "runner was killed with it)")


def machine() -> str:
    """The machine the runs use: the GPU's name, else the CPU count (wall times only compare on one machine)."""
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {os.cpu_count()} cores"


def machine_kind() -> str:
    """``gpu`` or ``cpu``: the suffix of a replica's name."""
    return "gpu" if machine().startswith("GPU") else "cpu"


class Jobs:
    """Runs of a protocol, up to ``n`` at once (``--jobs``; 1: one after another, in submission order). ``join``
    waits for every job, then raises the first failure: one failed run does not stop the others, whose results
    are kept for the next sitting."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pool = ThreadPoolExecutor(max_workers=n) if n > 1 else None  # joined once per phase, then reused
        self.futures: list[Future] = []
        self.lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
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


def add_seconds(timing: dict[str, Any], stage: str, wall: float, cpu: float) -> None:
    """Add wall and CPU seconds to ``timing[stage]``, the sum over every time the stage ran."""
    t = timing.setdefault(stage, {"wall_seconds": 0.0, "cpu_seconds": 0.0})
    t["wall_seconds"] = round(t["wall_seconds"] + wall, 1)
    t["cpu_seconds"] = round(t["cpu_seconds"] + cpu, 1)


def run_logged(command: list[str], shown: str, log: Path, cwd: Path, env: dict[str, str], stage: str,
               timing: dict[str, Any]) -> None:
    """Run ``command`` with its output appended to ``log``; add its wall and CPU seconds to ``timing[stage]``, also
    when it fails or is stopped, which then raises with the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n### {time.strftime('%F %T')} {shown}\n")
        f.flush()
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
        # This child's own CPU time: RUSAGE_CHILDREN would also count runs of other --jobs finishing meanwhile.
        _, status, usage = os.wait4(proc.pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
    # A stage stopped midway counts too: its checkpoints are what the next sitting resumes from.
    add_seconds(timing, stage, time.time() - start, usage.ru_utime + usage.ru_stime)
    if returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{stage} failed (exit {returncode}); log {log}:\n{tail}")


def run_script(repo: Path, script: str, flags: list[str], log: Path, timing: dict[str, Any], stage: str,
               dry_run: bool = False) -> str:
    """Run ``training/<script>`` of ``repo`` with ``flags`` (``run_logged``; the repository's package first on the
    path), its command added to ``timing["commands"]``. Returns the command as shown; a dry run only returns it."""
    shown = " ".join(shlex.quote(c) for c in ["python", f"training/{script}", *flags])
    timing.setdefault("commands", []).append(shown)
    if dry_run:
        return shown
    logger.info("%s: %s", stage, shown)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    run_logged([sys.executable, str(repo / "training" / script), *flags], shown, log, repo, env, stage, timing)
    return shown


def timing_fields(timing: dict[str, Any]) -> dict[str, Any]:
    """The record fields of a run's timing (its stages' seconds and commands over every sitting): the device
    it ran on (this machine unless a sitting elsewhere recorded its own), the summed seconds, the commands."""
    stages = {k: v for k, v in timing.items() if isinstance(v, dict) and "wall_seconds" in v}
    return {
        "device": timing.get("device") or machine(),
        "wall_seconds": round(sum(v["wall_seconds"] for v in stages.values()), 1),
        "cpu_seconds": round(sum(v.get("cpu_seconds", 0.0) for v in stages.values()), 1),
        "stages": stages, "timing_note": TIMING_NOTE, "commands": timing.get("commands", []),
    }


def training_record(name: str, kind: str, pair: str, seed: int, meta: dict[str, Any], summary: dict[str, Any],
                    test: dict[str, Any], test_model: str, hypotheses: str, dataset: str, work_dir: str,
                    timing: dict[str, Any]) -> RunRecord:
    """The record of a finished training run from train.py's ``train_summary.json`` (``summary``) and
    evaluate.py's scores (``test``); ``meta``: the fields of its kind (a searched run's search, a random run's
    draw, a replica's original, a zoo run's continued run)."""
    averaged = summary.get("averaged") or {}
    return RunRecord(
        run=name, kind=kind, pair=pair, train_seed=seed, **meta, genotype=Genotype.from_dict(summary["genotype"]),
        parameters=summary["parameters"], updates=summary["steps"], train_seconds=summary["train_seconds"],
        val_best=summary.get("best"),
        val_history=[{k: h.get(k) for k in ("step", "val_loss", "bleu")} for h in summary.get("history", [])],
        val_averaged={k: averaged.get(k) for k in ("steps", "val_loss", "bleu")},
        test={"split": test.get("split"), "model": test_model, "averaged_steps": averaged.get("steps"),
              "num_beams": test.get("num_beams"), "length_penalty": test.get("length_penalty"),
              **{k: test[k] for k in ("bleu", "bleu_signature", "bleu_lowercase", "bleu_lowercase_signature")},
              "chrf": test.get("chrf"), "chrf_signature": test.get("chrf_signature"),
              "sentences": len(test["hypotheses"]), "hypotheses": hypotheses,
              **({"decoding": test["decoding"]} if test.get("decoding") else {})},
        dataset=dataset, work_dir=work_dir, **timing_fields(timing))


def restart_flags(out: Path) -> list[str]:
    """A script's flags to go on in run folder ``out``: from its latest checkpoint; a run that died before its first
    one left a non-empty folder, which the scripts refuse without --overwrite_output_dir (it clears the folder)."""
    if complete_checkpoints(out):
        return ["--resume_from_checkpoint", "latest"]
    return ["--overwrite_output_dir"] if out.is_dir() and any(out.iterdir()) else []


# What a trained model is measured with: each stage and its script (its commands start "python training/<script> ").
EVALUATION_STAGES = {"tune": "tune_decoding.py", "evaluate": "evaluate.py"}


def set_aside_evaluation(out: Path, record: Path) -> Path:
    """Before the finished run of folder ``out`` trains further (a zoo run taken to a larger ``--zoo_steps``): move
    what was measured of its model so far to ``<out>.at-<updates>/`` -- its ``record``, test scores, tuned decoding,
    train summary, and its timing's tuning and test stages with their commands -- so that the longer run is tuned and
    tested afresh and the earlier figures are kept. The record goes last: until then the run still reads as done, and
    a sitting killed midway sets the rest aside when it starts again."""
    updates = RunRecord.load(record).updates
    kept = out.parent / f"{out.name}.at-{updates}"
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("eval_test.json", "decoding.json", "train_summary.json"):
        if (out / name).is_file():
            os.replace(out / name, kept / name)
    timing_path = out.parent / f"{out.name}.timing.json"
    timing = json.loads(timing_path.read_text(encoding="utf-8")) if timing_path.is_file() else {}
    measured = {stage: timing.pop(stage) for stage in EVALUATION_STAGES if stage in timing}
    scripts = tuple(f"python training/{script} " for script in EVALUATION_STAGES.values())
    commands = timing.get("commands", [])
    if measured:  # the commands of the training sittings stay: the longer run continues them
        measured["commands"] = [c for c in commands if c.startswith(scripts)]
        timing["commands"] = [c for c in commands if not c.startswith(scripts)]
        atomic_write_json(kept / "timing.json", measured)
        atomic_write_json(timing_path, timing)
    os.replace(record, kept / "record.json")
    logger.info("%s: the model of %d updates and its figures set aside in %s", out.name, updates, kept)
    return kept


def joint_tokenizer(folder: Path, data: Path, src: str, tgt: str, split: str, vocab_size: int) -> Path:
    """One joint BPE tokenizer for a pair, trained on both sides of ``split``, shared by every run of the pair."""
    if not (folder / "tokenizer.json").is_file():
        from ..training.data import get_tokenizer, load_parallel_text
        from ..training.tokenization import save_tokenizer

        sources, targets = load_parallel_text(data, src, tgt, split)
        with atomic_folder(folder) as tmp:
            save_tokenizer(get_tokenizer(sources + targets, vocab_size), tmp)
    return folder


def search_record(name: str, pair: str, seed: int, variant: str | None, variant_flags: dict[str, Any], out: Path,
                  work_dir: str, timing: dict[str, Any]) -> RunRecord:
    """The record of a finished search from its folder ``out`` (search_summary.json, genotype.json, the final α of
    arch_parameters.json)."""
    summary = json.loads((out / "search_summary.json").read_text(encoding="utf-8"))
    alpha = out / "arch_parameters.json"
    return RunRecord(run=name, kind="search", pair=pair, seed=seed, search_variant=variant, variant_flags=variant_flags,
                     genotype=Genotype.load(out / "genotype.json"), search_steps=summary["steps"],
                     stopped_early=summary.get("stopped_early"), search_summary=summary,
                     arch_parameters=json.loads(alpha.read_text(encoding="utf-8")) if alpha.is_file() else None,
                     work_dir=work_dir,
                     **timing_fields(timing), note=timing.get("note"))
