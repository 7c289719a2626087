"""Predicted parameter, gradient, optimizer-state and activation bytes of a RevDarts training step (derived model
or supernet) in each memory mode.

How the activation peak is predicted
------------------------------------
From what the code saves for backward, op by op (``ops.py``): e.g. ``ffn`` keeps its input, ReLU output, dropout
mask and dropout output, every wrapped op keeps its LayerNorm input and dropout mask, attention on CPU with
dropout keeps three (batch, heads, length, length) tensors (softmax, mask, dropped) while the fused kernels keep
q, k, v, output and a log-sum-exp. A split function G_k keeps the sum over its ops (the supernet: all of them,
plus each op's output, kept by the α-weighted sum) and its pooled input H; a layer keeps its splits. The step is
then replayed as a sequence of segments in forward order (embedding, layers, final norm, head; encoder then
decoder), each with the bytes it keeps until its backward has run and the transient bytes its backward needs
on top. Backward runs the segments in reverse, so the peak is

    max over segments i of  held + sum(kept by segments 0..i) + transient(i) + gradients carried into i

and the memory modes differ only in what a layer keeps and what its backward needs:

    ordinary    keeps every layer's saved tensors; backward of a layer frees them as it goes, so only the
                first split to run back adds its transient;
    checkpoint  keeps each layer's input; backward recomputes one whole layer (its saved tensors) on top;
    reversible  keeps nothing per layer (the stack output only); backward recomputes one split at a time and
                holds that layer's parameter gradients, its output/input and their gradients;
    hybrid      the top k layers of each stack as ordinary, the layers below reversible.

The LM head: with ``config.chunked_loss`` (the default in training) it keeps the labelled hidden rows and their
gradient, holds one tile of ``loss_chunk_size`` logits at the end of the forward pass, and the output embedding's
vocab x e gradient exists only after every other backward (a segment of its own, run last); the full head keeps
the batch x length x vocab log-softmax, and its backward two more such tensors.

Transient terms (gradients of a split's intermediates, the largest parameter gradient, the full head's two
vocabulary-sized gradients) were calibrated against measurement; ``benchmarks/memory_planner.py`` prints
predicted vs measured peaks (torch-level: live tensor bytes, which is what ``torch.cuda.max_memory_allocated``
reports on a GPU) and ``tests/memory/test_estimate.py`` checks the per-op saved bytes against ``saved_tensors_hooks``.

Bytes are for float32 training (parameters' dtype). Not modelled: bf16 autocast, the second-order architect's
virtual step (an extra copy of the weights), the allocator's rounding and fragmentation on a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..model.configuration_revdarts import DECODER_OPS, ENCODER_OPS, RevDartsConfig
from ..model.modeling_revdarts import loss_tile

# Fastest first: the planner takes the first mode that fits.
MEMORY_MODES: tuple[str, ...] = ("ordinary", "hybrid", "checkpoint", "reversible")


def format_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


# ------------------------------------------------------------------------------------------- per op
@dataclass(frozen=True)
class _Side:
    """Shapes seen by the ops of one stack: ``length`` queries, ``keys`` cross-attention keys."""

    batch: int
    length: int
    width: int  # split width d_model / splits
    d_model: int
    keys: int  # source length (cross-attention keys)
    causal: bool
    padded: bool  # this stack's pad mask is applied (encoder with attention_mask)
    elem: int  # bytes per activation element
    source_padded: bool = False  # cross-attention gets the encoder's pad mask

    @property
    def tokens(self) -> int:
        return self.batch * self.length


@dataclass
class _Cost:
    saved: int = 0  # bytes kept for backward, excluding the op's input H
    transient: int = 0  # bytes its backward allocates on top of the saved ones and the incoming gradient
    params: int = 0  # parameter count
    saves_input: bool = False  # H itself is kept (a Linear reads it)


def _attention_fused(config: RevDartsConfig, device: str) -> bool:
    """Which scaled_dot_product_attention kernel a training step gets: on CPU, dropout forces the math kernel
    (it materialises the attention matrix); without dropout the flash kernel; on CUDA a fused kernel either way."""
    return device != "cpu" or config.attention_dropout == 0


def op_cost(name: str, s: _Side, config: RevDartsConfig, device: str = "cpu") -> _Cost:
    """Saved/transient bytes and parameters of one wrapped candidate op (``ops.WrappedOp``) on a (B, T, w) input."""
    if name in ("identity", "zero"):
        return _Cost()
    B, T, w, N, e = s.batch, s.length, s.width, s.tokens, s.elem
    nw = N * w * e
    mask = N if s.padded and (name.startswith("conv") or name.startswith("dynconv")) else 0  # bool (B, T, 1)
    heads = config.num_heads
    if name.startswith("conv_"):
        k = int(name.split("_")[1])
        params = w * w * k + w
        padded = B * (T + k - 1) * w * e  # the zero-padded input the convolution keeps
        # the weight gradient is a transient too: .grad is accumulated in place
        cost = _Cost(mask + padded, padded + w * w * k * e, params, False)
    elif name.startswith("dynconv_"):
        k = int(name.split("_")[1])
        params = 3 * w * w + 3 * w + (w + 1) * heads * k
        wd = config.attention_dropout > 0
        # the written-out softmax keeps exp(x) and its row sums; the convolution keeps its kernels (the softmax
        # output, or with kernel dropout its mask and output)
        kernel = N * heads * k * e * (3 if wd else 2) + N * heads * e
        # GLU input (2w), gated+masked x (w), x with its k-1 context positions padded in (what the shifted-slice
        # dynamic convolution keeps), the out_proj input (w)
        padded = B * (T + k - 1) * w * e
        saved = mask + 2 * nw + nw + padded + nw + kernel
        # backward: one input-gradient buffer of the padded size and the stacked kernel gradient
        cost = _Cost(saved, max(padded + kernel, 2 * w * w * e + nw), params, True)
    elif name in ("self_attn", "cross_attn"):
        cross = name == "cross_attn"
        S = s.keys if cross else T
        kv_in = s.d_model if cross else w
        params = 2 * (w * w + w) + 2 * (kv_in * w + w)
        kv = 2 * B * S * w * e
        if _attention_fused(config, device):
            lse = B * heads * T * 4
            if cross:
                attn_mask = B * S * e if s.source_padded else 0
            else:
                attn_mask = (B * S * e if s.padded else 0) if not s.causal else T * S * e
            saved = nw + kv + nw + lse + attn_mask  # q, k, v, output (= out_proj input), log-sum-exp, mask
            transient = 2 * nw + 2 * B * S * w * e
        else:
            scores = B * heads * T * S * e
            saved = nw + kv + nw + (3 if config.attention_dropout > 0 else 1) * scores
            transient = max(scores, 2 * nw)
        cost = _Cost(saved, max(transient, kv_in * w * e + nw), params, True)
    elif name == "glu":
        cost = _Cost(2 * nw, max(2 * nw, 2 * w * w * e + nw), 2 * w * w + 2 * w, True)
    elif name == "ffn":
        m = config.ffn_multiplier
        ad = config.activation_dropout > 0
        saved = m * nw * (3 if ad else 1)  # ReLU output (+ dropout mask and output)
        cost = _Cost(saved, max(m * nw * (1 if ad else 2) + nw, m * w * w * e + nw), 2 * m * w * w + m * w + w, True)
    else:
        raise ValueError(f"unknown op {name!r}; valid ops: {', '.join(DECODER_OPS)}")
    # õ = LayerNorm(H + dropout(o(H))): dropout mask, LayerNorm input, mean and rstd (float32)
    cost.saved += nw * (2 if config.dropout > 0 else 1) + 2 * N * 4
    cost.params += 2 * w
    return cost


def split_cost(ops: Sequence[str], s: _Side, config: RevDartsConfig, inputs: int, mixed: bool, device: str) -> _Cost:
    """One split function G_k over ``inputs`` pooled parts: a derived split (one op) or a supernet MixedSplit."""
    nw = s.tokens * s.width * s.elem
    costs = [op_cost(name, s, config, device) for name in ops]
    live = [name for name in ops if name != "zero"]  # MixedSplit skips zero
    saved = sum(c.saved for c in costs)
    saves_input = any(c.saves_input for c in costs)
    transient = max((c.transient for c in costs), default=0)
    params = sum(c.params for c in costs)
    if mixed:
        # weights[i] * õ_i(H) keeps each op's output (H itself for identity); the gradient of H accumulates
        saved += nw * sum(1 for name in live if name != "identity")
        saves_input = saves_input or "identity" in live
        transient += 2 * nw
    if inputs > 1:
        # pool: torch.stack copies the parts, amax keeps the stack; H is then a new tensor
        saved += inputs * nw if config.pooling == "max" else 0
        transient += inputs * nw
    return _Cost(saved, transient, params, saves_input)


# ------------------------------------------------------------------------------------------- per layer
@dataclass
class _Layer:
    saved: int  # ordinary autograd: kept until this layer's backward (new tensors only, not the layer input)
    keeps_input: bool  # a split reads a view of the layer input, which is then kept too
    transient: int  # ordinary backward: on top of ``saved`` (the last split's, which runs first)
    reconstruct: int  # reversible backward: one split recomputed at a time, the layer's parameter gradients
    params: int


def _layer(splits: list[list[str]], mixed: list[bool], s: _Side, config: RevDartsConfig, device: str) -> _Layer:
    n = len(splits)
    nw, nd = s.tokens * s.width * s.elem, s.tokens * s.d_model * s.elem
    costs = [split_cost(ops, s, config, n - 1, mix, device) for ops, mix in zip(splits, mixed)]
    saved, keeps_input, worst_r, params = 0, False, 0, 0
    for k, c in enumerate(costs):
        pooled = n - 1 > 1
        if c.saves_input:
            if pooled or k > 0:  # H is the pooled tensor or Y_{k-1}: a tensor of its own
                saved += nw
            else:  # H = X_2, a view of the layer input
                keeps_input = True
        saved += c.saved
        # Backward undoes the splits from the last: G_k is recomputed (on views of the rebuilt parts; a pooled
        # H is new) while the parameter gradients of G_{k+1..n} wait to be returned; G_k's own appear as its
        # saved tensors are freed.
        later = sum(x.params for x in costs[k + 1 :]) * s.elem
        worst_r = max(worst_r, c.saved + (nw if pooled else 0) + nw + c.transient + later)
        params += c.params
    return _Layer(
        saved=saved,
        keeps_input=keeps_input,
        # Backward frees a split's saved tensors as it goes: only the first split to run back (the last one)
        # adds its transient to everything the layer keeps.
        transient=costs[-1].transient,
        # Y and the rebuilt parts, dL/dY and the new part gradients, then X and dL/dX (torch.cat)
        reconstruct=4 * nd + max(worst_r, params * s.elem),
        params=params,
    )


# ------------------------------------------------------------------------------------------- estimate
@dataclass
class MemoryEstimate:
    """Predicted bytes of one training step. ``activation_bytes`` is the peak above parameters, gradients and
    optimizer state (what a fresh step adds, measured as the peak of live tensors minus the baseline)."""

    mode: str
    supernet: bool
    keep_layers: int
    batch_size: int
    source_length: int
    target_length: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    saved_activation_bytes: int  # kept for backward at the end of the forward pass
    optimizer_step_bytes: int  # temporaries of the optimizer step (after backward, activations freed)
    peak_at: str  # the segment whose backward reaches the activation peak
    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return (
            self.parameter_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + max(self.activation_bytes, self.optimizer_step_bytes)
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}

    def summary(self) -> str:
        what = "supernet" if self.supernet else "model"
        mode = f"{self.mode} (top {self.keep_layers} layers kept)" if self.mode == "hybrid" else self.mode
        return (
            f"predicted memory of a {what} training step, {mode}, batch {self.batch_size} x "
            f"{self.source_length}/{self.target_length} tokens: parameters {format_bytes(self.parameter_bytes)}, "
            f"gradients {format_bytes(self.gradient_bytes)}, optimizer state {format_bytes(self.optimizer_bytes)}, "
            f"activations {format_bytes(self.activation_bytes)} (peak in {self.peak_at}); "
            f"total {format_bytes(self.total_bytes)}"
        )


def _check_mode(mode: str) -> str:
    if mode not in MEMORY_MODES:
        raise ValueError(f"unknown memory mode {mode!r}; choose one of {', '.join(MEMORY_MODES)}")
    return mode


def _stack_genotype(config: RevDartsConfig, decoder: bool, supernet: bool, ops: Sequence[str] | None) -> tuple:
    """Per layer: the op names of each split and whether the split is a supernet mixture."""
    layers = config.decoder_layers if decoder else config.encoder_layers
    if supernet:
        space = list(ops) if ops is not None else list(DECODER_OPS if decoder else ENCODER_OPS)
        searched = config.decoder_splits - 1 if decoder else config.encoder_splits
        splits = [space] * searched + ([["cross_attn"]] if decoder else [])
        mixed = [True] * searched + ([False] if decoder else [])
        return [splits] * layers, [mixed] * layers
    genotype = config.decoder_genotype if decoder else config.encoder_genotype
    splits = [[[name] for name in layer] + ([["cross_attn"]] if decoder else []) for layer in genotype]
    return splits, [[False] * len(layer) for layer in splits]


def estimate_memory(
    config: RevDartsConfig,
    batch_size: int,
    source_length: int,
    target_length: int | None = None,
    mode: str = "reversible",
    supernet: bool = False,
    *,
    keep_layers: int | None = None,
    encoder_ops: Sequence[str] | None = None,
    decoder_ops: Sequence[str] | None = None,
    tie_blocks: int = 0,
    optimizer: str = "adam",
    device: str = "cpu",
    padded: bool = True,
    logits_alive: bool = True,
    chunked_loss: bool | None = None,
    labelled_tokens: int | None = None,
    dtype: torch.dtype = torch.float32,
    optimizer_foreach: bool | None = None,
) -> MemoryEstimate:
    """Predicted memory of one training step (forward + backward) of the derived model or the supernet.

    Args:
        config: sizes, splits, dropout and (derived model) the genotype; for the supernet the genotype is
            ignored and every split holds every op of ``encoder_ops``/``decoder_ops`` (default: all).
        batch_size, source_length, target_length: the padded batch (``target_length`` defaults to the source's).
        mode: ``ordinary``, ``hybrid``, ``checkpoint`` (per-layer) or ``reversible``.
        keep_layers: hybrid only, top layers per stack that keep their activations (default
            ``config.reversible_keep_layers``).
        tie_blocks: supernet α tied across blocks of s layers (only changes the α count).
        optimizer: ``adam``/``adamw`` (two float32 states per parameter) or ``sgd`` (none).
        device: ``cpu`` or ``cuda`` (which attention kernel runs, how the optimizer step allocates).
        padded: the source batch comes with an attention mask (as the training scripts' batches do).
        logits_alive: the caller holds the model output (logits) through backward, as the training loops do.
        chunked_loss: the LM head computes its loss in tiles of ``config.loss_chunk_size`` logits (default
            ``config.chunked_loss``): no batch x length x vocab tensor, the output embedding's gradient made at the
            end of backward (see ``modeling_revdarts``); ``False`` is the full head (logits, log-softmax, gradient).
        labelled_tokens: target positions with a label (not -100), which is all the chunked head works on; the
            default, every position, is the upper bound.
        dtype: the parameters' (and so the activations') dtype.
        optimizer_foreach: the optimizer's ``foreach`` (None: torch's default, on for CUDA, off for CPU); the
            foreach step allocates temporaries the size of all parameters, the per-tensor one of the largest.
    """
    mode = _check_mode(mode)
    for name, value in (("batch_size", batch_size), ("source_length", source_length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    T = source_length if target_length is None else target_length
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"target_length={target_length!r} must be a positive integer")
    if optimizer not in ("adam", "adamw", "sgd"):
        raise ValueError(f"optimizer={optimizer!r}: the planner knows adam, adamw and sgd")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: the planner models cpu and cuda")
    keep = config.reversible_keep_layers if keep_layers is None else keep_layers
    if mode == "hybrid" and (not isinstance(keep, int) or keep < 0):
        raise ValueError(f"keep_layers={keep!r} must be an integer >= 0")
    keep = keep if mode == "hybrid" else 0
    if supernet:
        from ..model.genotype import validate_search_space

        encoder_ops = validate_search_space(encoder_ops, "encoder")
        decoder_ops = validate_search_space(decoder_ops, "decoder")
    elem = torch.empty((), dtype=dtype).element_size()
    B, S, d, V = batch_size, source_length, config.d_model, config.vocab_size
    e_dim = config.embedding_dim or d
    if chunked_loss is not None and not isinstance(chunked_loss, bool):
        raise ValueError(f"chunked_loss={chunked_loss!r} must be True, False or None (the config's)")
    segments: list[tuple[str, int, int]] = []  # (name, kept until its backward, transient + carried in backward)
    params = 0
    chunked = config.chunked_loss if chunked_loss is None else chunked_loss
    Nt = B * T
    Nl = Nt if labelled_tokens is None else labelled_tokens
    if not isinstance(Nl, int) or isinstance(Nl, bool) or not 0 <= Nl <= Nt:
        raise ValueError(f"labelled_tokens={labelled_tokens!r} must be an integer in 0..batch_size * target_length")
    tied_lookups = chunked and config.tie_word_embeddings
    if chunked:
        # The head hands its hidden rows, log-sum-exp and labels to the deferred gradient of its weight, which
        # runs after everything else; a tied model's embedding lookups then return sparse rows, and the decoder's
        # lookup (made before the encoder runs) holds the gradient of its output through the encoder's backward.
        carried = Nl * e_dim * elem + Nl * 12
    else:
        # The LM head's gradient of the tied embedding waits in autograd's input buffer until the embedding's
        # backward (the very end) has added its part: it is carried through the whole backward.
        carried = V * e_dim * elem if config.tie_word_embeddings else 0
    for decoder in (False, True):
        L_tok = T if decoder else S
        n = config.decoder_splits if decoder else config.encoder_splits
        side = _Side(B, L_tok, d // n, d, S, decoder, padded and not decoder, elem, padded)
        N = side.tokens
        nd = N * d * elem
        # dL/d(encoder output): a buffer accumulated over the decoder layers (reversible: plus each layer's sum)
        side_grad = B * S * d * elem if decoder else 0
        names, mixed = _stack_genotype(config, decoder, supernet, decoder_ops if decoder else encoder_ops)
        layers = [_layer(sp, mx, side, config, device) for sp, mx in zip(names, mixed)]
        params += sum(layer.params for layer in layers) + (e_dim * d if e_dim != d else 0) + 2 * d
        tag = "decoder" if decoder else "encoder"
        carry = carried + (Nt * e_dim * elem if tied_lookups and not decoder else 0)
        # embedding (+ projection), scale, positions, dropout; decoder inputs are shifted labels (int64)
        kept = (N * e_dim * elem if e_dim != d else 0) + (nd if config.dropout > 0 else 0) + (N * 8 if decoder else 0)
        lookup_grad = N * (e_dim * elem + 8) if tied_lookups else V * e_dim * elem  # sparse rows, or dense
        if not config.tie_word_embeddings and not decoder:
            # untied, the decoder lookup's dense gradient of the embedding waits through the encoder's backward,
            # and the encoder lookup's is added to it out of place
            carry += V * e_dim * elem
            lookup_grad += V * e_dim * elem
        segments.append((f"{tag} embedding", kept, lookup_grad + nd + side_grad + carry))
        L = len(layers)
        reconstructed = L - min(keep, L) if mode in ("reversible", "hybrid") else 0
        for i, layer in enumerate(layers):
            if i < reconstructed:
                anchor = nd if config.reversible_exact_every and i > 0 and i % config.reversible_exact_every == 0 else 0
                segments.append((f"{tag} layer {i} (reconstructed)", anchor, layer.reconstruct + 2 * side_grad + carry))
            elif mode == "checkpoint":
                segments.append(
                    (f"{tag} layer {i} (recomputed)", nd, layer.saved + layer.transient + nd + side_grad + carry)
                )
            else:
                # a kept input: the embedding output or the previous layer's output; in hybrid mode the lowest kept
                # layer's input is the reconstructed part's output, held by the tape until its backward
                own_input = nd if layer.keeps_input or (reconstructed and i == reconstructed) else 0
                segments.append((f"{tag} layer {i}", layer.saved + own_input, layer.transient + nd + side_grad + carry))
        # final LayerNorm: its input (the stack output), mean/rstd, and its output (the encoder output is read by
        # every cross-attention; the decoder's by the LM head, which the chunked head does not keep: a factorised
        # model's projection does, and a caller holding the output holds it, counted below)
        output = nd if not (decoder and chunked and e_dim == d) else 0
        segments.append((f"{tag} final norm", nd + output + 2 * N * 4, 2 * nd + side_grad + carry))
    params += V * e_dim + (d * e_dim if e_dim != d else 0) + (0 if config.tie_word_embeddings else V * e_dim)
    head_forward = 0
    if chunked:
        rows, cols = loss_tile(max(Nl, 1), V, config.loss_chunk_size)
        tile = rows * cols * 4  # float32 logits
        # labelled hidden rows, the gradient of the hidden states (float32), log-sum-exp, labels, their positions
        head_kept = Nl * e_dim * elem + Nl * e_dim * 4 + Nl * 20
        # forward: one tile with its softmax-weighted rows of W; backward: dL/dhidden, scattered back to every position
        head_forward = tile + 3 * rows * e_dim * 4
        head_transient = Nl * e_dim * elem + Nt * e_dim * elem
        # the deferred weight gradient, after every other backward: a float32 vocab x e buffer (cast to the weight's
        # dtype), one tile, the handed-over rows and, with tied embeddings, both lookups' sparse rows
        deferred = V * e_dim * 4 + (V * e_dim * elem if elem != 4 else 0) + tile + carried
        deferred += (B * S + Nt) * (e_dim * elem + 8) if tied_lookups else 0
        segments.insert(0, ("output embedding gradient (deferred)", 0, deferred))
        held = Nt * e_dim * elem if logits_alive else 0  # the output keeps the hidden states its logits come from
    else:
        head_kept = Nt * V * elem + (Nt * e_dim * elem if e_dim != d else 0)  # log-softmax output (+ projected hidden)
        # backward of the loss: dL/dlog-probs and dL/dlogits next to the kept log-probs; then the log-probs are
        # freed and the LM head's matmuls produce dL/dhidden and the embedding-sized weight gradient
        head_transient = max(2 * Nt * V * elem, Nt * e_dim * elem + V * e_dim * elem)
        held = Nt * V * elem if logits_alive else 0
    segments.append(("LM head and loss", head_kept, head_transient))
    if supernet:
        per_pos = lambda layers: min(tie_blocks, layers) if tie_blocks else layers  # noqa: E731
        params += per_pos(config.encoder_layers) * config.encoder_splits * len(encoder_ops)
        params += per_pos(config.decoder_layers) * (config.decoder_splits - 1) * len(decoder_ops)
    kept_total = held + sum(kept for _, kept, _ in segments)
    peak, peak_at, running = kept_total + head_forward, "forward", kept_total
    for name, kept, transient in reversed(segments):
        if running + transient > peak:
            peak, peak_at = running + transient, name
        running -= kept
    param_bytes = params * elem
    states = 0 if optimizer == "sgd" else 2
    foreach = device == "cuda" if optimizer_foreach is None else optimizer_foreach
    largest = max(V * e_dim, 1) * elem
    return MemoryEstimate(
        mode=mode,
        supernet=supernet,
        keep_layers=keep,
        batch_size=B,
        source_length=S,
        target_length=T,
        parameter_bytes=param_bytes,
        gradient_bytes=param_bytes,
        optimizer_bytes=states * params * 4,
        activation_bytes=int(peak),
        saved_activation_bytes=int(kept_total),
        optimizer_step_bytes=(param_bytes if foreach else largest) if states else 0,
        peak_at=peak_at,
        breakdown={name: kept for name, kept, _ in segments},
    )
