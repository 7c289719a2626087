"""The candidate operations of the search space and the split function G_k built from them.

Every op maps a pooled split ``H`` of shape (batch, length, width) to the same shape and may keep an
incremental-decoding ``state`` (a dict owned by the cache): self-attention keys/values, the last w-1
inputs of a convolution, the cross-attention keys/values of the encoder output.

This file is copied next to saved models (``trust_remote_code``); it imports only torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


@dataclass
class OpContext:
    """What the ops of one stack call share besides their own input.

    ``pad_mask``: (batch, length) bool, True for real tokens of the positions being computed, or None.
    ``self_attn_mask``: (batch, 1, q_len, k_len) bool, True where a query may attend a key, or None.
    ``cross_attn_mask``: (batch, 1, 1, src_len) bool over the encoder output, or None.
    ``causal``: decoder side (convolutions look left only).
    """

    pad_mask: torch.Tensor | None = None
    self_attn_mask: torch.Tensor | None = None
    cross_attn_mask: torch.Tensor | None = None
    causal: bool = False


def _zero_pads(x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
    # A padded position must never change a real one: convolutions see zeros there, exactly as if the
    # sequence ended (zero padding at the border).
    if pad_mask is None:
        return x
    return x.masked_fill(~pad_mask.unsqueeze(-1), 0.0)


def _left_context(x: torch.Tensor, kernel: int, causal: bool, state: dict | None) -> torch.Tensor:
    """Pad ``x`` (B, T, C) along time so that a valid convolution of width ``kernel`` keeps length T."""
    if not causal:
        return F.pad(x, (0, 0, kernel // 2, kernel // 2))
    if state is None:
        return F.pad(x, (0, 0, kernel - 1, 0))
    prev = state.get("prev")
    if prev is None:
        prev = x.new_zeros(x.shape[0], kernel - 1, x.shape[2])
    full = torch.cat([prev, x], dim=1)
    state["prev"] = full[:, -(kernel - 1) :]
    return full


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    # A finite minimum instead of -inf: a query with no visible key (a pad row) averages instead of giving NaN.
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


class Conv(nn.Module):
    """Standard 1-D convolution of kernel width w over time (causal in the decoder)."""

    def __init__(self, width: int, kernel: int, causal: bool) -> None:
        super().__init__()
        self.kernel, self.causal = kernel, causal
        self.conv = nn.Conv1d(width, width, kernel)

    def forward(self, h: torch.Tensor, ctx: OpContext, side: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        x = _left_context(_zero_pads(h, ctx.pad_mask), self.kernel, self.causal, state)
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, computed in fp32 and returned in ``x``'s dtype.

    The same function as ``x.softmax(-1)``; written out because torch's CPU kernel is slow (2-3x) on the
    short rows of dynamic-convolution kernels. The max is a constant shift (softmax is invariant to it),
    so it is taken without grad: its gradient contribution is zero mathematically.
    """
    xf = x.float()
    e = (xf - xf.detach().amax(dim=-1, keepdim=True)).exp()
    return (e / e.sum(dim=-1, keepdim=True)).to(x.dtype)


class _DynamicConvFunction(torch.autograd.Function):
    """out[b, t, h, :] = Σ_j weights[b, t, h, j] · x[b, t + j, h, :] as K scaled shifted slices.

    Hand-written backward: autograd's version of the same loop zero-fills a full-size gradient buffer
    per slice (half the op's time on CPU); here each input gradient is accumulated into one buffer.
    """

    @staticmethod
    def forward(ctx, full: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        bsz, full_len, width = full.shape
        _, length, heads, kernel = weights.shape
        xs = full.reshape(bsz, full_len, heads, width // heads)
        out = xs[:, :length] * weights[..., :1]
        for j in range(1, kernel):
            out.addcmul_(xs[:, j : j + length], weights[..., j : j + 1])
        ctx.save_for_backward(full, weights)
        return out.view(bsz, length, width)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        full, weights = ctx.saved_tensors
        bsz, full_len, width = full.shape
        _, length, heads, kernel = weights.shape
        xs = full.reshape(bsz, full_len, heads, width // heads)
        grad = grad.reshape(bsz, length, heads, width // heads)
        grad_full = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_full = full.new_zeros(bsz, full_len, heads, width // heads)
            for j in range(kernel):
                grad_full[:, j : j + length].addcmul_(grad, weights[..., j : j + 1])
            grad_full = grad_full.view(bsz, full_len, width)
        if ctx.needs_input_grad[1]:
            grad_weights = torch.stack([(grad * xs[:, j : j + length]).sum(-1) for j in range(kernel)], dim=-1)
        return grad_full, grad_weights


def dynamic_conv(full: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """out[b, t, h·c] = Σ_j weights[b, t, h, j] · full[b, t + j, h·c]: a per-position, per-head kernel.

    ``full`` (B, T + K - 1, C) is the input with its left/right context already padded in
    (``_left_context``), ``weights`` (B, T, H, K) the normalised kernels; returns (B, T, C). Computed as
    K scaled shifted slices rather than windows × weights, which runs as a batch of tiny matrix-vector
    products: the whole op (projections included) is ~1.3x (K=3) to ~2x (K=15) faster forward+backward
    on CPU at d_model 96-192.
    """
    return _DynamicConvFunction.apply(full, weights.to(full.dtype))


class DynamicConv(nn.Module):
    """Dynamic convolution (Wu et al., 2019): GLU input projection, then a depthwise convolution whose
    softmax-normalised kernel is predicted per position and per head from the current input."""

    def __init__(self, width: int, kernel: int, heads: int, causal: bool, weight_dropout: float) -> None:
        super().__init__()
        self.kernel, self.heads, self.causal, self.weight_dropout = kernel, heads, causal, weight_dropout
        self.in_proj = nn.Linear(width, 2 * width)
        self.weight_proj = nn.Linear(width, heads * kernel)
        self.out_proj = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, ctx: OpContext, side: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        return self.from_projection(self.in_proj(h), ctx, state)

    def from_projection(self, projected: torch.Tensor, ctx: OpContext, state: dict | None) -> torch.Tensor:
        """The op after its input projection (the fused supernet computes ``in_proj`` for several ops at once)."""
        bsz, length, _ = projected.shape
        x = _zero_pads(F.glu(projected, dim=-1), ctx.pad_mask)
        weights = softmax_last(self.weight_proj(x).view(bsz, length, self.heads, self.kernel))
        weights = F.dropout(weights, self.weight_dropout, self.training)
        out = dynamic_conv(_left_context(x, self.kernel, self.causal, state), weights)
        return self.out_proj(out)


class Attention(nn.Module):
    """Multi-head attention. ``cross=True`` attends over the encoder output (the side input, width d_model)."""

    def __init__(self, width: int, heads: int, dropout: float, cross: bool = False, kv_width: int | None = None) -> None:
        super().__init__()
        self.heads, self.dropout, self.cross = heads, dropout, cross
        kv_width = kv_width or width
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(kv_width, width)
        self.v_proj = nn.Linear(kv_width, width)
        self.o_proj = nn.Linear(width, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, h: torch.Tensor, ctx: OpContext, side: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        q = self._heads(self.q_proj(h))
        if self.cross:
            if side is None:
                raise ValueError("cross_attn needs the encoder output; call the decoder with encoder_hidden_states")
            if state is not None and "k" in state:
                k, v = state["k"], state["v"]  # the encoder output does not change while decoding
            else:
                k, v = self._heads(self.k_proj(side)), self._heads(self.v_proj(side))
                if state is not None:
                    state["k"], state["v"] = k, v
            mask = ctx.cross_attn_mask
        else:
            k, v = self._heads(self.k_proj(h)), self._heads(self.v_proj(h))
            if state is not None:
                if "k" in state:
                    k, v = torch.cat([state["k"], k], dim=2), torch.cat([state["v"], v], dim=2)
                state["k"], state["v"] = k, v
            mask = ctx.self_attn_mask
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=_additive_mask(mask, q.dtype), dropout_p=self.dropout if self.training else 0.0
        )
        return self.o_proj(out.transpose(1, 2).reshape(h.shape))


class GLU(nn.Module):
    """Gated linear unit: a linear map to twice the width, halves gated by a sigmoid."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 2 * width)

    def forward(self, h: torch.Tensor, ctx: OpContext, side: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        return F.glu(self.proj(h), dim=-1)


class FeedForward(nn.Module):
    """Position-wise feed-forward: width → multiplier·width → width with ReLU."""

    def __init__(self, width: int, multiplier: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, multiplier * width)
        self.fc2 = nn.Linear(multiplier * width, width)
        self.dropout = dropout

    def forward(self, h: torch.Tensor, ctx: OpContext, side: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        return self.fc2(F.dropout(F.relu(self.fc1(h)), self.dropout, self.training))


class Identity(nn.Module):
    def forward(self, h: torch.Tensor, ctx: OpContext, side: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        return h


class Zero(nn.Module):
    def forward(self, h: torch.Tensor, ctx: OpContext, side: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        return torch.zeros_like(h)


def _registry() -> dict[str, Callable[..., nn.Module]]:
    ops: dict[str, Callable[..., nn.Module]] = {}
    for w in (3, 5, 7, 11):
        ops[f"conv_{w}"] = lambda width, config, causal, w=w: Conv(width, w, causal)
    for w in (3, 7, 11, 15):
        ops[f"dynconv_{w}"] = lambda width, config, causal, w=w: DynamicConv(
            width, w, config.num_heads, causal, config.attention_dropout
        )
    ops["self_attn"] = lambda width, config, causal: Attention(width, config.num_heads, config.attention_dropout)
    ops["cross_attn"] = lambda width, config, causal: Attention(
        width, config.num_heads, config.attention_dropout, cross=True, kv_width=config.d_model
    )
    ops["glu"] = lambda width, config, causal: GLU(width)
    ops["ffn"] = lambda width, config, causal: FeedForward(width, config.ffn_multiplier, config.activation_dropout)
    ops["identity"] = lambda width, config, causal: Identity()
    ops["zero"] = lambda width, config, causal: Zero()
    return ops


# Name → builder(width, config, causal). The single place an op name becomes a module.
OPS: dict[str, Callable[..., nn.Module]] = _registry()
UNWRAPPED_OPS = ("identity", "zero")


class WrappedOp(nn.Module):
    """õ(H) = LayerNorm(H + dropout(o(H))); identity and zero are used bare, as in the paper."""

    def __init__(self, name: str, width: int, config, causal: bool) -> None:
        super().__init__()
        if name not in OPS:
            raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(OPS)}")
        self.name = name
        self.op = OPS[name](width, config, causal)
        self.dropout = config.dropout
        self.norm = None if name in UNWRAPPED_OPS else nn.LayerNorm(width)

    def forward(self, h: torch.Tensor, ctx: OpContext, side: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        out = self.op(h, ctx, side, state)
        if self.norm is None:
            return out
        return self.norm(h + F.dropout(out, self.dropout, self.training))


def pool(inputs: list[torch.Tensor], mode: str) -> torch.Tensor:
    """Element-wise pooling of the n-1 inputs of a split function into H_k."""
    if len(inputs) == 1:
        return inputs[0]
    stacked = torch.stack(inputs, dim=0)
    return stacked.amax(dim=0) if mode == "max" else stacked.mean(dim=0)


class SplitFunction(nn.Module):
    """G_k of a derived (searched) layer: pool the inputs, apply the chosen op."""

    def __init__(self, name: str, width: int, config, causal: bool) -> None:
        super().__init__()
        self.pooling = config.pooling
        self.op = WrappedOp(name, width, config, causal)

    def forward(
        self, inputs: list[torch.Tensor], ctx: OpContext, side: torch.Tensor | None, state: dict | None
    ) -> torch.Tensor:
        return self.op(pool(inputs, self.pooling), ctx, side, state)


def sinusoidal_positions(start: int, length: int, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sin/cos position encodings for positions start..start+length-1 (no parameters to save)."""
    pos = torch.arange(start, start + length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.to(dtype)
