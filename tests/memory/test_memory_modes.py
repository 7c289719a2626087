"""The memory modes give ordinary autograd's gradients: hybrid (the top layers kept, the rest reconstructed) for the
derived model, the decoder's side input and the supernet's α, and every mode of a model built from the scripts'
arguments; hybrid keeps the activations of the kept layers only; the kept-layer count is validated and saved."""

from __future__ import annotations

import pytest
import torch

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
from hf_revdarts.memory import apply_memory_mode
from hf_revdarts.model.ops import OpContext
from hf_revdarts.search import RevDartsSupernet
from hf_revdarts.training.arguments import ModelArguments
from hf_revdarts.training.run_config import build_config
from testing.builders import ONE_OP_PER_KIND, grad_errors, padded_batch, param_grads, saved_tensor_bytes, tiny_config


def _hybrid_vs_ordinary(model: torch.nn.Module, batch: dict, keep: int) -> tuple[float, float]:
    apply_memory_mode(model, "ordinary")
    ref = param_grads(model, batch)
    apply_memory_mode(model, "hybrid", keep_layers=keep)
    got = param_grads(model, batch)
    assert len(got) == len(ref) == sum(1 for p in model.parameters() if p.grad is not None)
    return grad_errors(got, ref)


@pytest.mark.parametrize("keep", [1, 3, 5])
def test_hybrid_gradients_equal_ordinary_fp32(keep):
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(layers=5)).train()
    global_err, worst = _hybrid_vs_ordinary(model, padded_batch(model.config.vocab_size), keep)
    assert global_err <= 1e-5 and worst <= 1e-5, (global_err, worst)


def test_hybrid_gradients_equal_ordinary_float64_every_op():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(layers=7, reversible_exact_every=3)).double().train()
    global_err, worst = _hybrid_vs_ordinary(model, padded_batch(model.config.vocab_size), keep=2)
    assert global_err <= 1e-10 and worst <= 1e-10, (global_err, worst)


def test_hybrid_decoder_stack_side_input_gradient_is_exact():
    """The encoder output enters every decoder layer: its gradient sums the kept layers' (ordinary autograd)
    and the reconstructed layers' (accumulated on the tape) contributions."""
    torch.manual_seed(0)
    config = tiny_config(layers=4).to_dict()
    config.pop("model_type", None)
    model = RevDartsForConditionalGeneration(RevDartsConfig(**config)).double().train()
    decoder = model.model.decoder
    x = torch.randn(2, 6, config["d_model"], dtype=torch.float64, requires_grad=True)
    side = torch.randn(2, 5, config["d_model"], dtype=torch.float64, requires_grad=True)
    cross = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    cross[1, ..., 3:] = False
    ctx = OpContext(None, torch.tril(torch.ones(6, 6, dtype=torch.bool))[None, None], cross, causal=True)
    grads = {}
    for mode, keep in (("ordinary", 0), ("hybrid", 2), ("hybrid", 1), ("reversible", 0)):
        apply_memory_mode(model, mode, keep)
        torch.manual_seed(7)
        out = decoder.stack(x, ctx, side)
        dx, dside = torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum(), (x, side))
        grads[(mode, keep)] = (dx, dside)
    for key, (dx, dside) in grads.items():
        torch.testing.assert_close(dx, grads[("ordinary", 0)][0], rtol=1e-10, atol=1e-12, msg=str(key))
        torch.testing.assert_close(dside, grads[("ordinary", 0)][1], rtol=1e-10, atol=1e-12, msg=str(key))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hybrid_supernet_weight_and_alpha_gradients_equal_ordinary(dtype):
    torch.manual_seed(0)
    supernet = RevDartsSupernet(tiny_config(layers=3), **ONE_OP_PER_KIND).to(dtype).train()
    batch = padded_batch(supernet.config.vocab_size)
    global_err, worst = _hybrid_vs_ordinary(supernet, batch, keep=1)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert global_err <= tol and worst <= tol, (global_err, worst)
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in supernet.arch_parameters())


def test_hybrid_keeps_activations_of_the_top_layers_only():
    """Saved bytes grow by one layer's worth per kept layer; keeping every layer saves what ordinary saves."""

    def saved(mode: str, keep: int) -> int:
        torch.manual_seed(0)
        model = RevDartsForConditionalGeneration(tiny_config(layers=4)).train()
        apply_memory_mode(model, mode, keep)
        x = torch.randn(2, 9, model.config.d_model, requires_grad=True)
        return saved_tensor_bytes(model.model.encoder.stack, x, OpContext())

    sizes = [saved("hybrid", k) for k in range(5)]
    assert sizes[0] == saved("reversible", 0) and sizes[4] == saved("ordinary", 0)
    assert sizes == sorted(sizes) and len(set(sizes)) == 5


def test_keep_layers_config_is_validated_and_round_trips(tmp_path):
    with pytest.raises(ValueError, match="reversible_keep_layers=-1"):
        tiny_config(reversible_keep_layers=-1)
    model = RevDartsForConditionalGeneration(tiny_config(layers=3, reversible_keep_layers=2))
    assert model.model.encoder.stack.keep_layers == model.model.decoder.stack.keep_layers == 2
    model.save_pretrained(tmp_path)
    assert RevDartsConfig.from_pretrained(tmp_path).reversible_keep_layers == 2


@pytest.mark.parametrize("mode", ["reversible", "checkpoint", "hybrid"])
def test_memory_modes_give_ordinary_autograd_gradients(mode):
    tok = type("Tok", (), {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "__len__": lambda s: 60})()

    def build(memory_mode):
        args = ModelArguments(d_model=48, num_heads=2, encoder_layers=2, decoder_layers=2, memory_mode=memory_mode)
        torch.manual_seed(0)
        model = RevDartsForConditionalGeneration(build_config(args, tok, 16))
        apply_memory_mode(model, memory_mode, keep_layers=1)
        return model.train()

    model, reference = build(mode), build("ordinary")
    stacks = [model.model.encoder.stack, model.model.decoder.stack]
    assert model.config.reversible == (mode != "checkpoint") and not reference.config.reversible
    assert model.config.reversible_keep_layers == (1 if mode == "hybrid" else 0)
    assert all(s.gradient_checkpointing == (mode == "checkpoint") for s in stacks)
    total, worst = grad_errors(param_grads(model, padded_batch(60)), param_grads(reference, padded_batch(60)))
    assert total < 1e-5 and worst < 1e-4, (total, worst)
