"""What the training scripts share: atomic writes, resumable checkpoints, loss evaluation, data set-up.

Every file or folder a script produces is written under a temporary name in the same folder and renamed
into place, so a run killed at any moment leaves the previous version (or nothing), never half a file.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "samples" / "en-de"
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and ``os.replace``: readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def atomic_savefig(fig: Any, path: Path) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(final: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``final`` in two renames.

    On any error the temporary folder is removed and ``final`` is untouched. Between the two renames the
    old version still exists under ``.old-<name>``, so even a kill there loses nothing.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists() and not overwrite and any(final.iterdir()):
        raise FileExistsError(f"{final} exists and is not empty; pass --overwrite to replace it")
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".tmp-{final.name}-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Drop ``.tmp-*`` leftovers of a run killed mid-write (the finished versions are untouched)."""
    for stale in Path(folder).glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


class TrainState:
    """Everything of a loop that a checkpoint must restore besides model/optimisers/scheduler/RNG."""

    def __init__(self, streams: dict[str, Any]) -> None:
        self.step = 0
        self.streams = streams
        self.history: list[dict[str, Any]] = []
        self.stopped_early = False
        self.best: dict[str, Any] = {}
        self.train_seconds = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "streams": {k: s.state_dict() for k, s in self.streams.items()},
            "history": self.history,
            "stopped_early": self.stopped_early,
            "best": self.best,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        for k, s in self.streams.items():
            s.load_state_dict(state["streams"][k])
        self.history = list(state["history"])
        self.stopped_early = bool(state.get("stopped_early", False))
        self.best = dict(state.get("best", {}))
        self.train_seconds = float(state.get("train_seconds", 0.0))


def find_checkpoint(output_dir: Path, spec: str) -> Path:
    """``latest`` (the newest complete ``checkpoint-*`` in output_dir) or an explicit checkpoint folder."""
    if spec != "latest":
        path = Path(spec)
        if not (path / "train_state.json").is_file():
            raise FileNotFoundError(f"{spec} is not a complete checkpoint folder (no train_state.json)")
        return path
    found = [c for c in sorted(Path(output_dir).glob("checkpoint-*")) if (c / "train_state.json").is_file()]
    if not found:
        raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint-* folder in {output_dir}")
    return found[-1]


def save_checkpoint(accelerator: Any, output_dir: Path, state: TrainState, limit: int) -> None:
    """``save_state`` into a temporary folder, then rename: a kill mid-save leaves only a .tmp folder behind."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{state.step:06d}"
    tmp = output_dir / f".tmp-checkpoint-{state.step:06d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # The loop state is written last: its presence marks a complete checkpoint.
        (tmp / "train_state.json").write_text(json.dumps(state.state_dict()))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(output_dir.glob("checkpoint-*"))[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate_loss(model: Any, accelerator: Any, batches: list[dict[str, torch.Tensor]]) -> float:
    """Token-weighted mean loss over this rank's batches, summed over ranks (label smoothing included)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    for batch in batches:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        n = (batch["labels"] != -100).sum()
        with accelerator.autocast():
            total[0] += model(**batch).loss.double() * n
        total[1] += n
    model.train(was_training)
    total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / total[1].clamp_min(1))


@torch.no_grad()
def translate(
    model: Any,
    tokenizer: Any,
    sentences: list[str],
    num_beams: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    max_source_length: int = 128,
    progress: bool = False,
) -> list[str]:
    """Translate with ``generate`` (cached decoding), batches sorted by length so padding stays small."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out: list[str] = [""] * len(sentences)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="translate", disable=not progress):
        idx = order[start : start + batch_size]
        enc = tokenizer(
            [sentences[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
            max_length=max_source_length,
        ).to(device)
        gen = model.generate(**enc, num_beams=num_beams, max_new_tokens=max_new_tokens)
        for i, text in zip(idx, tokenizer.batch_decode(gen, skip_special_tokens=True)):
            out[i] = text.strip()
    model.train(was_training)
    return out


def bleu_and_chrf(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """sacreBLEU BLEU and chrF with their signatures (the ``sacrebleu`` library: no Hub download)."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(hypotheses, [references])
    c = chrf.corpus_score(hypotheses, [references])
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_detail": str(b),
        "sentences": len(hypotheses),
    }


def shutdown(accelerator: Any) -> None:
    """End a multi-process run together and exit at once.

    Left to the interpreter's exit, DDP's reducer destroys the gloo process group while holding the GIL,
    and a gloo worker thread that is still releasing a finished collective waits for the GIL: a rank hangs
    forever after its work is done (seen here in about half of 2-process CPU runs). Everything is written
    and flushed by now, so the processes leave with ``os._exit`` once all of them got here.
    """
    if accelerator.num_processes > 1:
        # accelerate's end_training may already have destroyed the group; the reducer still holds it.
        if torch.distributed.is_initialized():
            accelerator.wait_for_everyone()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
