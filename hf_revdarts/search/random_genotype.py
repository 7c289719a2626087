"""Genotypes drawn uniformly at random from the search space: the baseline a search has to beat.

Yang et al. (ICLR 2020, "NAS evaluation is frustratingly hard") and Li & Talwalkar (2019) showed that
architectures sampled at random from a well-designed space often match searched ones. A fair comparison
samples from exactly the space the search derives from: the same candidate lists, the same node layout
(α shared across a block of ``tie_blocks`` layers, or one node per layer) and the same exclusions. The
derivation never picks ``zero`` (DARTS' rule: a split with ``zero`` only passes its input through, and
zero's α is underdetermined), so ``zero`` is excluded here too by default.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..configuration_revdarts import DECODER_OPS, ENCODER_OPS

_SIZE_KEYS = ("encoder_layers", "decoder_layers")


def _sizes(config_or_sizes: Any) -> dict[str, int]:
    """encoder/decoder layers and splits of a RevDartsConfig or a mapping (splits default to 2 and 3)."""
    get = config_or_sizes.get if isinstance(config_or_sizes, Mapping) else (
        lambda k, d=None: getattr(config_or_sizes, k, d)
    )
    sizes = {
        "encoder_layers": get("encoder_layers"),
        "decoder_layers": get("decoder_layers"),
        "encoder_splits": get("encoder_splits", 2),
        "decoder_splits": get("decoder_splits", 3),
    }
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"random_genotype needs a positive integer {key}, got {value!r}")
    if sizes["decoder_splits"] < 2:
        raise ValueError("decoder_splits must be >= 2 (the last decoder split is the fixed cross-attention)")
    return sizes


def _candidates(ops: Sequence[str] | None, allowed: tuple[str, ...], exclude: Sequence[str], side: str) -> list[str]:
    ops = list(allowed if ops is None else ops)
    unknown = [o for o in ops if o not in allowed]
    if unknown:
        raise ValueError(f"unknown {side} op(s) {unknown}; valid {side} ops: {', '.join(allowed)}")
    kept = [o for o in dict.fromkeys(ops) if o not in set(exclude)]
    if not kept:
        raise ValueError(f"the {side} search space {ops} is empty once {list(exclude)} are excluded")
    return kept


def random_genotype(
    config_or_sizes: Any,
    encoder_ops: Sequence[str] | None = None,
    decoder_ops: Sequence[str] | None = None,
    seed: int = 0,
    exclude: Sequence[str] = ("zero",),
    tie_blocks: int = 0,
) -> dict[str, list[list[str]]]:
    """A genotype with one op drawn uniformly per searchable node, deterministic in ``seed``.

    Args:
        config_or_sizes: a ``RevDartsConfig`` or a mapping with ``encoder_layers``, ``decoder_layers`` (and
            optionally ``encoder_splits``/``decoder_splits``, default 2/3).
        encoder_ops, decoder_ops: the candidate lists (default: the full 13 / 14 ops), as given to the search.
        seed: the draw; the same seed gives the same genotype on every machine (``random.Random``).
        exclude: ops never drawn, matching the derivation (default: ``zero``, which DARTS never derives).
        tie_blocks: as in ``RevDartsSupernet``: ``s > 0`` draws one block of ``s`` layers and repeats it
            (layer i uses block position i mod s), ``0`` draws every layer independently.

    Returns ``{"encoder": [[op] * encoder_splits] * encoder_layers, "decoder": [[op] * (splits - 1)] * ...}``
    (the decoder's last split is the fixed cross-attention and is not listed), the form
    ``RevDartsSupernet.genotype()`` returns and ``RevDartsConfig`` takes.
    """
    if not isinstance(tie_blocks, int) or tie_blocks < 0:
        raise ValueError(f"tie_blocks={tie_blocks!r} must be an integer >= 0")
    sizes = _sizes(config_or_sizes)
    rng = random.Random(int(seed))
    out: dict[str, list[list[str]]] = {}
    for side, allowed, ops, searched in (
        ("encoder", ENCODER_OPS, encoder_ops, sizes["encoder_splits"]),
        ("decoder", DECODER_OPS, decoder_ops, sizes["decoder_splits"] - 1),
    ):
        candidates = _candidates(ops, allowed, exclude, side)
        layers = sizes[f"{side}_layers"]
        positions = min(tie_blocks, layers) if tie_blocks else layers
        block = [[rng.choice(candidates) for _ in range(searched)] for _ in range(positions)]
        out[side] = [list(block[i % positions]) for i in range(layers)]
    return out
