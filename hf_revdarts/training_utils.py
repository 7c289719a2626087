"""What the search and training loops share: atomic files, resumable checkpoints, run set-up, one
gradient-accumulation idiom, loss evaluation and a clean multi-process exit.

Every file or folder a run produces is written under a temporary name in the same folder and renamed into
place, so a run killed at any moment leaves the previous version (or nothing), never half a file.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# transformers.get_inverse_sqrt_schedule starts at lr 0 (the first step would not train) and decays over a
# separate timescale; ours reaches peak/warmup at step 1 and decays as sqrt(warmup/step). One definition,
# beside the DARTS optimisers; re-exported here for the training loop.
from .search.architect import inverse_sqrt_schedule

__all__ = [
    "TrainState",
    "atomic_folder",
    "atomic_savefig",
    "atomic_write_json",
    "atomic_write_text",
    "backward_micro_batches",
    "batch_stream",
    "evaluate_loss",
    "find_checkpoint",
    "inverse_sqrt_schedule",
    "load_checkpoint",
    "load_split",
    "next_batches",
    "prepare_tokenizer",
    "remove_stale_temporaries",
    "run_steps",
    "save_checkpoint",
    "shutdown",
    "start_run",
    "unscaled_backward",
]

Batch = dict[str, torch.Tensor]


# ---------------------------------------------------------------- atomic files ------------------------------
def atomic_write_text(path: str | os.PathLike, text: str) -> None:
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


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def atomic_savefig(fig: Any, path: str | os.PathLike) -> None:
    """``fig.savefig`` through a temporary file, then rename."""
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
def atomic_folder(final: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
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


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Drop ``.tmp-*`` leftovers of a run killed mid-write (the finished versions are untouched)."""
    for stale in Path(folder).glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


# ---------------------------------------------------------------- checkpoints -------------------------------
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


def find_checkpoint(output_dir: str | os.PathLike, spec: str) -> Path:
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


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike, state: TrainState, limit: int) -> None:
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


def load_checkpoint(accelerator: Any, state: TrainState, path: Path, logger: Any) -> None:
    """Restore model, optimisers, registered scheduler, RNG (``load_state``) and the loop state."""
    accelerator.load_state(str(path))
    state.load_state_dict(json.loads((path / "train_state.json").read_text()))
    logger.info(f"resumed from {path} at step {state.step}", main_process_only=True)


# ---------------------------------------------------------------- run set-up --------------------------------
def start_run(
    output_dir: Path,
    seed: int,
    num_threads: int = 0,
    mixed_precision: str | None = None,
    gradient_accumulation_steps: int = 1,
) -> Any:
    """The ``Accelerator`` of a search or training run (TensorBoard logs in ``output_dir/logs``), with torch
    threads set (0: the machine's cores shared by the processes), the seed set, and ``output_dir`` created
    and cleared of a killed run's temporaries."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    torch.set_num_threads(num_threads or max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    set_seed(seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)
    accelerator.wait_for_everyone()
    return accelerator


def prepare_tokenizer(
    accelerator: Any, folder: Path, source: Path | None, texts: Sequence[str], vocab_size: int
) -> Any:
    """The run's tokenizer, kept in ``folder`` so that a resumed run sees the same ids.

    The main process writes it once: copied from ``source`` (a tokenizer folder) when given, else a BPE
    trained on ``texts``. Every process then loads it from ``folder``.
    """
    from transformers import PreTrainedTokenizerFast

    from .data import get_tokenizer
    from .tokenization import save_tokenizer

    if accelerator.is_main_process and not (folder / "tokenizer.json").is_file():
        if source is not None:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(source))
        else:
            tokenizer = get_tokenizer(texts, vocab_size)
        with atomic_folder(folder) as tmp:
            save_tokenizer(tokenizer, tmp)
    accelerator.wait_for_everyone()
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def load_split(dataset_args: Any, split: str, max_examples: int | None) -> tuple[list[str], list[str]]:
    """Source and target sentences of one split of ``--dataset`` (see ``data.load_parallel_text``)."""
    from .data import load_parallel_text

    a = dataset_args
    return load_parallel_text(a.dataset, a.src_lang, a.tgt_lang, split, a.dataset_config, max_examples)


def batch_stream(
    tokenizer: Any, pairs: tuple[list[str], list[str]], data_args: Any, seed: int, accelerator: Any, shuffle: bool = True
) -> Any:
    """This process's endless ``BatchStream`` over the tokenised ``pairs`` (``--max_length``, ``--max_tokens``)."""
    from .data import BatchStream, tokenize_pairs

    examples = tokenize_pairs(tokenizer, pairs[0], pairs[1], data_args.max_length)
    rank, world = accelerator.process_index, accelerator.num_processes
    return BatchStream(
        examples, data_args.max_tokens, seed, rank, world, shuffle=shuffle, pad_id=tokenizer.pad_token_id
    )


# ---------------------------------------------------------------- steps -------------------------------------
def next_batches(stream: Any, count: int, device: torch.device) -> list[Batch]:
    """The next ``count`` micro-batches of a ``BatchStream``, on ``device``."""
    return [{k: v.to(device) for k, v in stream.next().items()} for _ in range(count)]


def backward_micro_batches(accelerator: Any, model: Any, batches: Sequence[Batch]) -> tuple[float, int]:
    """Forward and backward over the micro-batches of one optimiser step (accelerate's ``accumulate``: the
    gradient all-reduce runs on the last one only, each loss is divided by their number). Returns the mean
    loss and the number of target tokens."""
    loss_sum, tokens = 0.0, 0
    for batch in batches:
        tokens += int((batch["labels"] != -100).sum())
        with accelerator.accumulate(model), accelerator.autocast():
            loss = model(**batch).loss
            accelerator.backward(loss)
        loss_sum += float(loss.detach()) / len(batches)
    return loss_sum, tokens


def unscaled_backward(accelerator: Any) -> Any:
    """``accelerator.backward`` without its division by ``gradient_accumulation_steps``, for a loss that is
    already a mean over its own micro-batches (the architect's α step)."""

    def backward(loss: torch.Tensor) -> None:
        steps = accelerator.gradient_accumulation_steps
        accelerator.gradient_accumulation_steps = 1
        try:
            accelerator.backward(loss)
        finally:
            accelerator.gradient_accumulation_steps = steps

    return backward


def run_steps(
    accelerator: Any,
    state: TrainState,
    run_args: Any,
    output_dir: Path,
    step: Callable[[], dict[str, float]],
    evaluate: Callable[[], bool],
    desc: str,
) -> None:
    """The loop of a search or training run: ``step()`` (which advances ``state.step`` and returns what to
    log; it may set ``state.stopped_early``) until ``--max_steps`` or an early stop; ``evaluate()`` (True asks
    to stop) every ``--eval_every`` steps, at the end and on a stop; a checkpoint every ``--save_every``
    steps, at the end and on a stop."""
    from tqdm.auto import tqdm

    last = run_args.max_steps  # None: until step() stops the run (train.py's time budget)
    bar = tqdm(total=last, initial=state.step, disable=not accelerator.is_local_main_process, desc=desc)
    while (last is None or state.step < last) and not state.stopped_early:
        logs = step()
        bar.update(1)
        bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "lr"})
        accelerator.log(logs, step=state.step)
        if state.step % run_args.eval_every == 0 or state.step == last or state.stopped_early:
            state.stopped_early = evaluate() or state.stopped_early
        if state.step % run_args.save_every == 0 or state.step == last or state.stopped_early:
            save_checkpoint(accelerator, output_dir, state, run_args.checkpoints_total_limit)
    bar.close()


@torch.no_grad()
def evaluate_loss(model: Any, accelerator: Any, batches: list[Batch]) -> float:
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


def shutdown(accelerator: Any) -> None:
    """End a run: close the trackers and, with several processes, leave together and exit at once.

    Left to the interpreter's exit, DDP's reducer destroys the gloo process group while holding the GIL,
    and a gloo worker thread that is still releasing a finished collective waits for the GIL: a rank hangs
    forever after its work is done (seen here in about half of 2-process CPU runs). Everything is written
    and flushed by now, so the processes leave with ``os._exit`` once all of them got here.
    """
    accelerator.end_training()
    if accelerator.num_processes > 1:
        # accelerate's end_training may already have destroyed the group; the reducer still holds it.
        if torch.distributed.is_initialized():
            accelerator.wait_for_everyone()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
