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

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..model.configuration_revdarts import RevDartsConfig
from ..model.genotype import Genotype, validate_search_space
from ..model.modeling_revdarts import RevDartsForConditionalGeneration
from ..model.ops import OpContext, SplitFunction, WrappedOp, pool

logger = logging.getLogger(__name__)

# Ops with no parameters that DARTS is known to collapse onto (the "skip-connection" failure mode).
PARAMETER_FREE_OPS: tuple[str, ...] = ("identity", "zero")


def _with_search_overrides(
    config: RevDartsConfig,
    tie_blocks: int | None,
    encoder_ops: Sequence[str] | None,
    decoder_ops: Sequence[str] | None,
    alpha_init_std: float | None,
    partial_channels: int | None = None,
) -> RevDartsConfig:
    """``config`` itself, or a validated copy with the given search settings written in."""
    overrides = {
        "tie_blocks": tie_blocks,
        "search_encoder_ops": list(encoder_ops) if encoder_ops is not None else None,
        "search_decoder_ops": list(decoder_ops) if decoder_ops is not None else None,
        "alpha_init_std": alpha_init_std,
        "partial_channels": partial_channels,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return config
    config = copy.deepcopy(config)  # the caller's config stays as it was
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate_revdarts()
    return config


def node_name(side: str, position: int, split: int) -> str:
    """The name of an α node, as ``named_arch_parameters`` and the α history give it: ``"encoder.p0.s1"``."""
    return f"{side}.p{position}.s{split}"


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

    With ``partial_channels=K`` > 1 (PC-DARTS, Xu et al. 2020) only a block of width/K channels of H goes
    through the candidate ops (built at that width) and the other channels pass through unchanged:
    G_k(H) = H with the block replaced by Σ_o softmax(α)_o · õ(H_block). The candidates cost about 1/K²
    of their compute and 1/K of their activation memory; what is searched changes (the ops see a slice of
    H, the rest of the node is an identity), so it is an option whose effect on the search outcome must be
    measured (the README has the figures). ``block`` picks which slice: the supernet rotates it with the layer
    and split, our analogue of PC-DARTS's channel shuffle, so that across the stack every channel goes through some mixed op.
    PC-DARTS's edge normalisation weighs a node's several input edges; here a node has one input (the
    pooled H), so there is nothing for it to normalise.
    """

    def __init__(
        self,
        op_names: Sequence[str],
        width: int,
        config: RevDartsConfig,
        causal: bool,
        alpha: nn.Parameter,
        partial_channels: int = 1,
        block: int = 0,
    ) -> None:
        super().__init__()
        self.pooling = config.pooling
        self.op_names = tuple(op_names)
        if partial_channels < 1 or width % partial_channels:
            raise ValueError(
                f"partial_channels={partial_channels} must be a positive divisor of the split width {width}"
            )
        self.partial_channels = partial_channels
        op_width = width // partial_channels
        self.channels = slice((block % partial_channels) * op_width, (block % partial_channels + 1) * op_width)
        uses_heads = {"self_attn", "cross_attn"} | {n for n in self.op_names if n.startswith("dynconv")}
        if partial_channels > 1 and uses_heads & set(self.op_names) and op_width % config.num_heads:
            raise ValueError(
                f"partial_channels={partial_channels} leaves {op_width} of the split's {width} channels for the "
                f"ops, not divisible by num_heads={config.num_heads} (attention/dynconv heads); choose "
                "partial_channels so that split width / partial_channels is a multiple of num_heads"
            )
        self.ops = nn.ModuleList(WrappedOp(name, op_width, config, causal) for name in self.op_names)
        if alpha.shape != (len(self.op_names),):
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}, expected ({len(self.op_names)},)")
        # Registered here (possibly the same object in several tied splits): see the module docstring.
        self.alpha = alpha
        self.temperature = 1.0
        self.op_mask: torch.Tensor | None = None

    def forward(
        self, inputs: list[torch.Tensor], ctx: OpContext, side: torch.Tensor | None, state: dict | None
    ) -> torch.Tensor:
        full = h = pool(inputs, self.pooling)
        if self.partial_channels > 1:
            h = full[..., self.channels]
        # softmax in fp32 even under autocast: the mixing weights are tiny differences of α early on.
        weights = mixing_weights(self.alpha, self.temperature, self.op_mask).to(h.dtype)
        kept = self.op_mask.tolist() if self.op_mask is not None else [True] * len(self.ops)
        out = None
        for i, (name, op) in enumerate(zip(self.op_names, self.ops)):
            if name == "zero":
                # w·0 contributes nothing to the output; α_zero still gets its gradient via the softmax
                # normalisation of the other weights.
                continue
            if not kept[i]:
                # weight exactly 0: not computed (pruned or removed). Its parameters stay in the graph with a
                # zero gradient, so that DDP's reducer, which expects every parameter, still finishes.
                if torch.is_grad_enabled() and self.training:
                    for param in op.parameters():
                        term = param.sum() * 0.0
                        out = term if out is None else out + term
                continue
            sub = None if state is None else state.setdefault(i, {})
            term = weights[i] * op(h, ctx, side, sub)
            out = term if out is None else out + term
        if out is None:  # a space of only "zero": keep the graph connected to α
            out = h * 0.0 + weights.sum() * 0.0
        if self.partial_channels > 1:  # the other channels bypass the ops
            out = torch.cat([full[..., : self.channels.start], out, full[..., self.channels.stop :]], dim=-1)
        return out


def candidate_indices(names: Sequence[str], exclude: Sequence[str]) -> list[int]:
    """Indices of the ops of ``names`` a derivation may pick: those not in ``exclude``, or all of them when that
    leaves none (a space of only excluded ops)."""
    return [i for i, n in enumerate(names) if n not in exclude] or list(range(len(names)))


def best_op(alpha: torch.Tensor, names: Sequence[str], exclude: Sequence[str] = ("zero",)) -> int:
    """Index of the largest α among ``names`` not in ``exclude`` (all of them if that leaves none)."""
    return max(candidate_indices(names, exclude), key=lambda i: float(alpha[i]))


class RevDartsSupernet(RevDartsForConditionalGeneration):
    """The one-shot supernet: a RevDarts model whose searchable splits are mixed ops.

    Built from a ``RevDartsConfig`` alone: its sizes, splits, pooling, dropout and ``reversible``, and the
    search settings ``search_encoder_ops`` / ``search_decoder_ops`` (candidate ops per side, default all 13 /
    14), ``tie_blocks`` (0: every layer its own α; s > 0: α shared across a repeated block of s layers, layer
    i using block position i mod s, as in the paper with s = 2) and ``alpha_init_std`` (α starts as
    ``alpha_init_std * N(0, 1)``, near uniform). The genotype fields are ignored (only the layer counts
    matter). ``save_pretrained`` / ``from_pretrained`` round-trip the supernet, α included.

    Args:
        config: the ``RevDartsConfig`` to build from.
        tie_blocks, encoder_ops, decoder_ops, alpha_init_std: optional overrides of the config's
            ``tie_blocks``, ``search_encoder_ops``, ``search_decoder_ops`` and ``alpha_init_std``; given ones
            are written into a copy of the config (``self.config``), so that a saved supernet rebuilds alike.
        partial_channels: optional override of the config's ``partial_channels`` (PC-DARTS, see ``MixedSplit``).
    """

    def __init__(
        self,
        config: RevDartsConfig,
        tie_blocks: int | None = None,
        encoder_ops: Sequence[str] | None = None,
        decoder_ops: Sequence[str] | None = None,
        alpha_init_std: float | None = None,
        partial_channels: int | None = None,
    ) -> None:
        config = _with_search_overrides(config, tie_blocks, encoder_ops, decoder_ops, alpha_init_std, partial_channels)
        self.tie_blocks = int(config.tie_blocks)
        self.partial_channels = int(config.partial_channels)
        self.search_space = {
            "encoder": validate_search_space(config.search_encoder_ops, "encoder"),
            "decoder": validate_search_space(config.search_decoder_ops, "decoder"),
        }
        self._alpha_init_std = float(config.alpha_init_std)
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
                alphas[key] = nn.Parameter(self._alpha_init_std * torch.randn(len(ops)))
            module = MixedSplit(
                ops, width, cfg, causal, alphas[key], partial_channels=self.partial_channels, block=layer + split
            )
            nodes.append((side, layer, split, module))
            return module

        super().__init__(config, build_split=build_split)
        # Plain containers (lists/dicts are not registered by nn.Module): ordered, de-duplicated views.
        self._alpha_keys = sorted(alphas, key=lambda k: (k[0] != "encoder", k[1], k[2]))
        self._alpha_table = alphas
        self._nodes = nodes
        self._declare_tied_alphas()
        self._init_alphas()

    # -- save / load ----------------------------------------------------------------------------------
    def _declare_tied_alphas(self) -> None:
        # A tied α is one Parameter under several state-dict names, and safetensors refuses aliased tensors.
        # Declared as tied weights (its first name is the source), save_pretrained writes it once and
        # from_pretrained points the other names back at the loaded source.
        first: dict[int, str] = {}
        tied: dict[str, str] = {}
        for name, param in self.named_parameters(remove_duplicate=False):
            if name.endswith(".alpha"):
                source = first.setdefault(id(param), name)
                if source != name:
                    tied[name] = source
        self._tied_weights_keys = {**(type(self)._tied_weights_keys or {}), **tied}
        if hasattr(self, "all_tied_weights_keys"):  # transformers 5 ties from this mapping when loading
            self.all_tied_weights_keys.update(tied)

    def tie_weights(self, *args: Any, **kwargs: Any) -> None:
        super().tie_weights(*args, **kwargs)
        if hasattr(self, "_nodes"):
            # Loading puts new Parameters into the modules (one per tied group, which tying then shares):
            # re-read the α table from them, so that arch_parameters() are the registered, loaded tensors.
            for side, layer, split, module in self._nodes:
                position = layer % self.tie_blocks if self.tie_blocks else layer
                self._alpha_table[(side, position, split)] = module.alpha

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
        return [(node_name(*k), self._alpha_table[k]) for k in self._alpha_keys]

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
    def prune_ops(self, threshold: float) -> int:
        """Skip, in every mixed op, the candidates whose softmax(α) weight is below ``threshold`` (the node's
        top op always stays); the kept ones are renormalised, as DARTS-PT removes an op. Called once per
        step from α alone, so a resumed search prunes alike; ``threshold`` 0 computes every op again.
        Pruned ops get no α gradient (their α holds) and may come back if the others' α move. Returns the
        number of (node, op) pairs skipped, tied nodes counted once."""
        if not (isinstance(threshold, (int, float)) and 0.0 <= threshold < 1.0):
            raise ValueError(f"threshold={threshold!r} must be in [0, 1)")
        skipped = 0
        for key in self._alpha_keys:
            alpha = self._alpha_table[key]
            mask = None
            if threshold > 0:
                weights = mixing_weights(alpha, self.temperature)
                mask = weights >= threshold
                mask[int(weights.argmax())] = True
                skipped += int((~mask).sum())
                mask = None if bool(mask.all()) else mask.cpu()
            for module in self.mixed_splits(*key):
                module.op_mask = mask
        return skipped

    def sample_single_path(self, generator: torch.Generator, exclude: Sequence[str] = ("zero",)) -> dict[str, str]:
        """Keep one candidate per α node, drawn uniformly from the ops not in ``exclude`` (single-path sampling,
        as SPOS trains a supernet's weights): the next forward and backward cost about one model step instead of
        every candidate's. Tied nodes share the draw. Returns the op drawn per node; ``prune_ops(0.0)`` computes
        every op again. The draw depends on ``generator`` alone, so processes seeded alike sample alike and a
        resumed run samples as the first would have."""
        drawn = {}
        for key in self._alpha_keys:
            names = self.op_names(key[0])
            candidates = candidate_indices(names, exclude)
            pick = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
            mask = torch.zeros(len(names), dtype=torch.bool)
            mask[pick] = True
            for module in self.mixed_splits(*key):
                module.op_mask = mask
            drawn[node_name(*key)] = names[pick]
        return drawn

    @torch.no_grad()
    def genotype(self, exclude: Sequence[str] = ("zero",)) -> Genotype:
        """argmax of α per node over the ops not in ``exclude``.

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
        return Genotype.from_dict(out)

    def derive_config(self, genotype: Genotype | None = None, **overrides: Any) -> RevDartsConfig:
        """A ``RevDartsConfig`` with this supernet's sizes and ``genotype`` (default: ``self.genotype()``,
        e.g. ``select_genotype(self, "perturbation", batches).genotype``), plus config ``overrides``."""
        geno = self.genotype() if genotype is None else Genotype.from_dict(genotype)
        data = self.config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map"):
            data.pop(key, None)
        data.update(encoder_genotype=geno.encoder, decoder_genotype=geno.decoder)
        data.update(overrides)
        return RevDartsConfig(**data)
