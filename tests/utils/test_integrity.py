"""Integrity of what runs leave behind: a model folder's fingerprint matches it and names what differs, damaged or
foreign checkpoints are refused naming the file and the previous checkpoint, and safetensors checkpoints restore
tied tensors exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hf_revdarts.training.tokenization import train_tokenizer
from hf_revdarts.utils.integrity import (
    CheckpointError,
    FingerprintMismatchError,
    check_fingerprint,
    fingerprint_model_folder,
    load_checkpoint_checked,
    load_state_checked,
    verify_checkpoint,
)
from testing.builders import TEXT_DE, padded_batch, save_model_folder, small_model, tiny_config


def test_fingerprint_matches_its_folder_and_names_what_differs(tmp_path, small_tokenizer):
    model = small_model(vocab_size=len(small_tokenizer))
    folder = save_model_folder(model, small_tokenizer, tmp_path / "model")
    recorded = json.loads(json.dumps(fingerprint_model_folder(folder)))  # as stored in the eval JSON
    assert set(recorded["files"]) == {"model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    check_fingerprint(folder, recorded)

    other = save_model_folder(small_model(vocab_size=len(small_tokenizer), layers=2), small_tokenizer, tmp_path / "other")
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
    """Checkpoints are saved with safe_serialization=True, which stores a tensor shared by several names once:
    loading restores the tied lm_head and the α shared by tied layers exactly."""
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
