"""Checkpoint averaging: the mean of the weights of the last N checkpoints of one training run.

Averaging the last few checkpoints is part of the standard small-data translation recipe (Vaswani et al.
2017; fairseq ``scripts/average_checkpoints.py``): it smooths the noise of the last updates and usually
adds a few tenths of BLEU at no training cost. This module reads the weights of

- accelerate checkpoint folders, as ``Accelerator.save_state`` writes them (``training/common.py``
  ``save_checkpoint``): ``pytorch_model.bin`` (``safe_serialization=False``) or ``model.safetensors``;
- saved model folders (``save_pretrained``): ``model.safetensors``, sharded ``model-*.safetensors`` with
  their index, or ``pytorch_model.bin``;
- a single weights file given directly,

checks that every file holds the same keys with the same shapes, and averages in fp32.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..utils.integrity import complete_checkpoints

logger = logging.getLogger(__name__)

# The names accelerate (``save_state``) and transformers (``save_pretrained``) give the first model's weights.
_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
_SHARD_INDEX = "model.safetensors.index.json"

PathLike = str | os.PathLike


def _weight_files(path: Path) -> list[Path]:
    """The weight file(s) of a checkpoint/model folder or a weights file; clear error if there are none."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint folder or weights file")
    for name in _WEIGHT_FILES:
        if (path / name).is_file():
            return [path / name]
    index = path / _SHARD_INDEX
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a valid safetensors shard index ({e})") from e
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shards that are missing: {missing}")
        return [path / s for s in shards]
    raise FileNotFoundError(
        f"{path} holds no model weights: expected one of {', '.join(_WEIGHT_FILES)} or {_SHARD_INDEX} "
        "(an accelerate checkpoint folder or a save_pretrained folder)"
    )


def load_weights(path: PathLike) -> dict[str, torch.Tensor]:
    """The model state dict stored in a checkpoint folder, model folder or weights file (on CPU)."""
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(path)):
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(str(file), device="cpu")
            else:
                part = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated/garbled files raise library-specific errors
            raise ValueError(f"{file}: cannot read the weights ({type(e).__name__}: {e})") from e
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise ValueError(f"{file}: expected a mapping of parameter names to tensors")
        state.update(part)
    return state


def average_checkpoints(paths: Sequence[PathLike]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the weights stored at ``paths`` (summed in fp32, returned in the first's dtypes).

    Every path must hold the same parameter names with the same shapes; a ``ValueError`` names the first
    file that differs from ``paths[0]`` and how. Integer tensors (counters, index buffers) cannot be
    averaged and must be equal in every file.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("average_checkpoints needs at least one checkpoint path")
    first = load_weights(paths[0])
    if not first:
        raise ValueError(f"{paths[0]}: the weights file holds no tensors")
    dtypes = {k: v.dtype for k, v in first.items()}
    # Copies: tied weights are one tensor under several keys (torch.load keeps the aliasing), and .float()
    # of an fp32 tensor is the tensor itself, so in-place sums would add into every alias.
    sums = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone() for k, v in first.items()}
    for path in paths[1:]:
        state = load_weights(path)
        missing, extra = sorted(set(first) - set(state)), sorted(set(state) - set(first))
        if missing or extra:
            raise ValueError(
                f"{path}: its parameter names differ from {paths[0]}'s: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, extra {extra[:5]}{' ...' if len(extra) > 5 else ''}"
            )
        for key, value in state.items():
            if value.shape != first[key].shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(value.shape)} but {tuple(first[key].shape)} in {paths[0]}"
                )
            if value.is_floating_point() != first[key].is_floating_point():
                raise ValueError(f"{path}: {key} is {value.dtype} but {first[key].dtype} in {paths[0]}")
            if value.is_floating_point():
                sums[key] += value.float()
            elif not torch.equal(value, first[key]):
                raise ValueError(f"{path}: integer tensor {key} differs from {paths[0]}'s and cannot be averaged")
    n = len(paths)
    logger.info("averaged %d checkpoints: %s", n, ", ".join(str(p) for p in paths))
    return {k: (v / n).to(dtypes[k]) if v.is_floating_point() else v for k, v in sums.items()}


def load_averaged_weights(model: torch.nn.Module, paths: Sequence[PathLike]) -> torch.nn.Module:
    """Load the average of ``paths`` into ``model`` in place (and return it).

    A saved file may lack the keys of weights tied to another (safetensors stores a shared tensor once);
    those are accepted when the model ties them. Any other missing or unexpected key is an error.
    """
    state = average_checkpoints(paths)
    result = model.load_state_dict(state, strict=False)
    tied = _tied_keys(model)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"the averaged weights of {[str(p) for p in paths]} do not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    if result.missing_keys and hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def _tied_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys whose tensor shares storage with an earlier key (tied embeddings and the like)."""
    seen: dict[int, str] = {}
    tied: set[str] = set()
    for key, value in model.state_dict(keep_vars=True).items():
        ptr = value.data_ptr()
        if ptr in seen:
            tied.add(key)
            tied.add(seen[ptr])  # either side of a tie may be the one a file dropped
        else:
            seen[ptr] = key
    return tied


def latest_checkpoints(output_dir: PathLike, n: int) -> list[Path]:
    """The ``n`` newest complete ``checkpoint-*`` folders of a training run, oldest first."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    found = complete_checkpoints(output_dir)
    if len(found) < n:
        raise FileNotFoundError(
            f"{output_dir} has {len(found)} complete checkpoint-* folder(s), {n} asked for averaging; keep more "
            "with --checkpoints_total_limit"
        )
    return found[-n:]
