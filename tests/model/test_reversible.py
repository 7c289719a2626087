"""The reversible engine, the candidate ops and the RevDarts model (issue: core)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _helpers import grad_errors, padded_batch, param_grads, saved_tensor_bytes, set_reversible, tiny_config
from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration, RevDartsModel
from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS
from hf_revdarts.model.ops import OPS, OpContext, SplitFunction
from hf_revdarts.model.reversible import ReversibleLayer

HERE = Path(__file__).resolve().parent


def _rev_vs_ordinary(config: RevDartsConfig, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(config).to(dtype).train()
    batch = padded_batch(config.vocab_size)
    set_reversible(model, True)
    rev = param_grads(model, batch)
    set_reversible(model, False)
    ordinary = param_grads(model, batch)
    assert len(rev) == len(ordinary) == sum(1 for p in model.parameters() if p.grad is not None)
    return grad_errors(rev, ordinary)


def test_registry_has_exactly_the_canonical_ops():
    assert set(OPS) == set(DECODER_OPS) and len(ENCODER_OPS) == 13 and len(DECODER_OPS) == 14


def test_genotype_helper_uses_every_op():
    config = tiny_config(layers=6)
    used = {name for layer in config.encoder_genotype + config.decoder_genotype for name in layer}
    assert used == set(DECODER_OPS)


def test_gradients_equal_ordinary_autograd_fp32_6_layers():
    global_err, worst = _rev_vs_ordinary(tiny_config(layers=6))
    assert global_err <= 1e-5 and worst <= 1e-5, (global_err, worst)


def test_gradients_equal_ordinary_autograd_float64_12_layers():
    global_err, worst = _rev_vs_ordinary(tiny_config(layers=12), torch.float64)
    assert global_err <= 1e-10 and worst <= 1e-10, (global_err, worst)


def test_exact_anchor_remedy_keeps_gradients_exact():
    global_err, worst = _rev_vs_ordinary(tiny_config(layers=6, reversible_exact_every=2), torch.float64)
    assert worst <= 1e-10


def test_dropout_is_replayed_not_switched_off():
    # Same seed, different results with dropout on: the gradient check above compares stochastic steps.
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config()).train()
    batch = padded_batch(model.config.vocab_size)
    torch.manual_seed(1)
    a = model(**batch).loss
    torch.manual_seed(2)
    b = model(**batch).loss
    assert not torch.equal(a, b)
    # ... and backward through reconstruction leaves the global RNG stream where ordinary autograd leaves it.
    torch.manual_seed(3)
    model(**batch).loss.backward()
    after = torch.rand(1)
    set_reversible(model, False)
    torch.manual_seed(3)
    model(**batch).loss.backward()
    assert torch.equal(after, torch.rand(1))


def test_layer_inverse_reconstructs_input():
    config = tiny_config(layers=1)
    torch.manual_seed(0)
    for splits, ops, causal in ((2, ENCODER_OPS, False), (3, DECODER_OPS, True)):
        width = config.d_model // splits
        side = torch.randn(2, 5, config.d_model)
        for name in ops:
            names = [name] * splits
            layer = ReversibleLayer([SplitFunction(n, width, config, causal) for n in names]).eval()
            x = torch.randn(2, 7, config.d_model)
            ctx = OpContext(causal=causal)
            with torch.no_grad():
                y = layer(x, ctx, side)
            torch.testing.assert_close(layer.inverse(y, ctx, side), x, rtol=0, atol=1e-5, msg=name)


def test_reversible_stack_saves_no_per_layer_activations():
    """Bytes kept for backward by a reversible stack do not grow with depth (ordinary autograd's do)."""

    def saved_bytes(layers: int, reversible: bool) -> int:
        config = tiny_config(layers=layers, reversible=reversible)
        torch.manual_seed(0)
        model = RevDartsModel(config).train()
        x = torch.randn(2, 9, config.d_model, requires_grad=True)
        return saved_tensor_bytes(model.encoder.stack, x, OpContext())

    assert saved_bytes(2, True) == saved_bytes(8, True)
    assert saved_bytes(8, False) > 3 * saved_bytes(2, False)


def test_gradients_visible_to_autograd_grad_and_hooks():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config()).train()
    batch = padded_batch(model.config.vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(5)
    grads = torch.autograd.grad(model(**batch).loss, params, allow_unused=True)
    assert all(p.grad is None for p in params)  # nothing written on the side
    fired: dict[int, int] = {}
    for p in params:
        p.register_hook(lambda g, k=id(p): fired.__setitem__(k, fired.get(k, 0) + 1))
    torch.manual_seed(5)
    model(**batch).loss.backward()
    for p, g in zip(params, grads):
        if g is None:
            continue
        assert fired[id(p)] == 1
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    stack_params = {id(p) for p in model.model.encoder.stack.parameters()}
    assert stack_params <= {id(p) for p, g in zip(params, grads) if g is not None}


def test_gradient_checkpointing_mode_matches():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(layers=3, reversible=False)).train()
    batch = padded_batch(model.config.vocab_size)
    ref = param_grads(model, batch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.encoder.stack.gradient_checkpointing
    got = param_grads(model, batch)
    assert grad_errors(got, ref)[1] <= 1e-6


def test_bf16_autocast_trains_with_small_reconstruction_error():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(layers=4)).train()
    batch = padded_batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rev = param_grads(model, batch)
        set_reversible(model, False)
        ordinary = param_grads(model, batch)
    assert all(torch.isfinite(g).all() for g in rev.values())
    global_err, _ = grad_errors(rev, ordinary)
    assert global_err < 1e-2, global_err


def test_padding_never_changes_real_positions():
    config = tiny_config(layers=2)
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(config).eval()
    src = torch.randint(4, config.vocab_size, (1, 6))
    tgt = torch.randint(4, config.vocab_size, (1, 5))
    padded_src = torch.cat([src, torch.full((1, 4), 7)], dim=1)  # junk behind the mask, not pad ids
    src_mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    padded_tgt = torch.cat([tgt, torch.full((1, 3), 9)], dim=1)
    with torch.no_grad():
        ref = model(input_ids=src, decoder_input_ids=tgt).logits
        got = model(input_ids=padded_src, attention_mask=src_mask, decoder_input_ids=padded_tgt).logits
    torch.testing.assert_close(got[:, :5], ref, rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(layers=2, embedding_dim=32)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = RevDartsForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.encoder_genotype == model.config.encoder_genotype
    assert loaded.lm_head.weight.data_ptr() == loaded.model.shared.weight.data_ptr()  # tied after loading
    batch = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        for m in (model, loaded):
            m.out = m(**batch).logits
    assert torch.equal(model.out, loaded.out)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"encoder_genotype": [["conv_3", "conv_4"]] * 2}, "unknown op 'conv_4'"),
        ({"encoder_genotype": [["conv_3", "ffn"]] * 3}, "encoder_genotype has 3 layers"),
        ({"decoder_genotype": [["conv_3", "ffn", "glu"]] * 2}, "decoder_genotype[0] must list 2 op names"),
        ({"encoder_genotype": [["cross_attn", "ffn"]] * 2}, "only exists in the decoder"),
        ({"d_model": 52}, "d_model=52 is not divisible by decoder_splits=3"),
        ({"d_model": 42}, "not divisible by num_heads=2"),
        ({"pooling": "min"}, "pooling='min'"),
    ],
)
def test_bad_config_is_a_clear_value_error(kwargs, needle):
    with pytest.raises(ValueError) as err:
        tiny_config(layers=2, **kwargs)
    assert needle in str(err.value)


def test_too_long_input_and_foreign_token_ids_are_rejected():
    model = RevDartsForConditionalGeneration(tiny_config(max_position_embeddings=8)).eval()
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(input_ids=torch.ones(1, 9, dtype=torch.long), decoder_input_ids=torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(input_ids=torch.full((1, 3), 999), decoder_input_ids=torch.ones(1, 2, dtype=torch.long))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    out = tmp_path / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(HERE / "ddp_check.py"), str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["worst"] <= 1e-5, result


def test_second_backward_through_reconstruction_is_a_clear_error():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config()).train()
    loss = model(**padded_batch(model.config.vocab_size)).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="reversible=False"):
        loss.backward()
