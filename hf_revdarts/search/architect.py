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
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .supernet import PARAMETER_FREE_OPS, RevDartsSupernet, best_op

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]

# The paper's α schedule: Adam lr 3e-4 over ~30k α steps. With Adam a logit moves at most about one lr
# per step, so that schedule allows a total logit movement of about 3e-4 × 30k = 9: the "logit range"
# that ``arch_lr_for_steps`` keeps constant whatever the number of α steps.
PAPER_ARCH_LR = 3e-4
PAPER_ARCH_STEPS = 30_000
PAPER_LOGIT_RANGE = PAPER_ARCH_LR * PAPER_ARCH_STEPS


def arch_lr_for_steps(num_arch_steps: int, logit_range: float = PAPER_LOGIT_RANGE) -> float:
    """α Adam lr such that lr × α steps = ``logit_range`` (the total logit movement a search allows).

    Adam normalises the gradient, so each α logit moves by at most about one lr per step whatever the
    loss scale; a fixed lr therefore decides how far α *can* get from uniform, not the data. The default
    range reproduces the paper's 3e-4 for its ~30k α steps; a 100-step search gets 0.09.
    """
    if int(num_arch_steps) < 1:
        raise ValueError(f"num_arch_steps={num_arch_steps} must be >= 1 (α steps = max_steps - arch_start_step)")
    if not logit_range > 0:
        raise ValueError(f"logit_range={logit_range} must be > 0")
    return float(logit_range) / int(num_arch_steps)


def annealed_temperature(arch_step: int, num_arch_steps: int, start: float = 1.0, end: float = 1.0) -> float:
    """Softmax temperature for α step ``arch_step`` (0-based) of ``num_arch_steps``: geometric from
    ``start`` to ``end`` (constant when equal), ``end`` after the last step."""
    if not (start > 0 and end > 0):
        raise ValueError(f"temperatures must be > 0 (got start={start}, end={end})")
    if num_arch_steps <= 1:
        return float(end)
    frac = min(max(arch_step, 0), num_arch_steps - 1) / (num_arch_steps - 1)
    return float(start * (end / start) ** frac)


def make_weight_optimizer(
    supernet: RevDartsSupernet, lr: float = 5e-4, betas: tuple[float, float] = (0.9, 0.98), weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """θ optimiser, paper settings: Adam(0.9, 0.98); the peak lr is reached by ``inverse_sqrt_schedule``."""
    return torch.optim.Adam(supernet.weight_parameters(), lr=lr, betas=betas, eps=1e-9, weight_decay=weight_decay)


def make_arch_optimizer(
    supernet: RevDartsSupernet, lr: float = 3e-4, betas: tuple[float, float] = (0.5, 0.999), weight_decay: float = 1e-3
) -> torch.optim.Optimizer:
    """α optimiser: Adam with the paper's fixed lr 3e-4 and weight decay 1e-3 (betas as in DARTS); size
    ``lr`` to a shorter search with ``arch_lr_for_steps``.

    The decay is decoupled (AdamW: α shrinks by lr·wd per step). DARTS' coupled L2 adds wd·α to the
    gradient, which pins α wherever its loss gradient is below wd·|α|: measured on the main job's
    supernet, encoder α gradients are ~1e-5 per node against ~1e-3 in the decoder, so with coupled decay
    the encoder α stayed uniform (top weight 0.079 vs 1/13 = 0.077) while the decoder's moved.
    """
    return torch.optim.AdamW(supernet.arch_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


class CollapseStop(RuntimeError):
    """Raised (or returned as a flag) when the collapse guard's stop limit is crossed."""


@dataclass
class CollapseGuard:
    """Watches for the DARTS collapse onto parameter-free ops (zero/identity).

    At each evaluation it computes, over all searched α nodes (softmax of the logits, T = 1): the mean
    share of mass on zero+identity (and each alone), the derived op of each node under the DARTS
    derivation (``genotype()``: argmax without ``zero``) and so the nodes that would become identity,
    and the nodes where zero holds the most mass, at least twice the uniform share (their split mostly
    passes its input through; the op derived there is chosen among weak runners-up). It warns above ``warn_share`` or
    ``warn_argmax_fraction`` and asks the search to stop when ``stop_share`` or ``stop_argmax_fraction``
    is crossed (``None`` disables a limit); the argmax limits are fractions of nodes whose *derived* op
    is parameter-free (identity; zero only where a node's space holds nothing else).
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
        zero, ident, tops = [], [], []
        param_free_nodes, zero_led_nodes = [], []
        for name, alpha in supernet.named_arch_parameters():
            ops = supernet.op_names(name.split(".")[0])
            probs = torch.softmax(alpha.float(), dim=-1)
            derived = ops[best_op(alpha, ops)]
            counts[derived] += 1
            if derived in PARAMETER_FREE_OPS:
                param_free_nodes.append(name)
            # zero leads only when it holds at least twice the uniform share: near uniform α the argmax is noise
            if ops[int(probs.argmax())] == "zero" and derived != "zero" and float(probs.max()) >= 2.0 / len(ops):
                zero_led_nodes.append(name)
            zero.append(float(probs[ops.index("zero")]) if "zero" in ops else 0.0)
            ident.append(float(probs[ops.index("identity")]) if "identity" in ops else 0.0)
            tops.append(float(probs.max()))
        nodes = max(1, len(tops))
        return {
            "op_counts": dict(sorted(counts.items())),
            "param_free_share": (sum(zero) + sum(ident)) / nodes,
            "zero_share": sum(zero) / nodes,
            "identity_share": sum(ident) / nodes,
            "param_free_argmax_fraction": len(param_free_nodes) / nodes,
            "param_free_nodes": param_free_nodes,
            "zero_led_nodes": zero_led_nodes,
            "mean_top_weight": sum(tops) / nodes,
        }

    def check(self, supernet: RevDartsSupernet, step: int) -> tuple[dict[str, Any], bool]:
        """Log the statistics; return them and whether the search should stop."""
        stats = self.statistics(supernet)
        share, frac = stats["param_free_share"], stats["param_free_argmax_fraction"]
        logger.info(
            "step %d: derived ops %s, mean top weight %.3f, α mass on zero %.3f / identity %.3f",
            step, stats["op_counts"], stats["mean_top_weight"], stats["zero_share"], stats["identity_share"],
        )
        if share > self.warn_share or frac > self.warn_argmax_fraction:
            logger.warning(
                "step %d: possible DARTS collapse: %.1f%% of α mass on zero/identity (zero %.1f%%), "
                "%.0f%% of nodes derive a parameter-free op (%s)",
                step, 100 * share, 100 * stats["zero_share"], 100 * frac,
                ", ".join(stats["param_free_nodes"]) or "none",
            )
        if stats["zero_led_nodes"]:
            logger.warning(
                "step %d: zero holds the most α mass at %s: those splits mostly pass their input through and "
                "the op derived there is a weak runner-up", step, ", ".join(stats["zero_led_nodes"]),
            )
        stop = (self.stop_share is not None and share > self.stop_share) or (
            self.stop_argmax_fraction is not None and frac > self.stop_argmax_fraction
        )
        if stop:
            logger.warning(
                "step %d: collapse limit crossed (zero/identity share %.3f > %s or derived-identity fraction "
                "%.2f > %s, nodes %s); stopping the search",
                step, share, self.stop_share, frac, self.stop_argmax_fraction, ", ".join(stats["param_free_nodes"]),
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
