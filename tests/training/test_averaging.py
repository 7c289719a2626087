"""Checkpoint averaging: reads what save_checkpoint/save_pretrained write, averages exactly, refuses mismatches."""

from __future__ import annotations

import json

import pytest
import torch

from hf_revdarts import RevDartsForConditionalGeneration
from hf_revdarts.training.averaging import average_checkpoints, latest_checkpoints, load_averaged_weights, load_weights
from testing.builders import tiny_config


def _model(seed: int, **kw) -> RevDartsForConditionalGeneration:
    torch.manual_seed(seed)
    return RevDartsForConditionalGeneration(tiny_config(layers=2, d_model=24, vocab_size=40, **kw))


def _accelerate_checkpoint(model: torch.nn.Module, folder, step: int, safe: bool = False):
    """A checkpoint folder as accelerate's save_state writes it (``safe=True``: as training_utils.save_checkpoint
    does; ``False``: the pickle format of older checkpoints)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    prepared = acc.prepare(model)
    ckpt = folder / f"checkpoint-{step:06d}"
    acc.save_state(str(ckpt), safe_serialization=safe)
    (ckpt / "train_state.json").write_text(json.dumps({"step": step}))
    acc.free_memory()
    del prepared
    return ckpt


def test_average_of_identical_checkpoints_is_the_checkpoint(tmp_path):
    model = _model(0)
    a = _accelerate_checkpoint(model, tmp_path / "a", 1)
    b = _accelerate_checkpoint(model, tmp_path / "b", 2)
    assert (a / "pytorch_model.bin").is_file()  # older checkpoints (safe_serialization=False) still average
    avg = average_checkpoints([a, b])
    ref = model.state_dict()
    assert avg.keys() == ref.keys()
    for key, value in ref.items():
        assert avg[key].dtype == value.dtype
        assert torch.equal(avg[key], value), key


def test_average_of_two_is_the_elementwise_mean(tmp_path):
    m0, m1 = _model(0), _model(1)
    a = _accelerate_checkpoint(m0, tmp_path, 1, safe=True)  # model.safetensors (tied keys dropped)
    m1.save_pretrained(tmp_path / "folder")  # a save_pretrained model folder averages with it
    avg = average_checkpoints([a, tmp_path / "folder"])
    s0, s1 = m0.state_dict(), m1.state_dict()
    differs = 0
    for key, value in avg.items():
        expect = (s0[key].float() + s1[key].float()) / 2
        torch.testing.assert_close(value, expect, rtol=0, atol=1e-7)
        differs += not torch.equal(s0[key], s1[key])
    assert differs > 10  # the two models really are different

    # Loaded into a model, the average gives that model's outputs (tied embeddings included).
    loaded = load_averaged_weights(_model(5), [a, tmp_path / "folder"])
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, (s0[key].float() + s1[key].float()) / 2, rtol=0, atol=1e-7)
    assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()


def test_mismatched_keys_or_shapes_name_the_file(tmp_path):
    a = _accelerate_checkpoint(_model(0), tmp_path / "a", 1)
    deeper = _accelerate_checkpoint(
        RevDartsForConditionalGeneration(tiny_config(layers=3, d_model=24, vocab_size=40)), tmp_path / "b", 1
    )
    with pytest.raises(ValueError, match=r"b/checkpoint-000001.*parameter names differ"):
        average_checkpoints([a, deeper])
    wider = RevDartsForConditionalGeneration(tiny_config(layers=2, d_model=36, vocab_size=40))
    wider = _accelerate_checkpoint(wider, tmp_path / "c", 1)
    with pytest.raises(ValueError, match=r"c/checkpoint-000001.*shape"):
        average_checkpoints([a, wider])
    with pytest.raises(FileNotFoundError, match="holds no model weights"):
        average_checkpoints([a, tmp_path])  # a folder without weights
    (tmp_path / "broken.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.bin: cannot read"):
        load_weights(tmp_path / "broken.bin")
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])


def test_latest_checkpoints_picks_the_newest_complete_ones(tmp_path):
    model = _model(0)
    for step in (1, 2, 3):
        _accelerate_checkpoint(model, tmp_path, step)
    (tmp_path / "checkpoint-000004").mkdir()  # incomplete: no train_state.json
    assert [p.name for p in latest_checkpoints(tmp_path, 2)] == ["checkpoint-000002", "checkpoint-000003"]
    with pytest.raises(FileNotFoundError, match="3 complete checkpoint"):
        latest_checkpoints(tmp_path, 4)
