"""Parallel text: loading (Hub dataset or local folder), tokenisation and length-bucketed batching.

Local folders hold one file per split and language, ``{split}.{lang}`` or ``{split}.{lang}.gz``, one
sentence a line, line i of every language aligned (the layout of Multi30k's raw release). Hub datasets are
read with ``datasets.load_dataset``; both the ``translation`` dict column (wmt14, opus) and one column per
language are understood. Every problem is reported before any training work starts.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Split names differ between releases; a local folder may use any of these for the same role.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "validation": ("validation", "val", "valid", "dev"),
    "val": ("val", "validation", "valid", "dev"),
    "test": ("test", "test_2016_flickr"),
}


def _read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (gzip-compressed when it ends in .gz), newline-free.

    Lines end at \\n, \\r\\n or \\r (universal newlines); a UTF-8 byte-order mark is dropped. Bytes that are
    not UTF-8, or a damaged .gz, give a ``ValueError`` naming the file and the line.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'}: {e}") from e
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        hint = ""
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = " (it looks like UTF-16: save it as UTF-8)"
        elif data[:2] == b"\x1f\x8b":
            hint = f" (it is gzip-compressed: name it {path.name}.gz)"
        raise ValueError(
            f"{path}, line {line}, byte {column}: {data[e.start:e.start + 1]!r} is not valid UTF-8{hint}; data files "
            "must be UTF-8 text (convert with e.g. `iconv -f latin1 -t utf-8`)"
        ) from e
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return lines


def _local_file(folder: Path, split: str, lang: str) -> Path | None:
    for name in SPLIT_ALIASES.get(split, (split,)):
        for suffix in ("", ".gz"):
            path = folder / f"{name}.{lang}{suffix}"
            if path.is_file():
                return path
    return None


# Files that ``datasets.load_dataset(folder)`` reads (its packaged builders), not ``{split}.{lang}`` text.
DATASETS_SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow")


def local_languages(folder: str | os.PathLike, split: str) -> list[str]:
    """Languages available for ``split`` in a local folder of ``{split}.{lang}[.gz]`` files."""
    names = SPLIT_ALIASES.get(split, (split,))
    pattern = re.compile(r"^(?:%s)\.([A-Za-z_-]+?)(?:\.gz)?$" % "|".join(map(re.escape, names)))
    found = {m.group(1) for p in Path(folder).iterdir() if (m := pattern.match(p.name))}
    return sorted(lang for lang in found if f".{lang}" not in DATASETS_SUFFIXES)


def _pick_split(splits: Any, split: str, where: str) -> Any:
    """``splits[split]`` of a ``DatasetDict``, trying the split's aliases (``val`` ↔ ``validation``)."""
    for name in SPLIT_ALIASES.get(split, (split,)):
        if name in splits:
            return splits[name]
    raise ValueError(f"{where} has no split {split!r}; its splits are {sorted(splits)}")


def _has_datasets_files(folder: Path) -> bool:
    candidates = list(folder.iterdir()) + [p for d in folder.iterdir() if d.is_dir() for p in d.iterdir()]
    return any(p.is_file() and p.suffix in DATASETS_SUFFIXES for p in candidates)


def _load_saved_dataset(folder: Path, split: str) -> Any:
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: the requested split."""
    import datasets

    where = f"dataset saved with save_to_disk in {str(folder)!r}"
    try:
        loaded = datasets.load_from_disk(str(folder))
    except Exception as e:  # noqa: BLE001 - datasets raises many types; re-raised naming the folder
        raise ValueError(f"{where} cannot be read: {type(e).__name__}: {e}") from e
    if isinstance(loaded, datasets.DatasetDict):
        return _pick_split(loaded, split, where)
    own = str(loaded.split) if loaded.split is not None else None
    if own is None:
        raise ValueError(
            f"{where} is a single Dataset without a split name, so it cannot stand for split {split!r} (train and "
            "validation would silently be the same data); save a DatasetDict({'train': ..., 'validation': ...})"
        )
    if own not in SPLIT_ALIASES.get(split, (split,)):
        raise ValueError(f"{where} holds split {own!r}, not {split!r}")
    return loaded


def _load_datasets_folder(folder: Path, split: str) -> Any:
    """A local folder of JSON/JSON Lines/Parquet/CSV files read by ``datasets.load_dataset`` (splits from the
    file names: train.jsonl, validation.jsonl, ...): the requested split."""
    import datasets

    where = f"dataset folder {str(folder)!r}"
    try:
        loaded = datasets.load_dataset(str(folder))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{where} cannot be read by datasets.load_dataset: {type(e).__name__}: {e}") from e
    return _pick_split(loaded, split, where)


def _load_hub_dataset(source: str, subset: str | None, split: str) -> Any:
    import datasets  # imported late: only Hub sources need it

    names = SPLIT_ALIASES.get(split, (split,))
    for i, name in enumerate(names):
        try:
            return datasets.load_dataset(source, subset, split=name)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"dataset {source!r} is neither a local folder nor a loadable Hub dataset: {e}") from e
        except ValueError as e:
            # datasets: 'Unknown split "val". Should be one of [...]' - try the next alias (already downloaded).
            if "Unknown split" not in str(e) or i == len(names) - 1:
                raise ValueError(f"Hub dataset {source}{'/' + subset if subset else ''}: {e}") from e
    raise AssertionError("unreachable")


def _check_strings(src: list[Any], tgt: list[Any], src_lang: str, tgt_lang: str, where: str) -> None:
    for i, (s, t) in enumerate(zip(src, tgt)):
        if not isinstance(s, str) or not isinstance(t, str):
            bad_lang, bad = (src_lang, s) if not isinstance(s, str) else (tgt_lang, t)
            raise ValueError(f"{where}: row {i} has {bad_lang}={bad!r} ({type(bad).__name__}); every sentence must be a string")


def pairs_from_dataset(dataset: Any, src_lang: str, tgt_lang: str, where: str = "dataset") -> tuple[list[str], list[str]]:
    """Source and target sentences of a ``datasets.Dataset`` with a ``translation`` dict column
    (``{"de": ..., "en": ...}``) or one column per language."""
    if not hasattr(dataset, "column_names") or isinstance(dataset.column_names, dict):
        splits = sorted(dataset.keys()) if hasattr(dataset, "keys") else None
        raise ValueError(f"{where} is not one split of a dataset (splits: {splits}); pass e.g. dataset['train']")
    columns = list(dataset.column_names)
    if len(dataset) == 0:
        raise ValueError(f"{where} is empty: no sentence pairs to train on")
    if "translation" in columns:
        first = dataset[0]["translation"]
        if not isinstance(first, dict):
            raise ValueError(f"{where}: the 'translation' column must hold {{language: sentence}} dicts, got {first!r}")
        langs = sorted(first.keys())
        for lang in (src_lang, tgt_lang):
            if lang not in langs:
                raise ValueError(f"language {lang!r} is not in {where}; its translation column has {langs}")
        rows = dataset["translation"]
        src = [r[src_lang] if isinstance(r, dict) else None for r in rows]
        tgt = [r[tgt_lang] if isinstance(r, dict) else None for r in rows]
    else:
        for lang in (src_lang, tgt_lang):
            if lang not in columns:
                raise ValueError(
                    f"language {lang!r} is not in {where}; it has no 'translation' column and its columns are {columns}"
                )
        src, tgt = list(dataset[src_lang]), list(dataset[tgt_lang])
    _check_strings(src, tgt, src_lang, tgt_lang, where)
    return src, tgt


def load_parallel_text(
    source: str | os.PathLike,
    src_lang: str,
    tgt_lang: str,
    split: str,
    subset: str | None = None,
    max_examples: int | None = None,
) -> tuple[list[str], list[str]]:
    """Aligned source/target sentences of one split.

    ``source`` is one of

    * a local folder of ``{split}.{lang}[.gz]`` UTF-8 text files, line i of each language aligned;
    * a local folder written by ``Dataset``/``DatasetDict.save_to_disk`` (read with ``datasets.load_from_disk``);
    * a local folder of JSON/JSON Lines/Parquet/CSV files named by split (``train.jsonl``, ...), read with
      ``datasets.load_dataset(folder)``;
    * a Hub dataset id (``subset`` is its configuration, e.g. ``"de-en"`` for wmt14).

    Datasets may have a ``translation`` column of ``{lang: sentence}`` dicts (wmt14, opus) or one column per
    language. Raises ``FileNotFoundError``/``ValueError`` with the cause for a missing or empty dataset, a
    language or split that is not there, files of different line counts, or text that is not UTF-8.
    """
    if src_lang == tgt_lang:
        raise ValueError(f"source and target language are both {src_lang!r}; give two different languages")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples={max_examples!r} must be a positive integer (or None for all examples)")
    path = Path(source)
    if path.exists():
        if not path.is_dir():
            raise ValueError(
                f"dataset {str(source)!r} is a file; give a folder of {{split}}.{{lang}}[.gz] files, a folder saved "
                "with save_to_disk, or a folder of train/validation/test .jsonl/.parquet files"
            )
        langs = local_languages(path, split)
        if not langs and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            dataset = _load_saved_dataset(path, split)
            where = f"{path} split {split}"
            src, tgt = pairs_from_dataset(dataset, src_lang, tgt_lang, where)
        elif not langs and _has_datasets_files(path):
            dataset = _load_datasets_folder(path, split)
            where = f"{path} split {split}"
            src, tgt = pairs_from_dataset(dataset, src_lang, tgt_lang, where)
        else:
            if not langs:
                present = sorted(p.name for p in path.iterdir())[:20]
                raise FileNotFoundError(
                    f"no files for split {split!r} in {str(path)!r} (expected {split}.<lang> or {split}.<lang>.gz; "
                    f"found {present})"
                )
            files = {}
            for lang in (src_lang, tgt_lang):
                f = _local_file(path, split, lang)
                if f is None:
                    raise ValueError(f"language {lang!r} is not in {str(path)!r} for split {split!r}; available: {langs}")
                files[lang] = f
            src, tgt = _read_lines(files[src_lang]), _read_lines(files[tgt_lang])
            if len(src) != len(tgt):
                raise ValueError(
                    f"{files[src_lang]} has {len(src)} lines but {files[tgt_lang]} has {len(tgt)}: parallel files must "
                    "be aligned line by line"
                )
            where = f"{files[src_lang]} / {files[tgt_lang]}"
    else:
        if os.sep in str(source) and not re.match(r"^[\w.-]+/[\w.-]+$", str(source)):
            raise FileNotFoundError(f"dataset folder {str(source)!r} does not exist")
        ds = _load_hub_dataset(str(source), subset, split)
        where = f"Hub dataset {source}{'/' + subset if subset else ''} split {split}"
        src, tgt = pairs_from_dataset(ds, src_lang, tgt_lang, where)
    if not src or all(not s.strip() for s in src):
        raise ValueError(f"{where} is empty: no sentence pairs for split {split!r}")
    if max_examples is not None:
        src, tgt = src[:max_examples], tgt[:max_examples]
    return src, tgt


def get_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A joint BPE tokenizer trained on ``texts`` (pad 0, bos 1, eos 2, unk 3; eos appended)."""
    from .tokenization import train_tokenizer

    return train_tokenizer(list(texts), vocab_size)


def tokenize_pairs(
    tokenizer: Any, src: Sequence[str], tgt: Sequence[str], max_length: int
) -> list[tuple[list[int], list[int]]]:
    """Token ids (eos appended by the tokenizer) of each pair, truncated to ``max_length``; empty pairs dropped."""
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} source sentences but {len(tgt)} target sentences: pairs must be aligned")
    if max_length < 2:
        raise ValueError(f"max_length={max_length} leaves no room for a token besides </s>; use max_length >= 2")
    enc = tokenizer(list(src), text_target=list(tgt), truncation=True, max_length=max_length)
    pairs = [(list(s), list(t)) for s, t in zip(enc["input_ids"], enc["labels"]) if len(s) > 1 and len(t) > 1]
    if not pairs:
        raise ValueError("every sentence pair is empty after tokenisation")
    return pairs


def token_batches(
    lengths: Sequence[int], max_tokens: int, seed: int = 0, epoch: int = 0, shuffle: bool = True
) -> list[list[int]]:
    """Group example indices into batches of at most ``max_tokens`` (padded) tokens.

    Examples are sorted by length (ties broken at random when shuffling) so a batch holds similar lengths
    and little padding; the order of the batches is then shuffled. Deterministic in (seed, epoch), which
    a resumed run relies on to see the same batches.
    """
    if max_tokens < max(lengths):
        raise ValueError(f"max_tokens={max_tokens} is smaller than the longest example ({max(lengths)} tokens)")
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    order.sort(key=lambda i: lengths[i])  # stable: shuffled order among equal lengths
    batches, current, longest = [], [], 0
    for i in order:
        longest_new = max(longest, lengths[i])
        if current and longest_new * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_new = [], lengths[i]
        current.append(i)
        longest = longest_new
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard(batches: list[list[int]], rank: int, world: int, keep_all: bool = False) -> list[list[int]]:
    """This rank's batches: every rank gets the same number so DDP steps match. Training drops the remainder (the
    next epoch reshuffles); with ``keep_all`` (evaluation) batches are split instead, so every example is seen
    once, on one rank (a remainder that cannot be split, fewer examples than ranks, is dropped with a warning)."""
    if keep_all:
        batches = [list(b) for b in batches]
        while batches and (len(batches) % world or len(batches) < world):
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            if len(batches[largest]) < 2:
                break
            half = len(batches[largest]) // 2
            batches[largest:largest + 1] = [batches[largest][:half], batches[largest][half:]]
    usable = len(batches) - len(batches) % world
    if usable == 0:
        raise ValueError(
            f"only {len(batches)} batches for {world} processes: use more data, a smaller --max_tokens or fewer "
            "processes"
        )
    if keep_all and usable < len(batches):
        logger.warning("%d of %d evaluation examples are left out: they cannot be spread over %d processes",
                       sum(len(b) for b in batches[usable:]), sum(len(b) for b in batches), world)
    return batches[rank:usable:world]


def collate(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` and ``labels`` padded with -100 (ignored by the loss)."""
    src_len = max(len(s) for s, _ in pairs)
    tgt_len = max(len(t) for _, t in pairs)
    ids = torch.full((len(pairs), src_len), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), src_len), dtype=torch.long)
    labels = torch.full((len(pairs), tgt_len), -100, dtype=torch.long)
    for i, (s, t) in enumerate(pairs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, : len(t)] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class BatchStream:
    """An endless, resumable stream of this rank's batches over one dataset (epoch after epoch)."""

    examples: list[tuple[list[int], list[int]]]
    max_tokens: int
    seed: int
    rank: int = 0
    world: int = 1
    shuffle: bool = True
    pad_id: int = 0
    epoch: int = 0
    position: int = 0
    _batches: list[list[int]] | None = field(default=None, repr=False)

    def _epoch_batches(self) -> list[list[int]]:
        if self._batches is None:
            lengths = [max(len(s), len(t)) for s, t in self.examples]
            all_batches = token_batches(lengths, self.max_tokens, self.seed, self.epoch, self.shuffle)
            self._batches = shard(all_batches, self.rank, self.world, keep_all=not self.shuffle)
        return self._batches

    def __len__(self) -> int:
        return len(self._epoch_batches())

    def next(self) -> dict[str, torch.Tensor]:
        batches = self._epoch_batches()
        if self.position >= len(batches):
            self.epoch, self.position, self._batches = self.epoch + 1, 0, None
            batches = self._epoch_batches()
        batch = batches[self.position]
        self.position += 1
        return collate([self.examples[i] for i in batch], self.pad_id)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._batches = int(state["epoch"]), int(state["position"]), None
