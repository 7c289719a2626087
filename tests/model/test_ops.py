"""The candidate ops: the registry holds exactly the canonical ops, and the dynamic convolution computes the same
function as the windows × weights formulation (outputs, gradients, incremental state)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS
from hf_revdarts.model.ops import OPS, DynamicConv, OpContext, _left_context, _zero_pads
from testing.builders import tiny_config


def test_registry_has_exactly_the_canonical_ops():
    assert set(OPS) == set(DECODER_OPS) and len(ENCODER_OPS) == 13 and len(DECODER_OPS) == 14


def test_genotype_helper_uses_every_op():
    config = tiny_config(layers=6)
    used = {name for layer in config.encoder_genotype + config.decoder_genotype for name in layer}
    assert used == set(DECODER_OPS)


def reference_dynconv(op: DynamicConv, h: torch.Tensor, ctx: OpContext, state: dict | None) -> torch.Tensor:
    """The textbook formulation, unfolded windows × softmax kernels: slower than the op, and plainly right."""
    bsz, length, width = h.shape
    x = _zero_pads(F.glu(op.in_proj(h), dim=-1), ctx.pad_mask)
    weights = op.weight_proj(x).view(bsz, length, op.heads, op.kernel).softmax(dim=-1)
    weights = F.dropout(weights, op.weight_dropout, op.training)
    windows = _left_context(x, op.kernel, op.causal, state).unfold(1, op.kernel, 1)
    windows = windows.reshape(bsz, length, op.heads, width // op.heads, op.kernel)
    out = torch.einsum("bthck,bthk->bthc", windows, weights.to(windows.dtype))
    return op.out_proj(out.reshape(bsz, length, width))


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("kernel", [3, 15])
def test_dynamic_conv_equals_windows_times_weights(causal: bool, kernel: int) -> None:
    torch.manual_seed(0)
    op = DynamicConv(16, kernel, 4, causal, weight_dropout=0.2).train()  # kernel dropout: same masks
    h = torch.randn(3, 11, 16, requires_grad=True)
    pad = torch.ones(3, 11, dtype=torch.bool)
    pad[1, 7:], pad[2, 2:] = False, False
    ctx = OpContext(pad_mask=pad, causal=causal)
    got, want = [], []
    for fn, sink in ((lambda: op(h, ctx, None, None), got), (lambda: reference_dynconv(op, h, ctx, None), want)):
        torch.manual_seed(5)
        out = fn()
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, 16)).square().sum(), [h, *op.parameters()])
        sink.extend([out, *grads])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dynamic_conv_incremental_state_equals_full_sequence() -> None:
    torch.manual_seed(0)
    op = DynamicConv(16, 7, 4, causal=True, weight_dropout=0.0).eval()
    h = torch.randn(2, 9, 16)
    ctx = OpContext(causal=True)
    with torch.no_grad():
        full = op(h, ctx, None, None)
        state: dict = {}
        steps = [op(h[:, t : t + 1], ctx, None, state) for t in range(9)]
        ref_state: dict = {}
        ref = [reference_dynconv(op, h[:, t : t + 1], ctx, ref_state) for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(ref, dim=1), full, rtol=1e-5, atol=1e-6)
