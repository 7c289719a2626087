"""The protocol's recipe, read from a config file (``configs/protocol/multi30k.yaml``): the pairs and their
sizes, the splits, and the flags every search, training and evaluation of a pair is given.

The training flags are taken from the train config the file names (the README's recipe) and the search flags
from the search config, so the protocol and the configs a user runs cannot drift apart; the file only lists
which settings it takes, in command order, and the values it changes (the budget). Flags are kept as
``{"--name": value}`` in command order (``None``: a flag without a value), as ``summary.json`` records them.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..model.genotype import Genotype

SIZES = ("searches", "seeds", "random")
SECTIONS = ("dataset", "pairs", "splits", "train", "search", "evaluate", "search_variants", "scales", "smoke")
OPTIONAL = ("zoo_decoding",)


def dashed(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: value}`` of a config as flags ``{"--name": value}``."""
    return {f"--{k}": v for k, v in values.items()}


def flag_list(flags: Mapping[str, Any]) -> list[str]:
    """Flags as command-line words; a ``None`` value is a flag without a value, a list one with several."""
    out: list[str] = []
    for key, value in flags.items():
        out += [key] if value is None else [key, *map(str, value)] if isinstance(value, list) else [key, str(value)]
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"protocol config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _taken(section: Mapping[str, Any], names: list[str], base: Path, where: str) -> tuple[dict[str, Any], dict]:
    """(the flags ``names`` with their values from ``section['config']``, changed by ``section['set']``; the
    whole config as read)."""
    config = _read_yaml(base / section["config"])
    values = {**config, **section.get("set", {})}
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"{where}: {', '.join(missing)} neither in {section['config']} nor in its 'set'")
    return {f"--{n}": values[n] for n in names}, config


@dataclass(frozen=True)
class ProtocolConfig:
    """A protocol config file as read: ``recipe`` is the base recipe (``vocab_size``, ``average_last`` and the
    flags of ``model``, ``train``, ``search``, ``evaluate``); ``recipe_for`` applies ``--smoke``, ``--scale``
    and ``--max_steps`` to it."""

    path: Path
    dataset: str
    pairs: dict[str, dict[str, int]]
    splits: dict[str, str]
    recipe: dict[str, Any]
    search_variants: dict[str, dict[str, Any]]
    scales: dict[str, dict[str, Any]]
    smoke: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProtocolConfig:
        path = Path(path)
        data = _read_yaml(path)
        missing = [s for s in SECTIONS if s not in data]
        unknown = [s for s in data if s not in SECTIONS + OPTIONAL]
        if missing or unknown:
            raise ValueError(f"{path}: " + "; ".join(
                ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"unknown {', '.join(unknown)}"] if unknown else [])))
        for pair, sizes in data["pairs"].items():
            if set(sizes) != set(SIZES):
                raise ValueError(f"{path}: pairs.{pair} must give {', '.join(SIZES)}, got {sorted(sizes)}")
        train, model = data["train"], data["train"]["model"]
        train_flags, train_config = _taken(train, model + train["flags"], path.parent, f"{path}: train")
        search_flags, search_config = _taken(data["search"], data["search"]["flags"], path.parent, f"{path}: search")
        for what, config, key in (("train", train_config, "average_checkpoints"), ("search", search_config, "vocab_size")):
            if key not in config:
                raise ValueError(f"{path}: its {what} config {data[what]['config']} lacks {key}")
        recipe = {
            "vocab_size": search_config["vocab_size"],
            "average_last": train_config["average_checkpoints"],
            "model": {k: train_flags.pop(k) for k in [f"--{n}" for n in model]},
            "train": train_flags,
            "search": search_flags,
            "evaluate": dashed(data["evaluate"]),
            "zoo_decoding": dashed(data.get("zoo_decoding") or {}),
        }
        scales = {name: {"model": dashed(s.get("model", {})),
                         "search_variants": {v: dashed(f) for v, f in s.get("search_variants", {}).items()}}
                  for name, s in data["scales"].items()}
        smoke = dict(data["smoke"])
        for key in ("model", "train", "search", "evaluate", "zoo_decoding"):
            smoke[key] = dashed(smoke.get(key, {}))
        smoke["search_variants"] = {v: dashed(f) for v, f in smoke.get("search_variants", {}).items()}
        return cls(path=path, dataset=data["dataset"], pairs=data["pairs"], splits=data["splits"], recipe=recipe,
                   search_variants={v: dashed(f) for v, f in data["search_variants"].items()}, scales=scales,
                   smoke=smoke)

    def recipe_for(self, smoke: bool = False, scale: str | None = None, max_steps: int | None = None) -> dict[str, Any]:
        """The recipe a protocol runs with: the smoke sizes, a scale's model and a budget applied."""
        r = copy.deepcopy(self.recipe)
        if smoke:
            for key in ("vocab_size", "average_last", "model"):
                r[key] = copy.deepcopy(self.smoke[key])
            r["train"].update(self.smoke["train"])
            r["evaluate"].update(self.smoke["evaluate"])
            r["zoo_decoding"].update(self.smoke["zoo_decoding"])
            r["search"] = copy.deepcopy(self.smoke["search"])
        if scale:
            r["model"].update(self.scales[scale]["model"])
        r["train"]["--average_checkpoints"] = r["average_last"]
        if max_steps is not None:
            r["train"]["--max_steps"] = max_steps
        if r["train"]["--checkpoints_total_limit"] < r["average_last"]:
            raise ValueError("checkpoints_total_limit must be >= average_last: the averaged checkpoints must be kept")
        return r

    def variant_flags(self, variant: str | None, smoke: bool = False, scale: str | None = None) -> dict[str, Any]:
        """The search flags a ``--search_variant`` changes ({} for the base search)."""
        flags = dict((self.smoke["search_variants"] if smoke else self.search_variants).get(variant, {}))
        if scale and variant:
            flags.update(self.scales[scale]["search_variants"].get(variant, {}))
        return flags

    def sizes(self, pair: str, smoke: bool = False) -> dict[str, int]:
        return dict(self.smoke["sizes"] if smoke else self.pairs[pair])


def random_genotype(recipe: Mapping[str, Any], k: int) -> Genotype:
    """Random genotype ``k`` of a protocol: drawn uniformly from the search's space (its op lists, ``zero``
    excluded as in the derivation) with the search's node layout (a tied block when ``--tie_blocks``), at the
    trained depth, which train.py stacks it to."""
    search, model = recipe["search"], recipe["model"]
    sizes = {"encoder_layers": model["--encoder_layers"], "decoder_layers": model["--decoder_layers"]}
    ops = {side: search[f"--{side}_ops"].split(",") if search.get(f"--{side}_ops") else None
           for side in ("encoder", "decoder")}
    return Genotype.random(sizes, ops["encoder"], ops["decoder"], seed=k, tie_blocks=int(search.get("--tie_blocks", 0)))
