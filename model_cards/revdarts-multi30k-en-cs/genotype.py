"""The search space and its points: candidate op names, and the ``Genotype`` a search derives.

A genotype names one op per searchable split of every layer: ``encoder_splits`` names per encoder layer and
``decoder_splits - 1`` per decoder layer (the decoder's last split is the fixed cross-attention and is not
listed). Its JSON form, the one ``genotype.json`` files and run records hold, is

    {"encoder": [["self_attn", "ffn"], ...], "decoder": [["self_attn", "ffn"], ...]}

This file travels with saved models (``trust_remote_code``), so it imports nothing from hf_revdarts.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Canonical candidate-op names. The order is the order of the α vector in the supernet.
ENCODER_OPS: tuple[str, ...] = (
    "conv_3",
    "conv_5",
    "conv_7",
    "conv_11",
    "dynconv_3",
    "dynconv_7",
    "dynconv_11",
    "dynconv_15",
    "self_attn",
    "glu",
    "ffn",
    "identity",
    "zero",
)
DECODER_OPS: tuple[str, ...] = ENCODER_OPS + ("cross_attn",)
SIDES: tuple[str, ...] = ("encoder", "decoder")

# The vanilla Transformer expressed as a genotype: one split attends, the other is a feed-forward.
STANDARD_LAYER: tuple[str, ...] = ("self_attn", "ffn")


def side_ops(side: str) -> tuple[str, ...]:
    """All candidate ops of ``side`` ("encoder" or "decoder")."""
    if side not in SIDES:
        raise ValueError(f"side must be 'encoder' or 'decoder', got {side!r}")
    return ENCODER_OPS if side == "encoder" else DECODER_OPS


def validate_genotype(genotype: Any, num_layers: int, names_per_layer: int, allowed: tuple[str, ...], side: str) -> None:
    """Raise ``ValueError`` naming the problem when ``genotype`` is not ``num_layers`` lists of op names."""
    field = f"{side}_genotype"
    if not isinstance(genotype, (list, tuple)):
        raise ValueError(f"{field} must be a list with one list of op names per layer, got {type(genotype).__name__}")
    if num_layers < 1:
        raise ValueError(f"{side}_layers={num_layers}: the {side} needs at least one layer")
    if not genotype:
        raise ValueError(f"{field} is empty: give one list of {names_per_layer} op names per {side} layer")
    if len(genotype) != num_layers:
        raise ValueError(
            f"{field} has {len(genotype)} layers but {side}_layers={num_layers}: give one entry per layer "
            f"or change {side}_layers"
        )
    for i, layer in enumerate(genotype):
        if not isinstance(layer, (list, tuple)) or len(layer) != names_per_layer:
            got = len(layer) if isinstance(layer, (list, tuple)) else type(layer).__name__
            raise ValueError(
                f"{field}[{i}] must list {names_per_layer} op names (one per searchable split of the {side}), got {got}"
            )
        for name in layer:
            if name not in allowed:
                if side == "encoder" and name == "cross_attn":
                    raise ValueError(
                        f"{field}[{i}] uses 'cross_attn', which only exists in the decoder (the encoder has no "
                        "encoder output to attend to); pick another op"
                    )
                raise ValueError(f"{field}[{i}] has unknown op {name!r}; valid {side} ops: {', '.join(allowed)}")


def validate_search_ops(ops: Any, allowed: tuple[str, ...], side: str) -> None:
    """Raise ``ValueError`` naming ``search_{side}_ops`` when it is not ``None`` or distinct op names of ``allowed``."""
    field = f"search_{side}_ops"
    if ops is None:
        return
    if not isinstance(ops, (list, tuple)) or not all(isinstance(name, str) for name in ops):
        raise ValueError(f"{field} must be a list of op names (or None for all {side} ops), got {ops!r}")
    if not ops:
        raise ValueError(f"{field} is empty: the {side} search space needs at least one op from: {', '.join(allowed)}")
    for name in ops:
        if name not in allowed:
            hint = " ('cross_attn' exists only in the decoder)" if name == "cross_attn" else ""
            raise ValueError(f"{field} has unknown op {name!r}{hint}; valid {side} ops: {', '.join(allowed)}")
    if len(set(ops)) != len(ops):
        raise ValueError(f"{field} lists an op twice: {list(ops)}")


def validate_search_space(ops: Sequence[str] | None, side: str) -> tuple[str, ...]:
    """The candidate list of one side; ``None`` gives the full space. Raises ``ValueError`` naming a bad op."""
    allowed = side_ops(side)
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
            raise ValueError(f"a random genotype needs a positive integer {key}, got {value!r}")
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


def _layers(value: Any) -> list[Any]:
    return [list(layer) if isinstance(layer, (list, tuple)) else layer for layer in value]


class Genotype(dict):
    """One op name per searchable split of every encoder and decoder layer.

    A ``dict`` in its JSON form, ``{"encoder": [[...]], "decoder": [[...]]}``, checked when it is made: it
    serialises, compares and indexes like the plain dict that ``genotype.json`` files, run records and
    ``RevDartsSupernet.genotype()`` callers rely on, and adds the operations on genotypes in one place.
    ``validate`` checks it against a model's sizes; ``stack`` repeats a searched block to a model's depth.
    """

    def __init__(self, encoder: Any, decoder: Any) -> None:
        for side, value in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"the genotype's {side} must be a list of layers, got {type(value).__name__}")
        super().__init__(encoder=_layers(encoder), decoder=_layers(decoder))
        for side in SIDES:
            layers = self[side]
            # The first layer sets the width the others must match; the messages name the field and the layer.
            width = len(layers[0]) if layers and isinstance(layers[0], list) else 2
            validate_genotype(layers, max(1, len(layers)), width, side_ops(side), side)

    @property
    def encoder(self) -> list[list[str]]:
        return self["encoder"]

    @property
    def decoder(self) -> list[list[str]]:
        return self["decoder"]

    # ------------------------------------------------------------------ construction -------------------------
    @classmethod
    def from_dict(cls, data: Any) -> Genotype:
        """The genotype of its JSON form ``{"encoder": [[...]], "decoder": [[...]]}``."""
        if isinstance(data, Genotype):
            return data
        if not isinstance(data, Mapping) or set(data) != set(SIDES):
            keys = list(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"a genotype must hold {{'encoder': [[...]], 'decoder': [[...]]}}, got {keys}")
        return cls(encoder=data["encoder"], decoder=data["decoder"])

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        """Read a ``genotype.json``; every error names the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def standard(cls, encoder_layers: int, decoder_layers: int, decoder_splits: int = 3) -> Genotype:
        """The self_attn/ffn genotype (the Transformer baseline) for the given depths."""
        decoder = list(STANDARD_LAYER * decoder_splits)[: decoder_splits - 1]
        return cls(encoder=[list(STANDARD_LAYER)] * encoder_layers, decoder=[decoder] * decoder_layers)

    @classmethod
    def random(
        cls,
        config_or_sizes: Any,
        encoder_ops: Sequence[str] | None = None,
        decoder_ops: Sequence[str] | None = None,
        seed: int = 0,
        exclude: Sequence[str] = ("zero",),
        tie_blocks: int = 0,
    ) -> Genotype:
        """One op drawn uniformly per searchable node, deterministic in ``seed`` on every machine.

        Random genotypes are the baseline a search has to beat (Yang et al. 2020, Li & Talwalkar 2019), so they
        are drawn from exactly the space the search derives from: the same candidate lists, the same node
        layout (``tie_blocks`` as in ``RevDartsSupernet``: ``s > 0`` draws one block of ``s`` layers and
        repeats it) and the same exclusions (``zero``, which the derivation never picks, by default).

        Args:
            config_or_sizes: a ``RevDartsConfig`` or a mapping with ``encoder_layers``, ``decoder_layers`` (and
                optionally ``encoder_splits``/``decoder_splits``, default 2/3).
            encoder_ops, decoder_ops: the candidate lists (default: the full 13 / 14 ops).
        """
        if not isinstance(tie_blocks, int) or tie_blocks < 0:
            raise ValueError(f"tie_blocks={tie_blocks!r} must be an integer >= 0")
        sizes = _sizes(config_or_sizes)
        rng = random.Random(int(seed))
        out: dict[str, list[list[str]]] = {}
        for side, ops, searched in (
            ("encoder", encoder_ops, sizes["encoder_splits"]),
            ("decoder", decoder_ops, sizes["decoder_splits"] - 1),
        ):
            candidates = _candidates(ops, side_ops(side), exclude, side)
            layers = sizes[f"{side}_layers"]
            positions = min(tie_blocks, layers) if tie_blocks else layers
            block = [[rng.choice(candidates) for _ in range(searched)] for _ in range(positions)]
            out[side] = [list(block[i % positions]) for i in range(layers)]
        return cls.from_dict(out)

    # ------------------------------------------------------------------ use ----------------------------------
    def to_dict(self) -> dict[str, list[list[str]]]:
        """The JSON form (lists, as ``RevDartsConfig`` stores it)."""
        return {side: [list(layer) for layer in self[side]] for side in SIDES}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def stack(self, encoder_layers: int | None = None, decoder_layers: int | None = None) -> Genotype:
        """Repeat each side's layers as a block to reach the given depth (the paper stacks its s=2 block)."""
        out = {}
        for side, depth in (("encoder", encoder_layers), ("decoder", decoder_layers)):
            layers = self[side]
            if depth is None or depth == len(layers):
                out[side] = layers
            elif depth % len(layers):
                raise ValueError(
                    f"{side}_layers={depth} is not a multiple of the genotype's {len(layers)} {side} layers; the "
                    "genotype is stacked as a repeated block"
                )
            else:
                out[side] = layers * (depth // len(layers))
        return Genotype(**out)

    def validate(self, encoder_layers: int, decoder_layers: int, encoder_splits: int = 2, decoder_splits: int = 3
                 ) -> None:
        """Raise ``ValueError`` naming the field when this genotype does not fit a model of these sizes."""
        validate_genotype(self.encoder, encoder_layers, encoder_splits, ENCODER_OPS, "encoder")
        validate_genotype(self.decoder, decoder_layers, decoder_splits - 1, DECODER_OPS, "decoder")

    def nodes(self) -> list[tuple[str, int, int, str]]:
        """(side, layer, split, op) of every searchable node, in a fixed order."""
        return [(side, i, k, op) for side in SIDES for i, layer in enumerate(self[side]) for k, op in enumerate(layer)]

    def agreement(self, other: Genotype) -> float:
        """The share of nodes on which two genotypes of the same shape pick the same op."""
        mine, theirs = self.nodes(), Genotype.from_dict(other).nodes()
        if [n[:3] for n in mine] != [n[:3] for n in theirs]:
            raise ValueError("genotypes of different shapes cannot be compared node by node")
        return sum(a[3] == b[3] for a, b in zip(mine, theirs)) / len(mine)
