"""No silent failures (issue 11, library side): non-finite training, results bound to their model, checkpoints
that name the broken file, data/config/generation inputs that name the problem, quiet generation, and
Hub-format data sets loaded through the path a user takes."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers

from hf_revdarts import RevDartsForConditionalGeneration
from hf_revdarts.training.data import load_parallel_text, tokenize_pairs
from hf_revdarts.training.tokenization import encode_pairs, load_tokenizer, save_tokenizer, train_tokenizer
from hf_revdarts.utils.guards import (
    NonFiniteError,
    NonFiniteGuard,
    assert_finite_state,
    finite_json_dumps,
    is_finite_model,
)
from hf_revdarts.utils.integrity import (
    CheckpointError,
    FingerprintMismatchError,
    check_fingerprint,
    fingerprint_model_folder,
    load_checkpoint_checked,
    load_state_checked,
    verify_checkpoint,
)

sys.path.insert(0, str(Path(__file__).parent))
from _helpers import padded_batch, tiny_config  # noqa: E402

TEXT_EN = ["a man rides a bike", "two dogs play in the snow", "a girl reads a book"] * 4
TEXT_DE = ["ein mann fährt rad", "zwei hunde spielen im schnee", "ein mädchen liest ein buch"] * 4


def small_model(**kw) -> RevDartsForConditionalGeneration:
    torch.manual_seed(0)
    defaults = dict(layers=1, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    defaults.update(kw)
    return RevDartsForConditionalGeneration(tiny_config(**defaults))


def diverging_run(
    guard: NonFiniteGuard | None, steps: int = 12, model: RevDartsForConditionalGeneration | None = None
) -> tuple[RevDartsForConditionalGeneration, list]:
    """SGD with lr=1000: the loss is huge at step 1 and NaN from step 3 (checked below)."""
    model = model if model is not None else small_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e3)
    batch = padded_batch(60)
    losses = []
    for step in range(steps):
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        if guard is None or guard.check(step, loss, parameters=model.parameters()):
            opt.step()
        opt.zero_grad()
        if guard is not None and step == 1:
            guard.last_good_checkpoint = "out/checkpoint-000002"
    return model, losses


# ---------------------------------------------------------------- non-finite training (item 1)


def test_unguarded_divergence_writes_nan_into_the_weights():
    model, losses = diverging_run(None)
    assert any(l != l for l in losses)  # the scenario is real: NaN losses
    assert not is_finite_model(model)
    with pytest.raises(NonFiniteError, match=r"refusing to save the best model: \d+ of its \d+ tensors hold NaN/inf"):
        assert_finite_state(model, "best model")


def test_guard_skips_counts_and_stops_naming_step_loss_and_checkpoint():
    guard = NonFiniteGuard(max_skipped=3)
    model = small_model()
    with pytest.raises(NonFiniteError) as err:
        diverging_run(guard, model=model)
    message = str(err.value)
    assert guard.skipped == 4 and len(guard.skipped_steps) == 4
    last = guard.skipped_steps[-1]
    assert f"at step {last}" in message and "loss=nan" in message
    assert "out/checkpoint-000002" in message and "max_skipped=3" in message
    # every skipped step left the weights alone: what a checkpoint would save is still finite
    assert is_finite_model(model)


def test_guard_keeps_weights_finite_and_state_round_trips():
    guard = NonFiniteGuard(max_skipped=100)
    model, losses = diverging_run(guard, steps=8)
    assert is_finite_model(model)
    assert guard.skipped == sum(1 for l in losses if l != l) > 0
    again = NonFiniteGuard(max_skipped=100)
    again.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert again.state_dict() == guard.state_dict()


def test_guard_decides_like_the_other_ranks_and_checks_its_arguments():
    other_rank_bad = torch.tensor([1.0, 0.0])  # another process saw a NaN loss
    guard = NonFiniteGuard(max_skipped=5, sync=lambda t: t + other_rank_bad)
    assert guard.check(0, torch.tensor(2.0), grad_norm=torch.tensor(1.0)) is False
    assert NonFiniteGuard(max_skipped=5).check(0, torch.tensor(2.0), grad_norm=torch.tensor(1.0)) is True
    assert NonFiniteGuard(max_skipped=5).check(0, 2.0, grad_norm=float("inf")) is False
    with pytest.raises(NonFiniteError, match="no checkpoint was saved"):
        NonFiniteGuard(max_skipped=0).check(7, float("nan"), grad_norm=1.0)
    with pytest.raises(ValueError, match="max_skipped"):
        NonFiniteGuard(max_skipped=-1)


def test_finite_json_refuses_nan_naming_the_key_path():
    good = {"history": [{"step": 1, "loss": 2.5}], "best": {"bleu": 30.0}}
    assert json.loads(finite_json_dumps(good, indent=1)) == good
    bad = {"history": [{"loss": 2.5}, {"loss": float("nan")}], "best": {"val_loss": float("inf")}}
    with pytest.raises(ValueError, match=r"history\[1\]\.loss = nan.*best\.val_loss = inf"):
        finite_json_dumps(bad, where="train_summary.json")
    state = {"w": torch.ones(2), "b": torch.tensor([0.0, float("nan")]), "n": torch.tensor([3])}
    with pytest.raises(NonFiniteError, match=r"1 of its 2 tensors hold NaN/inf \(b\)"):
        assert_finite_state(state)


# ---------------------------------------------------------------- results bound to their model (item 3)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT_EN + TEXT_DE, vocab_size=60, min_frequency=1, model_max_length=32)


def _save(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    return folder


def test_fingerprint_matches_its_folder_and_names_what_differs(tmp_path, tokenizer):
    model = small_model(vocab_size=len(tokenizer))
    folder = _save(model, tokenizer, tmp_path / "model")
    recorded = json.loads(json.dumps(fingerprint_model_folder(folder)))  # as stored in the eval JSON
    assert set(recorded["files"]) == {"model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    check_fingerprint(folder, recorded)

    other = _save(small_model(vocab_size=len(tokenizer), layers=2), tokenizer, tmp_path / "other")
    with pytest.raises(FingerprintMismatchError, match=r"model.safetensors differs.*genotype"):
        check_fingerprint(other, recorded)
    retrained = tmp_path / "retrained"
    shutil.copytree(folder, retrained)
    train_tokenizer(TEXT_DE, vocab_size=60, min_frequency=1).save_pretrained(tmp_path / "t2")
    shutil.copy(tmp_path / "t2" / "tokenizer.json", retrained / "tokenizer.json")
    with pytest.raises(FingerprintMismatchError, match=r"tokenizer.json differs") as err:
        check_fingerprint(retrained, recorded)
    assert "model.safetensors" not in str(err.value)
    with pytest.raises(FingerprintMismatchError, match="record no fingerprint"):
        check_fingerprint(folder, None)
    with pytest.raises(FileNotFoundError, match="no weights"):
        (retrained / "model.safetensors").unlink()
        fingerprint_model_folder(retrained)


# ---------------------------------------------------------------- checkpoints (item 5)


def _checkpoints(tmp_path: Path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt = accelerator.prepare(model, opt)
    batch = padded_batch(60)
    for step in (1, 2):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        folder = tmp_path / f"checkpoint-{step:06d}"
        accelerator.save_state(str(folder), safe_serialization=True)
        (folder / "train_state.json").write_text(json.dumps({"step": step}))
    return accelerator, model, tmp_path / "checkpoint-000001", tmp_path / "checkpoint-000002"


def test_damaged_checkpoints_name_the_file_and_the_previous_checkpoint(tmp_path):
    accelerator, model, first, second = _checkpoints(tmp_path)
    verify_checkpoint(second)
    load_state_checked(accelerator, second)
    for name, damage in (
        ("model.safetensors", lambda b: b[:-64]),  # truncated
        ("optimizer.bin", lambda b: b[: len(b) // 2]),  # truncated
        ("random_states_0.pkl", lambda b: b[:-10]),  # accelerate itself skips this one without a word
        ("optimizer.bin", lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:]),  # one flipped data byte
    ):
        path = second / name
        original = path.read_bytes()
        path.write_bytes(damage(original))
        with pytest.raises(CheckpointError) as err:
            load_state_checked(accelerator, second)
        assert str(path) in str(err.value), err.value
        assert f"--resume_from_checkpoint {first}" in str(err.value)
        path.write_bytes(original)
    (first / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.*no earlier checkpoint"):
        load_checkpoint_checked(first / "model.safetensors")
    assert set(load_checkpoint_checked(second / "model.safetensors")) >= {"model.shared.weight"}


def test_checkpoint_of_another_model_is_named(tmp_path):
    from accelerate import Accelerator

    _, _, _, second = _checkpoints(tmp_path)
    accelerator = Accelerator(cpu=True)
    other = accelerator.prepare(small_model(d_model=24))
    with pytest.raises(CheckpointError, match=r"checkpoint-000002 could not be loaded into this run"):
        load_state_checked(accelerator, second)
    with pytest.raises(CheckpointError, match="does not exist"):
        verify_checkpoint(tmp_path / "checkpoint-000009")
    del other


@pytest.mark.parametrize("kind", ["derived", "supernet"])
def test_safetensors_checkpoints_restore_tied_head_and_tied_alpha_exactly(tmp_path, kind):
    """What switching save_state to safe_serialization=True relies on (tied lm_head, α shared by tied layers)."""
    from accelerate import Accelerator

    from hf_revdarts.search import RevDartsSupernet

    def build():
        torch.manual_seed(0)
        return RevDartsSupernet(tiny_config(layers=4), 2) if kind == "supernet" else small_model()

    accelerator = Accelerator(cpu=True)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, opt = accelerator.prepare(model, opt)
    model(**padded_batch(60)).loss.backward()
    opt.step()
    accelerator.save_state(str(tmp_path / "ckpt"), safe_serialization=True)
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    torch.manual_seed(1)
    again = build()
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-2)
    accelerator2 = Accelerator(cpu=True)
    again, opt2 = accelerator2.prepare(again, opt2)
    load_state_checked(accelerator2, tmp_path / "ckpt")
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert again.lm_head.weight.data_ptr() == again.model.shared.weight.data_ptr()
    if kind == "supernet":
        alphas = {id(m.alpha) for m in again.modules() if hasattr(m, "alpha")}
        assert len(alphas) == len(list(again.arch_parameters()))  # still one tensor per tied group


# ---------------------------------------------------------------- data files and data sets (items 5, 7)


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


def test_unaligned_or_empty_text_is_refused(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="2 source sentences but 1 target"):
        tokenize_pairs(tokenizer, ["a", "b"], ["x"], 16)
    with pytest.raises(ValueError, match="2 source sentences but 1 targets"):
        encode_pairs(tokenizer, ["a", "b"], ["x"])
    with pytest.raises(ValueError, match="no text to train the tokenizer on"):
        train_tokenizer(["", "  "], vocab_size=40)
    tokenizer.save_pretrained(tmp_path / "tok")
    assert len(load_tokenizer(tmp_path / "tok")) == len(tokenizer)
    (tmp_path / "tok" / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    with pytest.raises(ValueError, match=r"tok/tokenizer\.json is not valid JSON"):
        load_tokenizer(tmp_path / "tok")


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(encoder_genotype=[]), "encoder_genotype is empty"),
        (dict(encoder_layers=0, encoder_genotype=[]), "encoder_layers=0 must be a positive integer"),
        (dict(num_heads=0), "num_heads=0 must be a positive integer"),
        (dict(d_model=0), "d_model=0"),
        (dict(dropout=1.5), r"dropout=1.5 must be a probability in \[0, 1\)"),
        (dict(ffn_multiplier=0), "ffn_multiplier=0"),
        (dict(embedding_dim=0), "embedding_dim=0"),
        (dict(pad_token_id=60), r"pad_token_id=60 is not a token id of the vocabulary \(0..59\)"),
    ],
)
def test_bad_sizes_and_empty_genotype_are_value_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        tiny_config(**kwargs)


# ---------------------------------------------------------------- generation (items 5, 6)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _generate_quietly(model, **kw) -> tuple[torch.Tensor, list[str]]:
    handler = _Records()
    log = logging.getLogger("transformers")
    log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = model.generate(**kw)
    finally:
        log.removeHandler(handler)
    return out, handler.messages + [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def gen_model(tokenizer):
    return small_model(vocab_size=len(tokenizer), max_position_embeddings=12).eval()


def test_generation_is_quiet_and_plain_calls_reach_the_position_limit(gen_model, tokenizer):
    enc = dict(tokenizer(["a man rides a bike"], return_tensors="pt"))
    eos = gen_model.config.eos_token_id
    out, said = _generate_quietly(gen_model, **enc, max_new_tokens=4, suppress_tokens=[eos])
    assert out.shape[1] == 5 and not said, said
    out, said = _generate_quietly(gen_model, **enc, suppress_tokens=[eos])
    assert out.shape[1] == 12 and not said, said  # no length given: up to max_position_embeddings
    out, said = _generate_quietly(gen_model, **enc, max_new_tokens=12, suppress_tokens=[eos], num_beams=2)
    assert out.shape[1] == 13 and not said, said  # the exact limit: the last token is never embedded


def test_generation_past_the_position_limit_names_the_length_setting(gen_model, tokenizer):
    enc = dict(tokenizer(["a man rides a bike"], return_tensors="pt"))
    with pytest.raises(ValueError, match=r"max_new_tokens=20 .*max_position_embeddings=12.*at most max_new_tokens=12"):
        gen_model.generate(**enc, max_new_tokens=20)
    with pytest.raises(ValueError, match=r"max_length=40 .*max_position_embeddings=12"):
        gen_model.generate(**enc, max_length=40)
    with pytest.raises(ValueError, match="num_beams=0 must be an integer >= 1"):
        gen_model.generate(**enc, num_beams=0)
    with pytest.raises(ValueError, match=r"input_ids has shape \(1, 0\)"):
        gen_model.generate(input_ids=torch.zeros(1, 0, dtype=torch.long))


def test_folder_saved_before_the_fix_loads_and_generates_quietly(gen_model, tokenizer, tmp_path):
    folder = _save(gen_model, tokenizer, tmp_path / "old")
    config = json.loads((folder / "generation_config.json").read_text())
    assert ("max_length" in config) == (int(transformers.__version__.split(".")[0]) < 5)  # 4.57 keeps storing the limit
    config["max_length"] = gen_model.config.max_position_embeddings  # what earlier versions wrote
    (folder / "generation_config.json").write_text(json.dumps(config))
    loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    enc = dict(tokenizer(["two dogs play"], return_tensors="pt"))
    out, said = _generate_quietly(loaded, **enc, max_new_tokens=3, suppress_tokens=[2])
    assert out.shape[1] == 4 and not said, said
    out, said = _generate_quietly(loaded, **enc, suppress_tokens=[2])
    assert out.shape[1] == 12 and not said, said


def test_forward_refuses_mismatched_batches(gen_model):
    ids = torch.tensor([[5, 6, 2]])
    with pytest.raises(ValueError, match="decoder inputs .* have 2 rows but the encoder inputs 1"):
        gen_model(input_ids=ids, labels=torch.tensor([[5, 6, 2], [7, 8, 2]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 5\) but the input \(1, 3\)"):
        gen_model(input_ids=ids, attention_mask=torch.ones(1, 5, dtype=torch.long), labels=ids)


def test_pipeline_edge_inputs(gen_model, tokenizer):
    from hf_revdarts import TranslationPipeline

    translate = TranslationPipeline(model=gen_model, tokenizer=tokenizer)
    assert translate([]) == []
    assert len(translate(["a man", "a bike"], max_new_tokens=3)) == 2
    with pytest.raises(ValueError, match="max_source_length=0 must be a positive integer"):
        translate("a man", max_source_length=0)
    with pytest.raises(ValueError, match="max_source_length=100 exceeds the model's max_position_embeddings=12"):
        translate("a man", max_source_length=100)
