"""Parallel text for training: local folders (plain and gzip text, saved data sets, json/parquet files) and Hub
data sets, token-count batches and their resumable stream, and inputs refused naming the file, line or split."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from hf_revdarts.training.data import (
    BatchStream,
    load_parallel_text,
    pairs_from_dataset,
    shard,
    token_batches,
    tokenize_pairs,
)
from hf_revdarts.training.tokenization import encode_pairs, load_tokenizer, train_tokenizer
from testing.builders import TEXT_DE, TEXT_EN, write_lines


def test_local_folder_loading_and_errors(tmp_path: Path) -> None:
    write_lines(tmp_path / "d", "train.en", ["a b", "c d", "e"], gz=True)
    write_lines(tmp_path / "d", "train.de", ["x y", "z w", "v"])
    write_lines(tmp_path / "d", "val.en", ["a"])
    write_lines(tmp_path / "d", "val.de", ["x", "y"])
    write_lines(tmp_path / "d", "test.en", [])
    write_lines(tmp_path / "d", "test.de", [])
    src, tgt = load_parallel_text(tmp_path / "d", "en", "de", "train")
    assert src == ["a b", "c d", "e"] and tgt == ["x y", "z w", "v"]
    with pytest.raises(ValueError, match="2 lines|1 lines"):
        load_parallel_text(tmp_path / "d", "en", "de", "validation")
    with pytest.raises(ValueError, match="'fr'.*available"):
        load_parallel_text(tmp_path / "d", "en", "fr", "train")
    with pytest.raises(ValueError, match="empty"):
        load_parallel_text(tmp_path / "d", "en", "de", "test")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_parallel_text(tmp_path / "missing" / "folder", "en", "de", "train")
    with pytest.raises(FileNotFoundError, match="no files for split"):
        load_parallel_text(tmp_path / "d", "en", "de", "dev2")


def test_hub_formats() -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"translation": [{"de": "hallo", "en": "hello"}, {"de": "welt", "en": "world"}]})
    assert pairs_from_dataset(ds, "en", "de") == (["hello", "world"], ["hallo", "welt"])
    with pytest.raises(ValueError, match="'fr'"):
        pairs_from_dataset(ds, "en", "fr")
    flat = datasets.Dataset.from_dict({"en": ["a"], "de": ["b"]})
    assert pairs_from_dataset(flat, "de", "en") == (["b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        pairs_from_dataset(datasets.Dataset.from_dict({"en": [], "de": []}), "en", "de")


def test_token_batches_and_stream() -> None:
    lengths = [3, 10, 4, 9, 5, 5, 2, 8, 7, 6] * 5
    batches = token_batches(lengths, max_tokens=40, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(max(lengths[i] for i in b) * len(b) <= 40 for b in batches)
    assert batches == token_batches(lengths, max_tokens=40, seed=1)
    assert batches != token_batches(lengths, max_tokens=40, seed=1, epoch=1)
    a, b = shard(batches, 0, 2), shard(batches, 1, 2)
    assert len(a) == len(b) and not {tuple(x) for x in a} & {tuple(x) for x in b}
    examples = [([5] * n, [6] * (n + 1)) for n in lengths]
    s = BatchStream(examples, 40, seed=0)
    first = [s.next()["input_ids"].shape for _ in range(3)]
    state = s.state_dict()
    nxt = s.next()
    s2 = BatchStream(examples, 40, seed=0)
    s2.load_state_dict(state)
    assert torch.equal(s2.next()["labels"], nxt["labels"]) and len(first) == 3
    with pytest.raises(ValueError, match="max_tokens"):
        token_batches(lengths, max_tokens=5)


def _pair_folder(folder: Path, split: str, en: list[str], de: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.en").write_text("".join(s + "\n" for s in en), encoding="utf-8")
    (folder / f"{split}.de").write_text("".join(s + "\n" for s in de), encoding="utf-8")
    return folder


def test_non_utf8_bytes_and_damaged_gzip_name_file_and_line(tmp_path):
    folder = _pair_folder(tmp_path / "d", "train", ["a", "b", "c"], ["x", "y", "z"])
    (folder / "train.en").write_bytes("a\nb\nc caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train\.en, line 3, byte 6: b'\\xe9' is not valid UTF-8"):
        load_parallel_text(folder, "en", "de", "train")
    (folder / "train.en").unlink()
    with gzip.open(folder / "train.en.gz", "wb") as f:
        f.write(b"a\n\xff\nc\n")
    with pytest.raises(ValueError, match=r"train\.en\.gz, line 2"):
        load_parallel_text(folder, "en", "de", "train")
    (folder / "train.en.gz").write_bytes(gzip.compress(b"a\nb\nc\n")[:-12])
    with pytest.raises(ValueError, match=r"train\.en\.gz cannot be read as gzip"):
        load_parallel_text(folder, "en", "de", "train")
    (folder / "train.en.gz").unlink()
    (folder / "train.en").write_bytes("a\nb\nc\n".encode("utf-16"))
    with pytest.raises(ValueError, match="looks like UTF-16"):
        load_parallel_text(folder, "en", "de", "train")
    (folder / "train.en").write_bytes(gzip.compress(b"a\nb\nc\n"))
    with pytest.raises(ValueError, match=r"gzip-compressed: name it train\.en\.gz"):
        load_parallel_text(folder, "en", "de", "train")
    # a byte-order mark and Windows line ends are not part of the text
    (folder / "train.en").write_bytes(b"\xef\xbb\xbfa\r\nb\r\nc\r\n")
    assert load_parallel_text(folder, "en", "de", "train")[0] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="max_examples=0"):
        load_parallel_text(folder, "en", "de", "train", max_examples=0)


@pytest.fixture()
def wmt_like():
    """A DatasetDict shaped like wmt14 de-en: a ``translation`` column of {"de": ..., "en": ...} dicts."""
    import datasets

    def split(n: int, offset: int) -> datasets.Dataset:
        rows = [{"de": TEXT_DE[(i + offset) % len(TEXT_DE)], "en": TEXT_EN[(i + offset) % len(TEXT_EN)]} for i in range(n)]
        return datasets.Dataset.from_dict({"translation": rows})

    return datasets.DatasetDict({"train": split(6, 0), "validation": split(3, 1), "test": split(2, 2)})


def test_dataset_saved_with_save_to_disk(tmp_path, wmt_like):
    wmt_like.save_to_disk(str(tmp_path / "wmt"))
    src, tgt = load_parallel_text(tmp_path / "wmt", "en", "de", "train")
    assert (src, tgt) == ([r["en"] for r in wmt_like["train"]["translation"]], [r["de"] for r in wmt_like["train"]["translation"]])
    src, _ = load_parallel_text(tmp_path / "wmt", "de", "en", "val")  # split alias
    assert src == [r["de"] for r in wmt_like["validation"]["translation"]]
    with pytest.raises(ValueError, match=r"has no split 'dev2'; its splits are \['test', 'train', 'validation'\]"):
        load_parallel_text(tmp_path / "wmt", "en", "de", "dev2")
    with pytest.raises(ValueError, match="'fr' is not in .*translation column has \\['de', 'en'\\]"):
        load_parallel_text(tmp_path / "wmt", "en", "fr", "train")
    wmt_like["train"].save_to_disk(str(tmp_path / "single"))  # no split name: would stand for every split
    with pytest.raises(ValueError, match="single Dataset without a split name"):
        load_parallel_text(tmp_path / "single", "en", "de", "validation")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_dataset_folder_read_by_load_dataset(tmp_path, wmt_like, fmt, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "files"
    folder.mkdir()
    for name, ds in wmt_like.items():
        getattr(ds, "to_json" if fmt == "jsonl" else "to_parquet")(str(folder / f"{name}.{fmt}"))
    assert load_parallel_text(folder, "en", "de", "test") == (
        [r["en"] for r in wmt_like["test"]["translation"]], [r["de"] for r in wmt_like["test"]["translation"]]
    )
    assert len(load_parallel_text(folder, "en", "de", "validation", max_examples=2)[0]) == 2
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.jsonl").write_text('{"translation": {"en": "a", "de": null}}\n')
    with pytest.raises(ValueError, match="row 0 has de=None"):
        load_parallel_text(broken, "en", "de", "train")


def test_hub_dataset_id_goes_through_load_dataset_with_split_aliases(monkeypatch, wmt_like):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):  # the Hub, served from memory
        calls.append((path, name, split))
        if split not in wmt_like:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(wmt_like)}.')
        return wmt_like[split]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    src, tgt = load_parallel_text("wmt14", "de", "en", "val", subset="de-en")
    assert calls == [("wmt14", "de-en", "val"), ("wmt14", "de-en", "validation")]
    assert src == [r["de"] for r in wmt_like["validation"]["translation"]]
    with pytest.raises(ValueError, match="Hub dataset wmt14/de-en: Unknown split"):
        load_parallel_text("wmt14", "de", "en", "train2", subset="de-en")


def test_unaligned_or_empty_text_is_refused(small_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="2 source sentences but 1 target"):
        tokenize_pairs(small_tokenizer, ["a", "b"], ["x"], 16)
    with pytest.raises(ValueError, match="2 source sentences but 1 targets"):
        encode_pairs(small_tokenizer, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="no text to train the tokenizer on"):
        train_tokenizer(["", "  "], vocab_size=40)
    small_tokenizer.save_pretrained(tmp_path / "tok")
    assert len(load_tokenizer(tmp_path / "tok")) == len(small_tokenizer)
    (tmp_path / "tok" / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(ValueError, match=r"tok/tokenizer\.json is not valid JSON"):
        load_tokenizer(tmp_path / "tok")
