"""Choosing a memory mode for a budget (``--max_memory 16GB``), or saying what would fit.

Modes by step time, fastest first: ordinary autograd, hybrid (top k layers kept: the more, the closer to
ordinary), per-layer checkpointing, reversible. The planner takes the first that fits; when none does, it
reports the widest d_model and the largest batch that fit in reversible mode.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..model.configuration_revdarts import RevDartsConfig
from .estimate import MEMORY_MODES, MemoryEstimate, _check_mode, estimate_memory, format_bytes

logger = logging.getLogger(__name__)

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_memory_size(text: str | int | float) -> int:
    """Bytes from ``"16GB"``, ``"500MB"``, ``"1.5GiB"``, ``"2e9"`` or a number (GB = 10^9 B, GiB = 2^30 B)."""
    if isinstance(text, bool):
        raise ValueError(f"memory size {text!r} is not a number of bytes")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(?:([kKmMgGtT])(i?))?[bB]?\s*", str(text))
        if m is None:
            raise ValueError(
                f"cannot read the memory size {text!r}; write a number with an optional unit, e.g. 16GB, 500MB, "
                "1.5GiB or 2000000000 (bytes)"
            )
        value, unit = float(m.group(1)), ((m.group(2) or "") + (m.group(3) or "")).lower()
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"memory size {text!r} must be a positive amount")
    return int(value * _UNITS[unit])


def _with_d_model(config: RevDartsConfig, d_model: int) -> RevDartsConfig:
    data = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        data.pop(key, None)
    data["d_model"] = d_model
    return RevDartsConfig(**data)


def d_model_step(config: RevDartsConfig) -> int:
    """Smallest d_model increment keeping every split width a multiple of the head count."""
    a, b = config.encoder_splits * config.num_heads, config.decoder_splits * config.num_heads
    return a * b // math.gcd(a, b)


def _total(config: RevDartsConfig, batch: int, source_length: int, target_length: int | None, mode: str,
           kwargs: dict) -> int:
    return estimate_memory(config, batch, source_length, target_length, mode=mode, **kwargs).total_bytes


def _bisect(fits, lo: int, hi: int) -> int:
    """Largest k in [lo, hi] with fits(k), given fits(lo) and that fits is monotone (True, then False)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def widest_d_model(
    config: RevDartsConfig, batch_size: int, source_length: int, target_length: int | None, max_memory: Any,
    mode: str = "reversible", max_d_model: int = 1 << 15, **kwargs: Any,
) -> int | None:
    """The widest d_model (a multiple of ``d_model_step``, at most ``max_d_model``) whose step fits
    ``max_memory`` in ``mode``; None if not even the narrowest does. Memory grows with d_model: a bisection."""
    budget, step = parse_memory_size(max_memory), d_model_step(config)

    def fits(k: int) -> bool:
        return _total(_with_d_model(config, k * step), batch_size, source_length, target_length, mode, kwargs) <= budget

    return _bisect(fits, 1, max(max_d_model // step, 1)) * step if fits(1) else None


def largest_batch(
    config: RevDartsConfig, source_length: int, target_length: int | None, max_memory: Any,
    mode: str = "reversible", max_batch: int = 1 << 20, **kwargs: Any,
) -> int | None:
    """The largest batch size (at most ``max_batch``) whose step fits ``max_memory`` in ``mode``; None if a
    batch of one does not."""
    budget = parse_memory_size(max_memory)

    def fits(b: int) -> bool:
        return _total(config, b, source_length, target_length, mode, kwargs) <= budget

    return _bisect(fits, 1, max_batch) if fits(1) else None


@dataclass
class MemoryPlan:
    """The fastest memory mode whose predicted step fits the budget (``mode`` None: nothing fits)."""

    budget_bytes: int
    mode: str | None
    keep_layers: int
    estimate: MemoryEstimate | None
    candidates: dict[str, MemoryEstimate] = field(default_factory=dict)  # per mode (hybrid: the best k that fits)
    widest_d_model: int | None = None  # when nothing fits: reversible, at this batch
    largest_batch: int | None = None  # when nothing fits: reversible, at this d_model

    @property
    def fits(self) -> bool:
        return self.mode is not None

    def config_overrides(self) -> dict[str, Any]:
        """Config fields for the chosen mode (``checkpoint`` also needs ``apply_memory_mode`` on the model)."""
        if self.mode is None:
            raise ValueError(self.message())
        return {"reversible": self.mode in ("reversible", "hybrid"), "reversible_keep_layers": self.keep_layers}

    def message(self) -> str:
        budget = format_bytes(self.budget_bytes)
        tried = ", ".join(f"{m} {format_bytes(e.total_bytes)}" for m, e in self.candidates.items())
        if self.fits:
            assert self.estimate is not None
            mode = f"hybrid (top {self.keep_layers} layers kept)" if self.mode == "hybrid" else self.mode
            return f"memory budget {budget}: {mode} fits ({self.estimate.summary()}); predicted totals: {tried}"
        hints = []
        if self.widest_d_model:
            hints.append(f"d_model <= {self.widest_d_model} at this batch")
        if self.largest_batch:
            hints.append(f"batch size <= {self.largest_batch} at this d_model")
        head = f"no memory mode fits the budget of {budget} (predicted totals: {tried})"
        if not hints:
            return f"{head}; in reversible mode not even the narrowest d_model or a batch of one fits: raise the budget"
        return f"{head}; reversible mode fits with {' or '.join(hints)}"


def plan_memory(
    config: RevDartsConfig,
    batch_size: int,
    source_length: int,
    target_length: int | None = None,
    max_memory: Any = "16GB",
    supernet: bool = False,
    modes: Sequence[str] = MEMORY_MODES,
    **kwargs: Any,
) -> MemoryPlan:
    """Pick the fastest of ``modes`` (ordinary > hybrid > checkpoint > reversible) whose predicted total (weights,
    gradients, optimizer state and the activation peak) fits ``max_memory`` (``"16GB"``, bytes, ...). Hybrid
    keeps as many top layers as fit. ``kwargs`` go to ``estimate_memory`` (search space, device, ...)."""
    budget = parse_memory_size(max_memory)
    for mode in modes:
        _check_mode(mode)
    depth = max(config.encoder_layers, config.decoder_layers)
    candidates: dict[str, MemoryEstimate] = {}
    for mode in (m for m in MEMORY_MODES if m in modes):
        est = None
        if mode == "hybrid":
            for k in range(depth - 1, 0, -1):  # keeping more layers is faster: the most that fit
                est = estimate_memory(config, batch_size, source_length, target_length, mode=mode, keep_layers=k,
                                      supernet=supernet, **kwargs)
                if est.total_bytes <= budget:
                    break
        else:
            est = estimate_memory(config, batch_size, source_length, target_length, mode=mode, supernet=supernet,
                                  **kwargs)
        if est is None:  # hybrid of a one-layer model
            continue
        candidates[mode] = est
        if est.total_bytes <= budget:
            return MemoryPlan(budget, mode, est.keep_layers, est, candidates)
    plan = MemoryPlan(budget, None, 0, None, candidates)
    plan.widest_d_model = widest_d_model(config, batch_size, source_length, target_length, budget,
                                         supernet=supernet, **kwargs)
    plan.largest_batch = largest_batch(config, source_length, target_length, budget, supernet=supernet, **kwargs)
    return plan


def apply_memory_mode(model: nn.Module, mode: str, keep_layers: int = 0) -> None:
    """Switch a built model or supernet to ``mode`` (its config fields follow, so a saved config says how it
    was trained)."""
    from ..model.reversible import ReversibleStack

    _check_mode(mode)
    if not isinstance(keep_layers, int) or keep_layers < 0:
        raise ValueError(f"keep_layers={keep_layers!r} must be an integer >= 0")
    keep = keep_layers if mode == "hybrid" else 0
    stacks = [m for m in model.modules() if isinstance(m, ReversibleStack)]
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no reversible stacks to switch to {mode!r}")
    for stack in stacks:
        stack.reversible = mode in ("reversible", "hybrid")
        stack.keep_layers = keep
        stack.gradient_checkpointing = mode == "checkpoint"
    config = getattr(model, "config", None)
    if isinstance(config, RevDartsConfig):
        config.reversible, config.reversible_keep_layers = mode in ("reversible", "hybrid"), keep
    logger.info("memory mode: %s", f"hybrid, top {keep} layers kept" if mode == "hybrid" else mode)
