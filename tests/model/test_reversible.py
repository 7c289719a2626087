"""The reversible engine: backprop with reconstruction gives ordinary autograd's gradients (fp32, float64, bf16
autocast, dropout replayed, a parameter shared by two splits), keeps no per-layer activations for backward, and
refuses a second backward clearly."""

from __future__ import annotations

import pytest
import torch

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration, RevDartsModel
from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS
from hf_revdarts.model.ops import OpContext, SplitFunction
from hf_revdarts.model.reversible import ReversibleLayer, ReversibleStack
from testing.builders import grad_errors, padded_batch, param_grads, saved_tensor_bytes, set_reversible, tiny_config


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


def test_second_backward_through_reconstruction_is_a_clear_error():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config()).train()
    loss = model(**padded_batch(model.config.vocab_size)).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="reversible=False"):
        loss.backward()


def test_reconstruction_sums_the_gradient_of_a_parameter_shared_by_two_splits():
    """Gradients are keyed by the parameter's first name in the layer, each alias mapped to it (robust to wrappers
    that swap parameter objects between forward and backward): a module shared by two splits gets both parts."""
    config = tiny_config(d_model=48)  # with dropout: replayed in reconstruction
    torch.manual_seed(0)
    shared = SplitFunction("glu", 24, config, False)
    layers = [ReversibleLayer([shared, shared]), ReversibleLayer([SplitFunction("ffn", 24, config, False), shared])]
    stack = ReversibleStack(layers).double()
    x = torch.randn(2, 5, 48, dtype=torch.float64, requires_grad=True)
    grads = {}
    for reversible in (True, False):
        stack.reversible = reversible
        torch.manual_seed(3)
        out = stack(x, OpContext())
        params = list(stack.parameters())
        got = torch.autograd.grad((out * out).sum(), [x] + params)
        grads[reversible] = got
    assert len(grads[True]) == 1 + len(list(stack.parameters()))
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
