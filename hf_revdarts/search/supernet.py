"""The DARTS supernet over the multi-split reversible encoder-decoder.

Every searchable split function G_k is a *mixed* op: the pooled input H is fed to every candidate op and
the results are mixed with the softmax of that node's architecture weights α,

    G_k(H) = Σ_o softmax(α_k)_o · õ(H).

The supernet is a ``RevDartsForConditionalGeneration`` built with a mixed-op ``build_split`` hook, so the
embeddings, the reversible stacks (with backpropagation-with-reconstruction), the loss and the
``forward`` signature are exactly those of the derived model.

Where α lives matters. The reversible stack's autograd Function takes ``stack.parameters()`` as its
inputs and returns their gradients; a tensor used inside a split function but not registered below the
stack gets *no* gradient through the reversible path. So each ``MixedSplit`` registers its α as its own
parameter. When α is tied across a repeated block of s layers, the very same ``nn.Parameter`` object is
registered in each tied ``MixedSplit``; ``module.parameters()`` de-duplicates it, so the Function, the
optimisers and DDP see it once and its gradient is the sum over the tied layers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration_revdarts import DECODER_OPS, ENCODER_OPS, RevDartsConfig
from ..modeling_revdarts import RevDartsForConditionalGeneration
from ..ops import OpContext, SplitFunction, WrappedOp, pool

logger = logging.getLogger(__name__)

# Ops with no parameters that DARTS is known to collapse onto (the "skip-connection" failure mode).
PARAMETER_FREE_OPS: tuple[str, ...] = ("identity", "zero")


def validate_search_space(ops: Sequence[str] | None, side: str) -> tuple[str, ...]:
    """The candidate list of one side; ``None`` gives the full space. Raises ``ValueError`` naming a bad op."""
    allowed = ENCODER_OPS if side == "encoder" else DECODER_OPS
    if ops is None:
        return tuple(allowed)
    ops = tuple(ops)
    if not ops:
        raise ValueError(f"the {side} search space is empty; give at least one op from: {', '.join(allowed)}")
    for name in ops:
        if name not in allowed:
            hint = " ('cross_attn' exists only in the decoder)" if name == "cross_attn" else ""
            raise ValueError(
                f"unknown op {name!r} in the {side} search space{hint}; valid {side} ops: {', '.join(allowed)}"
            )
    if len(set(ops)) != len(ops):
        raise ValueError(f"the {side} search space lists an op twice: {list(ops)}")
    return ops


def mixing_weights(alpha: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(α / T) in fp32, over the ops that ``mask`` keeps (True) — the others get exactly 0 and the
    kept ones are renormalised, which is how DARTS-PT removes an op from a trained supernet."""
    logits = alpha.float() / temperature
    if mask is not None:
        logits = logits.masked_fill(~mask.to(logits.device), float("-inf"))
    return F.softmax(logits, dim=-1)


class MixedSplit(nn.Module):
    """A searchable G_k: pool the n-1 inputs into H, then Σ_o softmax(α / T)_o · õ(H).

    ``temperature`` (T, default 1) and ``op_mask`` (bool per op, default None = all) are plain attributes,
    not parameters or buffers: they are search-time knobs set by the search loop
    (``RevDartsSupernet.set_temperature``) and by perturbation selection (``selection.py``), never saved.
    """

    def __init__(
        self, op_names: Sequence[str], width: int, config: RevDartsConfig, causal: bool, alpha: nn.Parameter
    ) -> None:
        super().__init__()
        self.pooling = config.pooling
        self.op_names = tuple(op_names)
        self.ops = nn.ModuleList(WrappedOp(name, width, config, causal) for name in self.op_names)
        if alpha.shape != (len(self.op_names),):
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}, expected ({len(self.op_names)},)")
        # Registered here (possibly the same object in several tied splits): see the module docstring.
        self.alpha = alpha
        self.temperature = 1.0
        self.op_mask: torch.Tensor | None = None

    def forward(
        self, inputs: list[torch.Tensor], ctx: OpContext, side: torch.Tensor | None, state: dict | None
    ) -> torch.Tensor:
        h = pool(inputs, self.pooling)
        # softmax in fp32 even under autocast: the mixing weights are tiny differences of α early on.
        weights = mixing_weights(self.alpha, self.temperature, self.op_mask).to(h.dtype)
        out = None
        for i, (name, op) in enumerate(zip(self.op_names, self.ops)):
            if name == "zero":
                # w·0 contributes nothing to the output; α_zero still gets its gradient via the softmax
                # normalisation of the other weights.
                continue
            sub = None if state is None else state.setdefault(i, {})
            term = weights[i] * op(h, ctx, side, sub)
            out = term if out is None else out + term
        if out is None:  # a space of only "zero": keep the graph connected to α
            out = h * 0.0 + weights.sum() * 0.0
        return out


def best_op(alpha: torch.Tensor, names: Sequence[str], exclude: Sequence[str] = ("zero",)) -> int:
    """Index of the largest α among ``names`` not in ``exclude`` (all of them if that leaves none)."""
    allowed = [i for i, n in enumerate(names) if n not in exclude] or list(range(len(names)))
    return max(allowed, key=lambda i: float(alpha[i]))


class RevDartsSupernet(RevDartsForConditionalGeneration):
    """The one-shot supernet: a RevDarts model whose searchable splits are mixed ops.

    Args:
        config: a ``RevDartsConfig`` for sizes, splits, pooling, dropout, ``reversible``; its genotype
            fields are ignored (only the layer counts matter).
        tie_blocks: 0 searches every layer with its own α; s > 0 shares α across a repeated block of s
            layers (layer i uses block position i mod s), as in the paper (s = 2).
        encoder_ops, decoder_ops: a custom candidate list per side (default: all 13 / 14 ops).
        alpha_init_std: α starts as ``alpha_init_std * N(0, 1)`` (DARTS uses 1e-3), i.e. near uniform.
    """

    def __init__(
        self,
        config: RevDartsConfig,
        tie_blocks: int = 0,
        encoder_ops: Sequence[str] | None = None,
        decoder_ops: Sequence[str] | None = None,
        alpha_init_std: float = 1e-3,
    ) -> None:
        if tie_blocks < 0:
            raise ValueError(f"tie_blocks={tie_blocks} must be >= 0 (0 = untied, s > 0 = share α across s layers)")
        self.tie_blocks = int(tie_blocks)
        self.search_space = {
            "encoder": validate_search_space(encoder_ops, "encoder"),
            "decoder": validate_search_space(decoder_ops, "decoder"),
        }
        self._alpha_init_std = alpha_init_std
        # α per (side, block position, split), created on first use by the builder; a plain dict (not
        # registered here) because the MixedSplits register them below the stacks.
        alphas: dict[tuple[str, int, int], nn.Parameter] = {}
        nodes: list[tuple[str, int, int, MixedSplit]] = []

        def build_split(name: str, width: int, cfg: RevDartsConfig, causal: bool, layer: int, split: int) -> nn.Module:
            side = "decoder" if causal else "encoder"
            if causal and split == cfg.decoder_splits - 1:
                return SplitFunction("cross_attn", width, cfg, causal)  # fixed, not searched
            ops = self.search_space[side]
            position = layer % self.tie_blocks if self.tie_blocks else layer
            key = (side, position, split)
            if key not in alphas:
                alphas[key] = nn.Parameter(alpha_init_std * torch.randn(len(ops)))
            module = MixedSplit(ops, width, cfg, causal, alphas[key])
            nodes.append((side, layer, split, module))
            return module

        super().__init__(config, build_split=build_split)
        # Plain containers (lists/dicts are not registered by nn.Module): ordered, de-duplicated views.
        self._alpha_keys = sorted(alphas, key=lambda k: (k[0] != "encoder", k[1], k[2]))
        self._alpha_table = alphas
        self._nodes = nodes
        self._init_alphas()

    # -- parameters ---------------------------------------------------------------------------------
    def _init_alphas(self) -> None:
        # post_init may re-initialise parameters it does not know; α is ours, set it after it ran.
        with torch.no_grad():
            for key in self._alpha_keys:
                self._alpha_table[key].normal_(0.0, self._alpha_init_std)

    def arch_parameters(self) -> list[nn.Parameter]:
        """The α tensors, one per searched node (per block position when tied), encoder first."""
        return [self._alpha_table[k] for k in self._alpha_keys]

    def named_arch_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(``"encoder.p0.s1"``-style name, α) pairs: p = layer (or block position when tied), s = split."""
        return [(f"{k[0]}.p{k[1]}.s{k[2]}", self._alpha_table[k]) for k in self._alpha_keys]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter that is not an α (the θ of DARTS)."""
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    # -- genotype ------------------------------------------------------------------------------------
    def op_names(self, side: str) -> tuple[str, ...]:
        return self.search_space[side]

    def alpha_for(self, side: str, layer: int, split: int) -> nn.Parameter:
        position = layer % self.tie_blocks if self.tie_blocks else layer
        return self._alpha_table[(side, position, split)]

    @torch.no_grad()
    def arch_weights(self) -> dict[str, list[float]]:
        """softmax(α) per α tensor, keyed like ``named_arch_parameters``."""
        return {n: F.softmax(a.float(), dim=-1).tolist() for n, a in self.named_arch_parameters()}

    def mixed_splits(self, side: str, position: int, split: int) -> list[MixedSplit]:
        """The MixedSplit modules that share the α of one node (several when α is tied across blocks)."""
        alpha = self._alpha_table[(side, position, split)]
        return [m for s, _, k, m in self._nodes if s == side and k == split and m.alpha is alpha]

    def node_keys(self) -> list[tuple[str, int, int]]:
        """(side, layer or tied block position, split) per α node, in ``named_arch_parameters`` order."""
        return list(self._alpha_keys)

    @property
    def temperature(self) -> float:
        """The softmax temperature T every mixed op uses (1 = plain DARTS)."""
        return self._nodes[0][3].temperature if self._nodes else 1.0

    def set_temperature(self, temperature: float) -> None:
        """Set T of softmax(α / T) in every mixed op; T < 1 sharpens the mixture towards its argmax."""
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature={temperature!r} must be a positive finite number")
        for _, _, _, module in self._nodes:
            module.temperature = float(temperature)

    @torch.no_grad()
    def genotype(self, exclude: Sequence[str] = ("zero",)) -> dict[str, list[list[str]]]:
        """argmax of α per node over the ops not in ``exclude``:
        ``{"encoder": [[op]*encoder_splits]*L, "decoder": [[op]*(splits-1)]*M}``.

        As in DARTS (quark0/darts ``genotype()``), ``zero`` is never derived: a split of zero only passes
        its input through, and zero's weight is underdetermined (it just scales the others' sum). When
        ``exclude`` would leave a node no candidate (a space of only excluded ops), that node falls back
        to the argmax over its whole space. ``exclude=()`` gives the raw argmax.
        """
        out: dict[str, list[list[str]]] = {}
        for side, layers, searched in (
            ("encoder", self.config.encoder_layers, self.config.encoder_splits),
            ("decoder", self.config.decoder_layers, self.config.decoder_splits - 1),
        ):
            names = self.search_space[side]
            out[side] = [
                [names[best_op(self.alpha_for(side, i, k), names, exclude)] for k in range(searched)]
                for i in range(layers)
            ]
        return out

    def derive_config(self, genotype: dict[str, list[list[str]]] | None = None, **overrides: Any) -> RevDartsConfig:
        """A ``RevDartsConfig`` with this supernet's sizes and ``genotype`` (default: ``self.genotype()``,
        e.g. ``select_genotype(self, "perturbation", batches).genotype``), plus config ``overrides``."""
        geno = self.genotype() if genotype is None else genotype
        data = self.config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map"):
            data.pop(key, None)
        data.update(encoder_genotype=geno["encoder"], decoder_genotype=geno["decoder"])
        data.update(overrides)
        return RevDartsConfig(**data)
