"""Guards against non-finite numbers: skip bad optimizer steps, refuse to save or report NaN/inf.

A learning rate that is too large makes the loss NaN within a few steps; left alone, the optimizer writes
NaN into every weight, the run finishes "successfully" and its best model and summary are garbage. The
training and search loops use these pieces:

    guard = NonFiniteGuard(max_skipped=10, sync=lambda t: accelerator.reduce(t, reduction="sum"))
    ...
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)   # or grad_norm=None: computed here
        if guard.check(step, loss, grad_norm=norm, parameters=model.parameters()):
            optimizer.step()
        optimizer.zero_grad()
    ...
    guard.last_good_checkpoint = checkpoint_path          # after each checkpoint is saved
    assert_finite_state(model, "best model")              # before saving best/ or publishing
    path.write_text(finite_json_dumps(summary))           # JSON that never holds NaN/Infinity

``guard.state_dict()`` belongs in the checkpoint so that a resumed run counts on where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training produced, or was about to save, NaN/inf values."""


def _grad_norm(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    # One fused (foreach) pass; an inf or NaN anywhere makes the total inf or NaN.
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0, error_if_nonfinite=False)


class NonFiniteGuard:
    """Decides, once per optimizer step, whether the step may be taken.

    A step whose loss or gradient norm is NaN/inf is skipped (the caller does not call ``optimizer.step()``)
    and counted. Skipping leaves the weights as they were, so a rare overflow costs one batch; a run that
    has diverged keeps producing non-finite steps and stops with :class:`NonFiniteError` once more than
    ``max_skipped`` steps were skipped in total, naming the step, the loss and the last good checkpoint.

    Args:
        max_skipped: how many steps may be skipped over the whole run (0: stop at the first one).
        sync: sums a tensor over processes (e.g. ``lambda t: accelerator.reduce(t, reduction="sum")``).
            The loss is per process, so without it one rank could skip a step the others take; with it,
            every rank decides the same.
        name: what the steps update, for the messages (e.g. "the search's α step").
    """

    def __init__(
        self,
        max_skipped: int = 10,
        sync: Callable[[torch.Tensor], torch.Tensor] | None = None,
        name: str = "training",
    ) -> None:
        if not isinstance(max_skipped, int) or isinstance(max_skipped, bool) or max_skipped < 0:
            raise ValueError(f"max_skipped={max_skipped!r} must be an integer >= 0")
        self.max_skipped = max_skipped
        self.sync = sync
        self.name = name
        self.skipped = 0
        self.skipped_steps: list[int] = []  # the last few, for the error message and the summary
        self.last_good_checkpoint: str | None = None

    def check(
        self,
        step: int,
        loss: torch.Tensor | float,
        grad_norm: torch.Tensor | float | None = None,
        parameters: Iterable[torch.Tensor] | None = None,
    ) -> bool:
        """``True``: take the optimizer step. ``False``: skip it (counted). Raises :class:`NonFiniteError`
        when the skip would exceed ``max_skipped``.

        Call after backward with gradients already synchronised (accelerate/DDP) and unscaled (fp16); pass
        the norm ``clip_grad_norm_`` returned, or ``parameters`` to compute it here (one fused norm).
        """
        if grad_norm is None:
            grad_norm = _grad_norm(parameters) if parameters is not None else 0.0
        loss_t = torch.as_tensor(loss).detach().float().reshape(())
        norm_t = torch.as_tensor(grad_norm).detach().float().reshape(()).to(loss_t.device)
        bad = (~torch.isfinite(torch.stack([loss_t, norm_t]))).float()
        if self.sync is not None:
            bad = self.sync(bad)
        # One host sync for the decision and the values the message needs.
        bad_loss, bad_norm, loss_v, norm_v = torch.cat([bad.to(loss_t.device), loss_t[None], norm_t[None]]).tolist()
        if not (bad_loss or bad_norm):
            return True
        self.skipped += 1
        self.skipped_steps = (self.skipped_steps + [int(step)])[-20:]
        what = "loss" if bad_loss and not bad_norm else "gradient norm" if bad_norm and not bad_loss else "loss and gradient norm"
        if self.skipped > self.max_skipped:
            where = (
                f"the last good checkpoint is {self.last_good_checkpoint} (resume from it with a lower learning "
                "rate, or more warm-up)"
                if self.last_good_checkpoint
                else "no checkpoint was saved before it (start again with a lower learning rate, or more warm-up)"
            )
            raise NonFiniteError(
                f"{self.name} diverged: non-finite {what} at step {step} (loss={loss_v}, grad_norm={norm_v}); "
                f"{self.skipped} steps had NaN/inf, more than max_skipped={self.max_skipped} (skipped steps: "
                f"{self.skipped_steps}); {where}"
            )
        logger.warning(
            "%s, step %d: non-finite %s (loss=%s, grad_norm=%s); optimizer step skipped (%d of at most %d)",
            self.name, step, what, loss_v, norm_v, self.skipped, self.max_skipped,
        )
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "skipped_steps": list(self.skipped_steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.skipped_steps = [int(s) for s in state.get("skipped_steps", [])]


def _state_tensors(obj: Any) -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.nn.Module):
        items = list(obj.state_dict().items())
    elif isinstance(obj, Mapping):
        items = list(obj.items())
    else:
        raise TypeError(f"expected a torch.nn.Module or a state dict, got {type(obj).__name__}")
    return [(k, v) for k, v in items if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())]


def non_finite_tensors(model_or_state: torch.nn.Module | Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors (parameters and buffers) holding NaN or inf."""
    tensors = _state_tensors(model_or_state)
    if not tensors:
        return []
    flags = torch.stack([torch.isfinite(t).all().cpu() for _, t in tensors]).tolist()
    return [name for (name, _), ok in zip(tensors, flags) if not ok]


def is_finite_model(model_or_state: torch.nn.Module | Mapping[str, Any]) -> bool:
    """Whether every floating-point parameter and buffer is finite."""
    return not non_finite_tensors(model_or_state)


def assert_finite_state(model_or_state: torch.nn.Module | Mapping[str, Any], what: str = "model") -> None:
    """Raise :class:`NonFiniteError` naming the tensors that hold NaN/inf: call before saving ``best/``,
    publishing or pushing a model, so a diverged model is never kept as a result."""
    bad = non_finite_tensors(model_or_state)
    if bad:
        total = len(_state_tensors(model_or_state))
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        raise NonFiniteError(
            f"refusing to save the {what}: {len(bad)} of its {total} tensors hold NaN/inf ({shown}); training "
            "diverged before this point"
        )


def _non_finite_paths(obj: Any, path: str) -> list[str]:
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"{path} = {obj}"]
    if isinstance(obj, Mapping):
        return [p for k, v in obj.items() for p in _non_finite_paths(v, f"{path}.{k}" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_finite_paths(v, f"{path}[{i}]")]
    return []


def finite_json_dumps(obj: Any, where: str = "JSON output", **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN/inf (``allow_nan=False``: bare ``NaN`` is not JSON) with a ``ValueError``
    naming every offending key path, e.g. ``history[3].val_loss = nan``."""
    bad = _non_finite_paths(obj, "")
    if bad:
        shown = "; ".join(bad[:5]) + ("; ..." if len(bad) > 5 else "")
        raise ValueError(f"refusing to write {where}: non-finite numbers are not valid JSON: {shown}")
    return json.dumps(obj, allow_nan=False, **kwargs)
