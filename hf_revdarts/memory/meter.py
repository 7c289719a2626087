"""Measuring the memory a training step adds: the peak of live tensor bytes above what was allocated before it.

On a GPU that is ``torch.cuda.max_memory_allocated`` minus the allocation at the start. On CPU there is no
allocator counter, and the process's resident set (RSS) is a poor proxy: glibc serves blocks under its mmap
threshold from a heap that it rarely returns, so a step's RSS peak depends on what earlier steps left free
(a supernet at small width can show half its activations, or twice them). ``LiveTensorBytes`` therefore counts
tensors: a dispatch mode sees every new storage an op returns and a weak reference sees it freed, so its peak is
what ``max_memory_allocated`` would report without the caching allocator's rounding. It costs Python time per
op, so meter one step, not a whole run.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .estimate import MemoryEstimate, format_bytes


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storages created while active and still alive (``live``) and their maximum (``peak``).

    Views and in-place results share an input's storage and are not new; storages created before entering
    (parameters, gradient buffers, the batch) are the baseline and not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: dict[int, Any] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        if self._alive.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        inputs = {s.data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) for s in _storages(t)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            for storage in _storages(t):
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes == 0 or key in inputs or key in self._alive:
                    continue
                self._alive[key] = weakref.ref(storage, lambda _ref, key=key, nbytes=nbytes: self._freed(key, nbytes))
                self.live += nbytes
                self.peak = max(self.peak, self.live)
        return out


def _storages(t: torch.Tensor) -> list[torch.UntypedStorage]:
    """The storages holding ``t``'s data: a sparse COO tensor (an embedding's sparse gradient) has no storage of its
    own but an index and a value tensor."""
    if t.layout == torch.sparse_coo:
        return [t._indices().untyped_storage(), t._values().untyped_storage()]
    return [t.untyped_storage()]


class StepMemoryMeter:
    """``with StepMemoryMeter(device) as meter: <one training step>`` then ``meter.peak_bytes`` (the most bytes
    allocated above the start) and ``meter.retained_bytes`` (still allocated at the end: gradients or optimizer
    state the step created). CUDA: the allocator's counters; CPU: ``LiveTensorBytes``."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes = 0
        self.retained_bytes = 0
        self._mode: LiveTensorBytes | None = None
        self._start = 0

    @property
    def method(self) -> str:
        return "torch.cuda.max_memory_allocated" if self.device.type == "cuda" else "live tensor bytes (dispatch mode)"

    def __enter__(self) -> StepMemoryMeter:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._mode = LiveTensorBytes()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
            self.retained_bytes = torch.cuda.memory_allocated(self.device) - self._start
        else:
            assert self._mode is not None
            self._mode.__exit__(*exc)
            self.peak_bytes, self.retained_bytes = self._mode.peak, self._mode.live

    def report(self, estimate: MemoryEstimate, gradients_allocated_in_step: bool = True) -> str:
        """Predicted vs measured, for the log line after a step. With ``zero_grad(set_to_none=True)`` (the
        training scripts) the step also allocates the gradients: both sides then include them. The step's peak
        is its activations' or, after backward, the optimizer update's temporaries, whichever is larger."""
        peak = max(estimate.activation_bytes, estimate.optimizer_step_bytes)
        predicted = peak + (estimate.gradient_bytes if gradients_allocated_in_step else 0)
        what = "activations + gradients" if gradients_allocated_in_step else "activations"
        ratio = self.peak_bytes / predicted if predicted else float("nan")
        return (
            f"memory of a training step ({what}, above weights and optimizer state; batch {estimate.batch_size} x "
            f"{estimate.source_length}/{estimate.target_length} tokens): predicted {format_bytes(predicted)}, "
            f"measured {format_bytes(self.peak_bytes)} ({ratio:.2f}x the prediction; {self.method})"
        )
