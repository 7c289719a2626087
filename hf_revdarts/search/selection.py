"""Deriving the genotype from a trained supernet: DARTS' argmax, perturbation-based selection, or the best of
many sampled genotypes scored on the supernet.

Argmax (Liu et al. 2019) reads the op of each node off α, ``zero`` excluded. Perturbation-based selection
(DARTS-PT, Wang et al., ICLR 2021, "Rethinking Architecture Selection in Differentiable NAS") asks the
trained supernet instead: for each node, remove one candidate op at a time (mask it out of the mixed op
and renormalise the softmax over the rest) and measure the held-out loss; the op whose removal raises the
loss most is the one the supernet relies on. The paper discretises one edge at a time and fine-tunes
between decisions; here every node is measured on the same trained supernet (no fine-tuning), which is
DARTS-PT's one-shot reading and needs no training budget.

Sampled selection asks the supernet about whole architectures instead of single ops: each of N genotypes drawn
uniformly from the space (``zero`` excluded) is scored by the held-out loss of the supernet computing only that
genotype's ops (weight 1, the other candidates skipped) with the weights it inherited from the search, and the
lowest loss wins (as weight-sharing random search, Li & Talwalkar 2019, and SPOS's evolutionary stage score
candidates). ``fixed_genotype`` is that reading for any genotype; a ranking diagnostic compares it with the loss
of the genotype trained alone.

The held-out loss is the token-level negative log-likelihood (no label smoothing) in eval mode, so the
measurement is deterministic. A decoder node cannot change the encoder output, so the encoder is run
once per batch for all decoder perturbations.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..model.genotype import Genotype
from .supernet import RevDartsSupernet, candidate_indices, node_name

logger = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]
METHODS = ("argmax", "perturbation", "sampled")


@dataclass
class Selection:
    """A derived genotype and the evidence behind it.

    ``loss_increase[node][op]`` (perturbation): held-out NLL per token with ``op`` removed from ``node`` minus
    the supernet's (``base_loss``); nodes are named like ``named_arch_parameters`` (``"encoder.p0.s1"``).
    ``scored`` (sampled): ``{"genotype", "loss"}`` per sampled genotype, lowest loss first.
    """

    method: str
    genotype: Genotype
    base_loss: float | None = None
    loss_increase: dict[str, dict[str, float]] = field(default_factory=dict)
    scored: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "genotype": self.genotype.to_dict(), "base_loss": self.base_loss,
               "loss_increase": self.loss_increase}
        return {**out, "scored": self.scored} if self.scored else out


@contextlib.contextmanager
def removed_op(supernet: RevDartsSupernet, side: str, position: int, split: int, op_index: int) -> Iterator[None]:
    """Within the block, the node (side, position, split) mixes every op but ``op_index`` (renormalised);
    a tied node is masked in every layer that shares its α."""
    modules = supernet.mixed_splits(side, position, split)
    mask = torch.ones(len(supernet.op_names(side)), dtype=torch.bool)
    mask[op_index] = False
    previous = [m.op_mask for m in modules]
    try:
        for m in modules:
            m.op_mask = mask
        yield
    finally:
        for m, prev in zip(modules, previous):
            m.op_mask = prev


def _genotype_nodes(supernet: RevDartsSupernet, genotype: Genotype | dict) -> dict[tuple[str, int, int], int]:
    """The op index per α node that ``genotype`` asks of ``supernet``; a tied supernet takes only genotypes whose
    layers repeat its block."""
    geno = Genotype.from_dict(genotype)
    cfg, tie = supernet.config, supernet.tie_blocks
    chosen: dict[tuple[str, int, int], int] = {}
    for side, layers, searched in (("encoder", cfg.encoder_layers, cfg.encoder_splits),
                                   ("decoder", cfg.decoder_layers, cfg.decoder_splits - 1)):
        rows = geno[side]
        if len(rows) != layers or any(len(row) != searched for row in rows):
            raise ValueError(f"the {side} genotype has {len(rows)} layers of {sorted({len(r) for r in rows})} ops; the "
                             f"supernet has {layers} layers of {searched} searched splits")
        names = supernet.op_names(side)
        for layer, row in enumerate(rows):
            for split, op in enumerate(row):
                key = (side, layer % tie if tie else layer, split)
                if op not in names:
                    raise ValueError(f"{node_name(*key)}: {op!r} is not a candidate of the supernet ({', '.join(names)})")
                if chosen.setdefault(key, names.index(op)) != names.index(op):
                    raise ValueError(f"{node_name(*key)} is tied across blocks of {tie} layers, but the genotype "
                                     f"gives it both {names[chosen[key]]!r} and {op!r}")
    return chosen


@contextlib.contextmanager
def fixed_genotype(supernet: RevDartsSupernet, genotype: Genotype | dict) -> Iterator[None]:
    """Within the block, every α node of ``supernet`` computes only the op ``genotype`` gives it, with weight 1:
    the supernet as that architecture, with the weights it inherited."""
    chosen = _genotype_nodes(supernet, genotype)
    modules = {key: supernet.mixed_splits(*key) for key in chosen}
    previous = {key: [m.op_mask for m in mods] for key, mods in modules.items()}
    try:
        for key, index in chosen.items():
            mask = torch.zeros(len(supernet.op_names(key[0])), dtype=torch.bool)
            mask[index] = True
            for m in modules[key]:
                m.op_mask = mask
        yield
    finally:
        for key, mods in modules.items():
            for m, prev in zip(mods, previous[key]):
                m.op_mask = prev


def sample_genotypes(supernet: RevDartsSupernet, count: int, generator: torch.Generator,
                     exclude: Sequence[str] = ("zero",)) -> list[Genotype]:
    """``count`` distinct genotypes of the supernet's space (its tying kept), each node's op drawn uniformly from
    the candidates not in ``exclude``; fewer when the space holds fewer."""
    keys = supernet.node_keys()
    options = [candidate_indices(supernet.op_names(k[0]), exclude) for k in keys]
    space = 1
    for o in options:
        space *= len(o)
    seen: set[tuple[int, ...]] = set()
    out: list[Genotype] = []
    while len(out) < min(count, space):
        draw = tuple(o[int(torch.randint(len(o), (1,), generator=generator))] for o in options)
        if draw in seen:
            continue
        seen.add(draw)
        choice = {k: supernet.op_names(k[0])[i] for k, i in zip(keys, draw)}
        out.append(_genotype_from_choices(supernet, choice))
    return out


@torch.no_grad()
def genotype_log_prob(supernet: RevDartsSupernet, genotype: Genotype | dict) -> float:
    """log P(genotype) under α: the sum over its α nodes (each tied node once) of log softmax(α) of the op it
    takes. Argmax maximises it; as a score of any genotype it is how α ranks architectures."""
    chosen = _genotype_nodes(supernet, genotype)
    return float(sum(F.log_softmax(supernet.alpha_for(*key).float(), dim=-1)[index] for key, index in chosen.items()))


@torch.no_grad()
def score_genotypes(supernet: RevDartsSupernet, genotypes: Sequence[Genotype | dict], batches: Sequence[Batch],
                    progress: bool = False) -> list[float]:
    """The supernet's estimate of each genotype: held-out NLL per token (eval mode) with ``fixed_genotype``."""
    if not batches:
        raise ValueError("scoring genotypes on the supernet needs at least one held-out batch")
    was_training = supernet.training
    supernet.eval()
    try:
        losses = []
        for genotype in tqdm(genotypes, desc="score genotypes", disable=not progress):
            with fixed_genotype(supernet, genotype):
                losses.append(heldout_nll(supernet, batches))
    finally:
        supernet.train(was_training)
    return losses


def sampled_selection(supernet: RevDartsSupernet, batches: Sequence[Batch], count: int = 200, seed: int = 0,
                      exclude: Sequence[str] = ("zero",), progress: bool = False) -> Selection:
    """The lowest supernet estimate among ``count`` sampled genotypes and the argmax genotype (always scored, so
    the method never does worse on the supernet than reading α)."""
    generator = torch.Generator().manual_seed(seed)
    candidates = [supernet.genotype(exclude=exclude), *sample_genotypes(supernet, count, generator, exclude)]
    unique = list({c.to_json(): c for c in candidates}.values())
    losses = score_genotypes(supernet, unique, batches, progress=progress)
    ranked = sorted(zip(losses, unique), key=lambda t: t[0])
    scored = [{"genotype": g.to_dict(), "loss": loss} for loss, g in ranked]
    logger.info("sampled selection: %d genotypes, held-out NLL %.4f (best) to %.4f (worst), argmax %.4f",
                len(ranked), ranked[0][0], ranked[-1][0], losses[0])
    return Selection("sampled", ranked[0][1], losses[0], scored=scored)


def _nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")
    return float(loss), int((labels != -100).sum())


@torch.no_grad()
def heldout_nll(
    supernet: RevDartsSupernet, batches: Sequence[Batch], encoder_outputs: Sequence[Any] | None = None
) -> float:
    """Token-level NLL of ``batches`` (each with ``labels``), optionally with precomputed encoder outputs."""
    total, tokens = 0.0, 0
    for i, batch in enumerate(batches):
        extra = {} if encoder_outputs is None else {"encoder_outputs": encoder_outputs[i]}
        out = supernet(**batch, **extra)
        loss, n = _nll(out.logits, batch["labels"])
        total, tokens = total + loss, tokens + n
    if tokens == 0:
        raise ValueError("the held-out batches hold no label tokens (every label is -100)")
    return total / tokens


@torch.no_grad()
def perturbation_selection(
    supernet: RevDartsSupernet,
    batches: Sequence[Batch],
    exclude: Sequence[str] = ("zero",),
    tie_tolerance: float = 1e-4,
    progress: bool = False,
) -> Selection:
    """DARTS-PT: per node, the candidate (not in ``exclude``) whose removal raises the held-out loss most.

    Candidates within ``tie_tolerance`` nats/token of the largest increase count as tied and α decides
    among them: a node the loss does not depend on (all increases ~0) then keeps its argmax instead of
    an arbitrary op. Runs in eval mode (no dropout) at the supernet's current temperature and restores
    its mode and masks. Cost: one forward of ``batches`` per (node, candidate). A node whose space has no
    candidate outside ``exclude`` is measured over its whole space.
    """
    if not batches:
        raise ValueError("perturbation selection needs at least one held-out batch")
    missing = [i for i, b in enumerate(batches) if "labels" not in b]
    if missing:
        raise ValueError(f"held-out batches {missing} have no 'labels'")
    was_training = supernet.training
    supernet.eval()
    try:
        base = heldout_nll(supernet, batches)
        encoder = supernet.get_encoder()
        enc_out = [encoder(input_ids=b["input_ids"], attention_mask=b.get("attention_mask")) for b in batches]
        increases: dict[str, dict[str, float]] = {}
        choice: dict[tuple[str, int, int], str] = {}
        keys = supernet.node_keys()
        work = sum(len([n for n in supernet.op_names(k[0]) if n not in exclude]) for k in keys)
        bar = tqdm(total=work, desc="perturbation selection", disable=not progress)
        for side, position, split in keys:
            names = supernet.op_names(side)
            candidates = candidate_indices(names, exclude)
            node = node_name(side, position, split)
            increases[node] = {}
            for i in candidates:
                bar.update(1)
                if len(names) == 1:  # nothing left to mix without it; removal is not defined
                    increases[node][names[i]] = 0.0
                    continue
                with removed_op(supernet, side, position, split, i):
                    loss = heldout_nll(supernet, batches, enc_out if side == "decoder" else None)
                increases[node][names[i]] = loss - base
            top = max(increases[node].values())
            alpha = supernet.alpha_for(side, position, split)
            tied = [i for i in candidates if increases[node][names[i]] >= top - tie_tolerance]
            choice[(side, position, split)] = names[max(tied, key=lambda i: float(alpha[i]))]
            logger.info("%s: %s (removal +%.4f nats/token)", node, choice[(side, position, split)],
                        increases[node][choice[(side, position, split)]])
        bar.close()
    finally:
        supernet.train(was_training)
    return Selection("perturbation", _genotype_from_choices(supernet, choice), base, increases)


def _genotype_from_choices(
    supernet: RevDartsSupernet, choice: dict[tuple[str, int, int], str]
) -> Genotype:
    cfg, tie = supernet.config, supernet.tie_blocks
    out: dict[str, list[list[str]]] = {}
    for side, layers, searched in (
        ("encoder", cfg.encoder_layers, cfg.encoder_splits),
        ("decoder", cfg.decoder_layers, cfg.decoder_splits - 1),
    ):
        out[side] = [[choice[(side, i % tie if tie else i, k)] for k in range(searched)] for i in range(layers)]
    return Genotype.from_dict(out)


def select_genotype(
    supernet: RevDartsSupernet,
    method: str = "argmax",
    batches: Sequence[Batch] | None = None,
    exclude: Sequence[str] = ("zero",),
    tie_tolerance: float = 1e-4,
    progress: bool = False,
    samples: int = 200,
    seed: int = 0,
) -> Selection:
    """The genotype of ``supernet`` by ``method``: ``"argmax"`` (α, as ``supernet.genotype(exclude)``),
    ``"perturbation"`` (DARTS-PT on the held-out ``batches``) or ``"sampled"`` (the lowest held-out loss of
    ``samples`` genotypes drawn with ``seed``, and the argmax one). Pass ``.genotype`` to ``derive_config``."""
    if method == "argmax":
        return Selection("argmax", supernet.genotype(exclude=exclude))
    if method == "perturbation":
        if batches is None:
            raise ValueError("selection method 'perturbation' needs held-out batches (batches=[...])")
        return perturbation_selection(
            supernet, batches, exclude=exclude, tie_tolerance=tie_tolerance, progress=progress
        )
    if method == "sampled":
        if batches is None:
            raise ValueError("selection method 'sampled' needs held-out batches (batches=[...])")
        return sampled_selection(supernet, batches, count=samples, seed=seed, exclude=exclude, progress=progress)
    raise ValueError(f"unknown selection method {method!r}; choose one of: {', '.join(METHODS)}")
