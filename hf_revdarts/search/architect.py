"""DARTS architecture updates (first- and second-order), the paper's optimisers, and a collapse guard.

Alternating optimisation: a step on the weights θ with the training split, then a step on α with a
held-out split. The first-order variant treats θ as constant when differentiating the validation loss
w.r.t. α (the paper's choice). The second-order variant follows DARTS (Liu et al. 2019;
quark0/darts ``cnn/architect.py``): the validation loss is taken at the unrolled weights
θ' = θ - ξ∇θ L_train(θ, α), and the implicit term ∇²_{α,θ} L_train · ∇θ' L_val is approximated by a
central finite difference around θ.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .supernet import PARAMETER_FREE_OPS, RevDartsSupernet

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


def make_weight_optimizer(
    supernet: RevDartsSupernet, lr: float = 5e-4, betas: tuple[float, float] = (0.9, 0.98), weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """θ optimiser, paper settings: Adam(0.9, 0.98); the peak lr is reached by ``inverse_sqrt_schedule``."""
    return torch.optim.Adam(supernet.weight_parameters(), lr=lr, betas=betas, eps=1e-9, weight_decay=weight_decay)


def make_arch_optimizer(
    supernet: RevDartsSupernet, lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 1e-3
) -> torch.optim.Optimizer:
    """α optimiser, paper settings: Adam, fixed lr 3e-4, weight decay 1e-3 (betas as in DARTS)."""
    return torch.optim.Adam(supernet.arch_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


def inverse_sqrt_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the optimiser's lr over ``warmup_steps``, then decay ∝ 1/sqrt(step)."""
    warmup = max(1, int(warmup_steps))

    def factor(step: int) -> float:
        step = step + 1  # LambdaLR calls with 0 first; step 1 must already train
        return min(step / warmup, math.sqrt(warmup / step))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class CollapseStop(RuntimeError):
    """Raised (or returned as a flag) when the collapse guard's stop limit is crossed."""


@dataclass
class CollapseGuard:
    """Watches for the DARTS collapse onto parameter-free ops (zero/identity).

    At each evaluation it computes, over all searched α nodes: the op-choice counts (argmax), the mean
    share of softmax(α) mass on zero+identity, and the fraction of nodes whose argmax is zero/identity.
    It warns above ``warn_share`` or ``warn_argmax_fraction`` and asks the search to stop when
    ``stop_share`` or ``stop_argmax_fraction`` is crossed (``None`` disables a limit). Near uniform α
    the argmax is noise, so the argmax limits are fractions of nodes rather than "any node".
    """

    warn_share: float = 0.3
    stop_share: float | None = 0.6
    stop_argmax_fraction: float | None = 0.5
    warn_argmax_fraction: float = 0.25

    def __post_init__(self) -> None:
        for name in ("warn_share", "stop_share", "stop_argmax_fraction", "warn_argmax_fraction"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"CollapseGuard.{name}={v} must be a fraction in [0, 1] (or None to disable)")

    @staticmethod
    @torch.no_grad()
    def statistics(supernet: RevDartsSupernet) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        shares: list[float] = []
        picked = 0
        for name, alpha in supernet.named_arch_parameters():
            side = name.split(".")[0]
            ops = supernet.op_names(side)
            probs = torch.softmax(alpha.float(), dim=-1)
            choice = ops[int(probs.argmax())]
            counts[choice] += 1
            picked += choice in PARAMETER_FREE_OPS
            shares.append(float(sum(probs[i] for i, o in enumerate(ops) if o in PARAMETER_FREE_OPS)))
        nodes = max(1, len(shares))
        return {
            "op_counts": dict(sorted(counts.items())),
            "param_free_share": sum(shares) / nodes,
            "param_free_argmax_fraction": picked / nodes,
        }

    def check(self, supernet: RevDartsSupernet, step: int) -> tuple[dict[str, Any], bool]:
        """Log the statistics; return them and whether the search should stop."""
        stats = self.statistics(supernet)
        share, frac = stats["param_free_share"], stats["param_free_argmax_fraction"]
        logger.info(
            "step %d: op choices %s, α mass on zero/identity %.3f, nodes choosing them %.2f",
            step, stats["op_counts"], share, frac,
        )
        if share > self.warn_share or frac > self.warn_argmax_fraction:
            logger.warning(
                "step %d: possible DARTS collapse: %.1f%% of α mass on zero/identity, %.0f%% of nodes choose them",
                step, 100 * share, 100 * frac,
            )
        stop = (self.stop_share is not None and share > self.stop_share) or (
            self.stop_argmax_fraction is not None and frac > self.stop_argmax_fraction
        )
        if stop:
            logger.warning(
                "step %d: collapse limit crossed (share %.3f > %s or argmax fraction %.2f > %s); stopping the search",
                step, share, self.stop_share, frac, self.stop_argmax_fraction,
            )
        return stats, stop


def _mean_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(**batch).loss


class Architect:
    """Updates α on held-out batches.

    Args:
        model: what the forward runs through (the DDP-wrapped model under accelerate, else the supernet).
        supernet: the unwrapped ``RevDartsSupernet`` (α, θ and the second-order virtual step live here).
        arch_optimizer: optimiser over ``supernet.arch_parameters()``.
        second_order: use the unrolled (finite-difference) DARTS gradient instead of the first-order one.
        backward: how to back-propagate a loss (``accelerator.backward`` under accelerate).
        no_sync: context factory that skips the gradient all-reduce on non-final micro-batches.
        all_reduce_mean: averages a tensor over processes (second order computes gradients with
            ``torch.autograd.grad`` outside DDP, so it synchronises them itself).
    """

    def __init__(
        self,
        model: nn.Module,
        supernet: RevDartsSupernet,
        arch_optimizer: torch.optim.Optimizer,
        second_order: bool = False,
        backward: Callable[[torch.Tensor], None] | None = None,
        no_sync: Callable[[], Any] | None = None,
        all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.supernet = supernet
        self.optimizer = arch_optimizer
        self.second_order = second_order
        self.backward = backward or (lambda loss: loss.backward())
        self.no_sync = no_sync or contextlib.nullcontext
        self.all_reduce_mean = all_reduce_mean or (lambda t: t)

    def step(
        self,
        val_batches: Sequence[Batch],
        train_batches: Sequence[Batch] | None = None,
        unrolled_lr: float | None = None,
        weight_decay: float = 0.0,
        allow_step: Callable[[float], bool] | None = None,
    ) -> float:
        """One α update from ``val_batches`` (micro-batches averaged); returns the mean validation loss.

        Second order also needs ``train_batches`` and ``unrolled_lr`` (ξ, usually θ's current lr).
        ``allow_step(loss)``, called once α's gradients are there, may veto the update (a ``NonFiniteGuard``
        skipping a NaN step). All gradients (θ's included) are zero when it returns, so the θ step starts clean.
        """
        if not val_batches:
            raise ValueError("Architect.step needs at least one validation batch")
        self.supernet.zero_grad(set_to_none=True)
        if self.second_order:
            if not train_batches or unrolled_lr is None:
                raise ValueError("second-order DARTS needs train_batches and unrolled_lr")
            loss = self._second_order(val_batches, train_batches, unrolled_lr, weight_decay)
        else:
            loss = self._first_order(val_batches)
        if allow_step is None or allow_step(loss):
            self.optimizer.step()
        self.supernet.zero_grad(set_to_none=True)
        return loss

    def _first_order(self, val_batches: Sequence[Batch]) -> float:
        total = 0.0
        n = len(val_batches)
        for i, batch in enumerate(val_batches):
            ctx = self.no_sync() if i < n - 1 else contextlib.nullcontext()
            with ctx:
                loss = _mean_loss(self.model, batch)
                self.backward(loss / n)
            total += float(loss.detach())
        return total / n

    # -- second order ---------------------------------------------------------------------------------
    def _grads(self, batches: Iterable[Batch], wrt: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
        """Mean gradient of the loss over ``batches`` w.r.t. ``wrt``, averaged over processes."""
        batches = list(batches)
        acc = [torch.zeros_like(p) for p in wrt]
        total = 0.0
        for batch in batches:
            loss = _mean_loss(self.supernet, batch)
            got = torch.autograd.grad(loss, wrt, allow_unused=True)
            for a, g in zip(acc, got):
                if g is not None:
                    a.add_(g, alpha=1.0 / len(batches))
            total += float(loss.detach())
        return [self.all_reduce_mean(a) for a in acc], total / len(batches)

    def _second_order(
        self, val_batches: Sequence[Batch], train_batches: Sequence[Batch], xi: float, weight_decay: float
    ) -> float:
        weights = [p for p in self.supernet.weight_parameters() if p.requires_grad]
        alphas = self.supernet.arch_parameters()
        backup = [p.detach().clone() for p in weights]
        try:
            # θ' = θ - ξ (∇θ L_train + wd·θ): the one-step unrolled weights (plain SGD step, as in DARTS
            # without momentum; with Adam on θ this is the usual approximation).
            g_train, _ = self._grads(train_batches, weights)
            with torch.no_grad():
                for p, g in zip(weights, g_train):
                    p.sub_(xi * (g + weight_decay * p))
            grads, val_loss = self._grads(val_batches, alphas + weights)
            d_alpha, d_weights = grads[: len(alphas)], grads[len(alphas) :]
            # Hessian-vector product by central differences around θ (not θ'), DARTS' choice.
            norm = torch.sqrt(sum((g.float() ** 2).sum() for g in d_weights))
            r = 0.01 / float(norm.clamp_min(1e-12))
            with torch.no_grad():
                for p, b, v in zip(weights, backup, d_weights):
                    p.copy_(b + r * v)
            g_pos, _ = self._grads(train_batches, alphas)
            with torch.no_grad():
                for p, b, v in zip(weights, backup, d_weights):
                    p.copy_(b - r * v)
            g_neg, _ = self._grads(train_batches, alphas)
        finally:
            with torch.no_grad():
                for p, b in zip(weights, backup):
                    p.copy_(b)
        for a, da, gp, gn in zip(alphas, d_alpha, g_pos, g_neg):
            a.grad = da - xi * (gp - gn) / (2 * r)
        return val_loss
