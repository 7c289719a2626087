"""What a result was made from, and whether the files a run reads back are whole.

* ``fingerprint_model_folder(folder)`` records what an evaluation evaluated (sha256 of the weights and the
  tokenizer files, and the genotype); ``check_fingerprint(folder, recorded)`` refuses results made with
  another model, so a model card can only carry the BLEU of the folder it describes.
* ``verify_checkpoint(folder)`` / ``load_state_checked(accelerator, folder)`` / ``load_checkpoint_checked(path)``
  turn a truncated or corrupt checkpoint into one error that names the file and the previous checkpoint,
  instead of torch's ``failed finding central directory`` / ``[Errno 22]``, or worse, nothing: accelerate
  skips an unreadable RNG state silently (the resumed run is then no longer reproducible), and torch.load
  reads a zip whose data bytes were damaged without noticing (the zip's CRCs are never checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FINGERPRINT_FORMAT = 1
WEIGHT_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
LEGACY_WEIGHT_PATTERNS = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class FingerprintMismatchError(ValueError):
    """Results recorded for one model folder were offered for another."""


class CheckpointError(RuntimeError):
    """A checkpoint folder or file cannot be read back."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    for patterns in (WEIGHT_PATTERNS, LEGACY_WEIGHT_PATTERNS):
        found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
        if found:
            return found
    return []


def fingerprint_model_folder(folder: str | os.PathLike) -> dict[str, Any]:
    """``{"format": 1, "files": {name: sha256}, "genotype": {"encoder": ..., "decoder": ...}}`` of a saved model
    folder: its weights file(s), ``tokenizer.json``/``tokenizer_config.json`` where present, and the genotype
    of its config.json. Raises ``FileNotFoundError`` when the folder has no config or no weights."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: it has no config.json")
    weights = _weight_files(folder)
    if not weights:
        raise FileNotFoundError(f"{folder} has no weights file (model.safetensors or pytorch_model.bin)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from e
    files = {p.name: sha256_file(p) for p in weights}
    files.update({name: sha256_file(folder / name) for name in TOKENIZER_FILES if (folder / name).is_file()})
    return {
        "format": FINGERPRINT_FORMAT,
        "files": files,
        "genotype": {"encoder": config.get("encoder_genotype"), "decoder": config.get("decoder_genotype")},
    }


def _genotype_difference(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    for side in ("encoder", "decoder"):
        a, b = recorded.get(side), current.get(side)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                return f"the {side} genotype has {len(b)} layers, the results were made with {len(a)}"
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            return f"the {side} genotype's layer {i} is {b}, the results were made with {a}"
        return f"the {side} genotype is {b}, the results were made with {a}"
    return None


def check_fingerprint(folder: str | os.PathLike, recorded: Mapping[str, Any] | None, what: str = "the results") -> None:
    """Raise :class:`FingerprintMismatchError` naming every difference between ``recorded`` (a
    ``fingerprint_model_folder`` result stored with the results) and the folder as it is now."""
    folder = Path(folder)
    if not isinstance(recorded, Mapping) or "files" not in recorded:
        raise FingerprintMismatchError(
            f"{what} record no fingerprint of the model they were made with, so they cannot be tied to {folder}; "
            "evaluate this folder again (evaluate.py records it)"
        )
    if recorded.get("format") != FINGERPRINT_FORMAT:
        raise FingerprintMismatchError(
            f"{what} hold a fingerprint of format {recorded.get('format')!r}, this version reads format "
            f"{FINGERPRINT_FORMAT}; evaluate {folder} again"
        )
    current = fingerprint_model_folder(folder)
    then, now = dict(recorded["files"]), current["files"]
    problems = []
    for name in sorted(set(then) | set(now)):
        if name not in now:
            problems.append(f"{name} was evaluated but is not in the folder")
        elif name not in then:
            problems.append(f"{name} is in the folder but was not part of the evaluated model")
        elif then[name] != now[name]:
            problems.append(f"{name} differs (sha256 {now[name][:12]}…, evaluated {str(then[name])[:12]}…)")
    genotype = _genotype_difference(recorded.get("genotype") or {}, current["genotype"])
    if genotype:
        problems.append(genotype)
    if problems:
        raise FingerprintMismatchError(
            f"{what} were not made with the model in {folder}: " + "; ".join(problems)
            + ". Evaluate this folder again, or give the results of this model."
        )


# ---------------------------------------------------------------- checkpoints


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """A run's ``checkpoint-*`` folders that were written to the end, oldest first: ``train_state.json`` is
    written last, so a folder without it is a save that was cut off."""
    return [c for c in sorted(Path(output_dir).glob("checkpoint-*")) if (c / "train_state.json").is_file()]


def previous_checkpoint(checkpoint: str | os.PathLike) -> Path | None:
    """The complete ``checkpoint-*`` sibling saved before ``checkpoint``."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        checkpoint = checkpoint.parent
    older = [c for c in complete_checkpoints(checkpoint.parent) if c.name < checkpoint.name]
    return older[-1] if older else None


def _advice(checkpoint: Path) -> str:
    prev = previous_checkpoint(checkpoint)
    if prev is not None:
        return f"resume from the previous checkpoint instead: --resume_from_checkpoint {prev}"
    return "there is no earlier checkpoint next to it; start the run again without --resume_from_checkpoint"


def _check_safetensors(path: Path) -> None:
    # The header lists every tensor's byte range: the file must be exactly header + data (no data checksum).
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"header of {n} bytes announced, file has {size}")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size != 8 + n + end:
        raise ValueError(f"file has {size} bytes, its header describes {8 + n + end} (truncated or appended to)")


def _check_zip(path: Path) -> None:
    # torch.save writes a zip with CRC-32 per record; torch.load never checks them, testzip does.
    if not zipfile.is_zipfile(path):
        raise ValueError("not a complete torch file (no zip directory at its end: truncated?)")
    with zipfile.ZipFile(path) as z:
        bad = z.testzip()
    if bad is not None:
        raise ValueError(f"record {bad} fails its CRC check (the file is damaged)")


def verify_file(path: str | os.PathLike) -> None:
    """Check that one weights/state file is whole (safetensors: sizes; torch/pickle zips: every CRC; JSON:
    parses). Raises :class:`CheckpointError` naming the file and the previous checkpoint."""
    path = Path(path)
    try:
        if not path.is_file():
            raise ValueError("missing")
        if path.stat().st_size == 0:
            raise ValueError("empty (0 bytes)")
        if path.suffix == ".safetensors":
            _check_safetensors(path)
        elif path.suffix in (".bin", ".pkl", ".pt", ".pth"):
            _check_zip(path)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({e}); {_advice(path.parent)}") from e


def verify_checkpoint(folder: str | os.PathLike) -> None:
    """Check every file of an accelerate ``save_state`` folder before anything is loaded from it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not any(p.name in ("model.safetensors", "pytorch_model.bin") for p in files):
        raise CheckpointError(
            f"checkpoint {folder} holds no model weights (model.safetensors or pytorch_model.bin); {_advice(folder)}"
        )
    for path in files:
        verify_file(path)


def load_state_checked(accelerator: Any, folder: str | os.PathLike, **kwargs: Any) -> None:
    """``accelerator.load_state(folder)`` after :func:`verify_checkpoint`; a file that is whole but does not
    fit the model (other sizes or genotype) gives a :class:`CheckpointError` naming the checkpoint."""
    verify_checkpoint(folder)
    try:
        accelerator.load_state(str(folder), **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised with the folder named, the cause chained
        raise CheckpointError(
            f"checkpoint {folder} could not be loaded into this run ({type(e).__name__}: {e}); was it written by a "
            "run with other model settings (sizes, genotype, search space)?"
        ) from e


def load_checkpoint_checked(path: str | os.PathLike, map_location: str = "cpu", weights_only: bool = True) -> Any:
    """Load one ``.safetensors`` or ``torch.save`` file, with errors that name it and the previous checkpoint."""
    path = Path(path)
    verify_file(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device=str(map_location))
        import torch

        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not load {path} ({type(e).__name__}: {e}); {_advice(path.parent)}") from e
