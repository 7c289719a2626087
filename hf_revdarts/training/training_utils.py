"""What the search and training loops share: atomic files (from ``atomic``), resumable checkpoints, run
set-up, non-finite guards, one gradient-accumulation idiom, loss evaluation and a clean multi-process exit.

Every file or folder a run produces is written under a temporary name in the same folder and renamed into
place, so a run killed at any moment leaves the previous version (or nothing), never half a file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..memory import StepMemoryMeter
from ..utils.atomic import (
    atomic_folder,
    atomic_savefig,
    atomic_write_json,
    atomic_write_text,
    give_umask_modes,
    remove_stale_temporaries,
)
from ..utils.guards import NonFiniteError, NonFiniteGuard, finite_json_dumps, non_finite_tensors
from ..utils.integrity import CheckpointError, complete_checkpoints, load_state_checked, verify_checkpoint
from ..utils.schedules import inverse_sqrt_schedule
from .flag_checks import check_launch, threads_per_process
from .run_folder import LOCK_NAME, check_replaceable, claim_output_dir, probe_lock, release_output_dir

logger = logging.getLogger(__name__)

__all__ = [
    "TrainState",
    "atomic_folder",
    "atomic_savefig",
    "atomic_write_json",
    "atomic_write_text",
    "backward_micro_batches",
    "batch_stream",
    "check_finite_weights",
    "check_output_dir",
    "evaluate_loss",
    "find_checkpoint",
    "finite_or_none",
    "guard_allows_step",
    "inverse_sqrt_schedule",
    "load_checkpoint",
    "load_split",
    "next_batches",
    "non_finite_guard",
    "prepare_tokenizer",
    "remove_stale_temporaries",
    "run_steps",
    "save_checkpoint",
    "shutdown",
    "start_run",
    "unscaled_backward",
]

Batch = dict[str, torch.Tensor]


# ---------------------------------------------------------------- checkpoints -------------------------------
class TrainState:
    """Everything of a loop that a checkpoint must restore besides model/optimisers/scheduler/RNG.

    ``guards`` are the run's ``NonFiniteGuard``s by name: a resumed run goes on counting skipped steps."""

    def __init__(self, streams: dict[str, Any], guards: dict[str, NonFiniteGuard] | None = None) -> None:
        self.step = 0
        self.streams = streams
        self.guards = guards or {}
        self.history: list[dict[str, Any]] = []
        self.stopped_early = False
        self.best: dict[str, Any] = {}
        self.train_seconds = 0.0
        self.loss_reference: dict[str, Any] = {}  # the first loss, what divergence is measured against
        self.batch_shape: tuple[int, int, int] | None = None  # of the last step, for its memory report (not saved)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "streams": {k: s.state_dict() for k, s in self.streams.items()},
            "history": self.history,
            "stopped_early": self.stopped_early,
            "best": self.best,
            "train_seconds": self.train_seconds,
            "non_finite": {k: g.state_dict() for k, g in self.guards.items()},
            "loss_reference": self.loss_reference,
            "examples": {k: len(s.examples) for k, s in self.streams.items() if hasattr(s, "examples")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, n in state.get("examples", {}).items():
            # Other data would silently give other batches: the resumed run would no longer be the same run.
            now = len(getattr(self.streams.get(k), "examples", ()))
            if k in self.streams and now != n:
                raise ValueError(
                    f"it was written with {n} {k} examples, this run has {now}: resume with the same --dataset, "
                    "splits and --max_*_examples"
                )
        self.step = int(state["step"])
        for k, s in self.streams.items():
            s.load_state_dict(state["streams"][k])
        self.history = list(state["history"])
        self.stopped_early = bool(state.get("stopped_early", False))
        self.best = dict(state.get("best", {}))
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.loss_reference = dict(state.get("loss_reference", {}))
        for k, g in self.guards.items():
            g.load_state_dict(state.get("non_finite", {}).get(k, {}))

    def skipped_steps(self) -> dict[str, Any]:
        """What the summary reports of the steps skipped for NaN/inf: counts and the last few step numbers."""
        return {k: g.state_dict() for k, g in self.guards.items()}


def non_finite_guard(accelerator: Any, max_skipped: int, name: str) -> NonFiniteGuard:
    """A ``NonFiniteGuard`` whose decision is the same on every process (a NaN anywhere skips the step)."""
    sync = (lambda t: accelerator.reduce(t, reduction="sum")) if accelerator.num_processes > 1 else None
    return NonFiniteGuard(max_skipped, sync=sync, name=name)


def guard_allows_step(
    accelerator: Any, guard: NonFiniteGuard, step: int, loss: float, grad_norm: Any, parameters: Any
) -> bool:
    """Whether to call ``optimizer.step()``: the guard's decision on the loss and the gradient norm (the one
    ``clip_grad_norm_`` returned, else computed from ``parameters``). Under fp16 the grad scaler skips
    overflowing steps itself and lowers its scale, so only the loss is checked there."""
    if getattr(accelerator, "scaler", None) is not None:
        return guard.check(step, loss, grad_norm=0.0)
    return guard.check(step, loss, grad_norm=grad_norm, parameters=parameters)


def finite_or_none(value: float, what: str, step: int) -> float | None:
    """``value``, or ``None`` (JSON null) with a warning when it is NaN/inf: a metric the JSON can hold."""
    if math.isfinite(value):
        return value
    logger.warning("step %d: %s is %s (the weights are finite, the model's outputs overflow)", step, what, value)
    return None


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, resume: str | None, kind: str = "train") -> None:
    """Refuse to mix two runs in one folder: a non-empty ``--output_dir`` needs ``--overwrite_output_dir``
    (it is then cleared by ``start_run``, if it holds nothing but a previous run of ``kind``: see ``run_folder``)
    or ``--resume_from_checkpoint`` (transformers' Trainer convention); a folder another run holds is refused."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file, not a folder")
    probe_lock(output_dir)
    if overwrite:
        check_replaceable(output_dir, kind, "--overwrite_output_dir")
    if resume or overwrite or not output_dir.is_dir():
        return
    entries = sorted(p.name for p in output_dir.iterdir() if p.name != LOCK_NAME)  # a lock alone holds no run
    if entries:
        shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
        raise FileExistsError(
            f"--output_dir {output_dir} is not empty (it holds {shown}): a new run there would mix with the old one. "
            "Pass --resume_from_checkpoint latest to continue that run, --overwrite_output_dir to delete it and "
            "start again, or give another --output_dir"
        )


def find_checkpoint(output_dir: str | os.PathLike, spec: str, max_steps: int | None = None) -> Path:
    """``latest`` (the newest complete ``checkpoint-*`` in output_dir) or an explicit checkpoint folder, with
    every file of it checked (``verify_checkpoint``) before any work, and its step not past ``max_steps``."""
    if spec != "latest":
        path = Path(spec)
        if not (path / "train_state.json").is_file():
            raise FileNotFoundError(f"{spec} is not a complete checkpoint folder (no train_state.json)")
    else:
        found = complete_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no checkpoint-* folder in {output_dir}")
        path = found[-1]
    verify_checkpoint(path)
    step = json.loads((path / "train_state.json").read_text(encoding="utf-8")).get("step")
    if max_steps is not None and isinstance(step, int) and step > max_steps:
        raise ValueError(
            f"{path} is at step {step}, past --max_steps {max_steps}: give the run's --max_steps (or more) to resume it"
        )
    return path


def warmup_checkpoint(spec: str, arch_start_step: int) -> Path:
    """The θ warm-up --warmup_from names (a checkpoint folder, or a search folder whose ``warmup/`` holds one),
    checked whole and ending at this run's --arch_start_step."""
    path = Path(spec)
    if not (path / "train_state.json").is_file():
        kept = complete_checkpoints(path / "warmup")
        if not kept:
            raise FileNotFoundError(f"--warmup_from {spec}: neither a checkpoint folder nor a search folder with "
                                    "a warmup/checkpoint-* (searches with --arch_start_step > 0 keep one)")
        path = kept[-1]
    path = find_checkpoint(path.parent, str(path))
    step = json.loads((path / "train_state.json").read_text(encoding="utf-8"))["step"]
    if step != arch_start_step:
        raise ValueError(f"--warmup_from {spec}: its warm-up ends at step {step}, this run's α phase starts at "
                         f"--arch_start_step {arch_start_step}; give the warm-up's value")
    return path


def warmup_origin(path: Path) -> dict[str, Any]:
    """What the search summary says of a shared warm-up: its checkpoint and, where it was timed, its seconds."""
    seconds = json.loads((path / "train_state.json").read_text(encoding="utf-8")).get("train_seconds")
    return {"warmup_from": str(path), **({"warmup_seconds": float(seconds)} if seconds else {})}


class _SharedTensorNote(logging.Filter):
    # safetensors cannot hold one tensor twice, so accelerate drops the tied copies (lm_head = embedding, the
    # α of tied layers) and says so at every checkpoint; load_state ties them again.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_SharedTensorNote())


def save_checkpoint(accelerator: Any, output_dir: str | os.PathLike, state: TrainState, limit: int) -> Path:
    """``save_state`` (safetensors) into a temporary folder, then rename: a kill mid-save leaves only a .tmp
    folder behind. Returns the checkpoint folder."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{state.step:06d}"
    tmp = output_dir / f".tmp-checkpoint-{state.step:06d}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # The loop state is written last: its presence marks a complete checkpoint.
        (tmp / "train_state.json").write_text(finite_json_dumps(state.state_dict(), where=str(tmp / "train_state.json")))
        give_umask_modes(tmp)  # safetensors writes 0600: a colleague could not resume from it
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(output_dir.glob("checkpoint-*"))[:-limit] if limit > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    for guard in state.guards.values():
        guard.last_good_checkpoint = str(final)
    return final


def load_checkpoint(accelerator: Any, state: TrainState, path: Path, logger: Any) -> None:
    """Restore model, optimisers, registered scheduler, RNG (``load_state``) and the loop state; a damaged or
    foreign checkpoint is a ``CheckpointError`` naming the file and the previous checkpoint."""
    load_state_checked(accelerator, path)
    state_file = path / "train_state.json"
    try:
        state.load_state_dict(json.loads(state_file.read_text(encoding="utf-8")))
    except ValueError as e:
        raise CheckpointError(f"cannot resume from {state_file}: {e}") from e
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"cannot resume from {state_file}: it does not hold the loop state of this run ({type(e).__name__}: {e})"
        ) from e
    for guard in state.guards.values():
        guard.last_good_checkpoint = str(path)
    logger.info(f"resumed from {path} at step {state.step}", main_process_only=True)


def check_finite_weights(model: Any, state: TrainState) -> None:
    """Raise ``NonFiniteError`` when the weights hold NaN/inf, before they are evaluated, kept as best or
    checkpointed (a NaN checkpoint would also push the good ones out of ``--checkpoints_total_limit``)."""
    bad = non_finite_tensors(model)
    if bad:
        last = next((g.last_good_checkpoint for g in state.guards.values() if g.last_good_checkpoint), None)
        raise NonFiniteError(
            f"step {state.step}: {len(bad)} weight tensors hold NaN/inf ({', '.join(bad[:5])}); nothing of this state "
            f"is saved. The last good checkpoint is {last or 'none (no checkpoint was saved)'}: resume from it "
            "with a lower learning rate or more warm-up"
        )


# ---------------------------------------------------------------- run set-up --------------------------------
def start_run(
    output_dir: Path,
    seed: int,
    num_threads: int = 0,
    mixed_precision: str | None = None,
    gradient_accumulation_steps: int = 1,
    overwrite_output_dir: bool = False,
    kind: str = "train",
) -> Any:
    """The ``Accelerator`` of a search or training run (TensorBoard logs in ``output_dir/logs``), with torch
    threads set (0: the machine's cores shared by the processes), the seed set, and ``output_dir`` created and
    held by this run (emptied first of the previous run of ``kind`` with ``overwrite_output_dir``) and cleared
    of a killed run's temporaries."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    check_launch(accelerator.num_processes)  # --cpu --num_processes N: one process where N were asked for
    torch.set_num_threads(threads_per_process(num_threads, accelerator.num_processes))
    set_seed(seed)
    claim_output_dir(accelerator, output_dir, kind, overwrite_output_dir)
    if accelerator.is_main_process:
        remove_stale_temporaries(output_dir)
    accelerator.wait_for_everyone()
    return accelerator


def run_environment(accelerator: Any) -> dict[str, Any]:
    """Where a run computes and in which precision, for its summary and log: figures from different machines
    or precisions are not comparable without it."""
    device = accelerator.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"processes": accelerator.num_processes, "device": name, "mixed_precision": accelerator.mixed_precision,
            "torch_threads": torch.get_num_threads()}


def prepare_tokenizer(
    accelerator: Any,
    folder: Path,
    source: Path | None,
    texts: Sequence[str],
    vocab_size: int,
    resumed_from: Path | None = None,
) -> Any:
    """The run's tokenizer, kept in ``folder`` so that a resumed run sees the same ids.

    The main process writes it once: copied from the resumed checkpoint's run (``resumed_from``, a checkpoint
    of another output folder: its model knows those ids only), else from ``source`` (a tokenizer folder) when
    given, else a BPE trained on ``texts``. Every process then loads it from ``folder``.
    """
    from .data import get_tokenizer
    from .tokenization import load_tokenizer, save_tokenizer

    if resumed_from is not None and (resumed_from.parent / "tokenizer" / "tokenizer.json").is_file():
        source = resumed_from.parent / "tokenizer"
    if accelerator.is_main_process and not (folder / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(source) if source is not None else get_tokenizer(texts, vocab_size)
        with atomic_folder(folder) as tmp:
            save_tokenizer(tokenizer, tmp)
    accelerator.wait_for_everyone()
    return load_tokenizer(folder)


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


def largest_batch_shape(batches: Sequence[Batch]) -> tuple[int, int, int]:
    """(rows, source length, target length) of the micro-batch with the most padded tokens: the one whose
    activations set a step's memory peak (micro-batches run one after another)."""
    shapes = [(b["input_ids"].shape[0], b["input_ids"].shape[1], b["labels"].shape[1]) for b in batches]
    return max(shapes, key=lambda s: s[0] * (s[1] + s[2]))


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
    model: Any = None,
    memory_report: Callable[[StepMemoryMeter], str] | None = None,
) -> None:
    """The loop of a search or training run: ``step()`` (which advances ``state.step`` and returns what to
    log; it may set ``state.stopped_early``) until ``--max_steps`` or an early stop; ``evaluate()`` (True asks
    to stop) every ``--eval_every`` steps, at the end and on a stop; a checkpoint every ``--save_every``
    steps, at the end and on a stop. With ``model``, its weights are checked for NaN/inf before each
    evaluation and checkpoint (``check_finite_weights``). With ``memory_report``, this process's second step
    (the first with optimizer state, as every later one) is measured and ``memory_report(meter)`` is logged."""
    from tqdm.auto import tqdm

    last = run_args.max_steps  # None: until step() stops the run (train.py's time budget)
    steps_here = 0
    # closed also when a step raises (NonFiniteError): the bar ends before the traceback, not at exit
    with tqdm(total=last, initial=state.step, disable=not accelerator.is_local_main_process, desc=desc) as bar:
        while (last is None or state.step < last) and not state.stopped_early:
            steps_here += 1
            if memory_report is not None and steps_here == 2:
                with StepMemoryMeter(accelerator.device) as meter:
                    logs = step()
                if accelerator.is_main_process:
                    logger.info(memory_report(meter))
            else:
                logs = step()
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "lr"})
            accelerator.log(logs, step=state.step)
            evaluating = state.step % run_args.eval_every == 0 or state.step == last or state.stopped_early
            saving = state.step % run_args.save_every == 0 or state.step == last or state.stopped_early
            if model is not None and (evaluating or saving):
                check_finite_weights(model, state)
            if evaluating:
                state.stopped_early = evaluate() or state.stopped_early
            if saving or state.stopped_early:
                save_checkpoint(accelerator, output_dir, state, run_args.checkpoints_total_limit)


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
    if accelerator.is_main_process:
        release_output_dir(accelerator.project_configuration.project_dir)
    if accelerator.num_processes > 1:
        # accelerate's end_training may already have destroyed the group; the reducer still holds it.
        if torch.distributed.is_initialized():
            accelerator.wait_for_everyone()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
