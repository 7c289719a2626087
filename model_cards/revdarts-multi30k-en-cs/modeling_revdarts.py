"""RevDarts: a multi-split reversible encoder-decoder whose split functions are given by a genotype.

Layout follows transformers' single-file encoder-decoders (Marian): embeddings → encoder stack → decoder
stack with cross-attention → tied LM head. The stacks are ``ReversibleStack``s (``reversible.py``), the
split functions are built from the op registry (``ops.py``).

This file and its relative imports are copied next to saved models (``trust_remote_code``).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput, Seq2SeqModelOutput

from .configuration_revdarts import RevDartsConfig
from .generation_revdarts import checked_length_kwargs, normalize_max_length
from .ops import OpContext, SplitFunction, sinusoidal_positions
from .reversible import ReversibleLayer, ReversibleStack

_TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5
# transformers 5.2x renamed the cache argument/output field from ``past_key_values`` to ``cache``.
CACHE_FIELD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"


class RevDartsCache:
    """Incremental-decoding state: per decoder layer and split, the state dict of its op (self-attention
    keys/values, the last w-1 inputs of each convolution and dynamic convolution, the cross-attention
    keys/values computed once from the encoder output).

    ``static`` lists the (layer, split) states that depend on the encoder output only (cross-attention):
    beam search permutes beams within a source sentence, whose rows there are identical, so
    ``reorder_cache(beam_idx, within_batch=True)`` leaves them alone.
    """

    is_compileable = False

    def __init__(self, num_layers: int, static: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.layers: list[dict] = [{} for _ in range(num_layers)]
        self.seen_tokens = 0
        self.static = frozenset(static)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor, within_batch: bool = False) -> None:
        """Follow beam search: keep, for each new beam, the state of the beam it extends. With
        ``within_batch`` (every index points at a beam of the same source sentence, as in ``generate``),
        the encoder-only states are kept as they are."""
        for i, layer in enumerate(self.layers):
            for k, state in layer.items():
                if within_batch and (i, k) in self.static:
                    continue
                for key, value in state.items():
                    state[key] = value.index_select(0, beam_idx.to(value.device))

    def __len__(self) -> int:
        return len(self.layers)


def shift_tokens_right(labels: torch.Tensor, pad_token_id: int, decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: the labels shifted one step right after the start token."""
    shifted = labels.new_zeros(labels.shape)
    shifted[:, 1:] = labels[:, :-1].clone()
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


SplitBuilder = Callable[..., nn.Module]


def _return_dict(config: RevDartsConfig, return_dict: bool | None) -> bool:
    # An output dataclass unless asked for a tuple (by the argument, else by config.return_dict).
    return return_dict if return_dict is not None else getattr(config, "return_dict", True)


# ------------------------------------------------------------------------------------------- chunked LM head loss
# At a realistic vocabulary the LM head dominates a reversible step's memory: the logits, their log-softmax and its
# gradient are batch x length x vocab floats each, against the one layer the stacks keep. The training loss below
# never holds them: it works on tiles of at most ``loss_chunk_size`` logits, a block of tokens against a slice of
# the vocabulary (about square, so that every matmul stays large enough to run at full speed). Positions labelled
# -100 are dropped first.
#
# Forward: per token block, an online softmax over the vocabulary slices (as flash attention does) gives the
# log-sum-exp and the loss terms and, since the loss's gradient with respect to the logits is known up to the
# scalar that reaches the loss, the gradient of the hidden states too: Σ_j softmax_j W_j (accumulated with the
# running rescaling) minus the target's rows of W. Backward scales it. The output embedding's gradient is computed
# at the very end of backward from the saved log-sum-exp, recomputing each tile's logits once: four matmuls over
# the labelled tokens in all, against three over every position for the full head.
#
# Deferring that gradient matters with a tied embedding: autograd sums the gradients of all uses of a weight before
# they reach .grad, so a gradient returned by the head would wait, vocab x e floats, in that sum through the backward
# of both stacks. Here the head reads the weight through ``_DeferredHeadWeightGradient``, whose backward runs only
# once every use of its output has returned; a tied model's two embedding lookups use that output too, with sparse
# gradients (the batch's rows), so the one dense vocab x e gradient is made at the end.


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast gives a matmul on ``device_type`` now; None when autocast is off there."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except (TypeError, AttributeError):  # torch < 2.4: device-specific functions
        if device_type == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def loss_tile(tokens: int, vocab_size: int, chunk_size: int) -> tuple[int, int]:
    """(token rows, vocabulary columns) of the chunked loss's logit tiles: about square, at most ``chunk_size``
    logits, a token's whole vocabulary at once when that fits in as many rows as a square has."""
    rows = max(1, min(tokens, max(math.isqrt(chunk_size), chunk_size // vocab_size)))
    return rows, max(1, min(vocab_size, chunk_size // rows))


def _in_slice(labels: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which labels fall in the vocabulary slice [start, stop), and their column there (clamped into it for the
    others, which are masked): index arithmetic without a device-to-host sync."""
    return (labels >= start) & (labels < stop), (labels - start).clamp_(0, stop - start - 1)


class _HeadGradientState:
    """Shared by a chunked head and the deferred gradient of its weight: the loss settings, the matmul dtype (the
    autocast dtype of the forward pass, if any) and, per backward of the head, (hidden rows, labels, log-sum-exp,
    gradient reaching the loss), handed over by the head's backward and consumed by the weight's."""

    def __init__(self, weight: torch.Tensor, label_smoothing: float, chunk_size: int) -> None:
        self.label_smoothing = float(label_smoothing)
        self.chunk_size = int(chunk_size)
        self.compute_dtype = _autocast_dtype(weight.device.type) or weight.dtype
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []


class _DeferredHeadWeightGradient(torch.autograd.Function):
    """The LM head's weight, unchanged; its backward adds the head's weight gradient (recomputed from the pending
    state) to what the other uses of its output returned (sparse embedding rows) and returns one dense gradient."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, state: _HeadGradientState) -> torch.Tensor:
        ctx.state = state
        ctx.save_for_backward(weight)
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        (weight,) = ctx.saved_tensors
        state: _HeadGradientState = ctx.state
        pending, state.pending = state.pending, []
        vocab, dtype, smoothing = weight.shape[0], state.compute_dtype, state.label_smoothing
        out = None
        with torch.autocast(weight.device.type, enabled=False):
            w = weight.to(dtype)
            for hidden, labels, lse, grad_loss in pending:
                n = hidden.shape[0]
                if n == 0:
                    continue
                if out is None:
                    out = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                h, scale = hidden.to(dtype), float(grad_loss) / n
                rows, cols = loss_tile(n, vocab, state.chunk_size)
                for start in range(0, vocab, cols):
                    stop = min(vocab, start + cols)
                    for first in range(0, n, rows):
                        last = min(n, first + rows)
                        target = labels[first:last]
                        # softmax - target, target = (1 - ε) on the label + ε / vocab everywhere
                        grad_logits = torch.mm(h[first:last], w[start:stop].t()).float()
                        grad_logits.sub_(lse[first:last, None]).exp_()
                        if smoothing:
                            grad_logits.sub_(smoothing / vocab)
                        inside, local = _in_slice(target, start, stop)
                        grad_logits.scatter_add_(1, local[:, None], inside.float().mul_(smoothing - 1.0)[:, None])
                        part = grad_logits.to(dtype).t()
                        del grad_logits  # before the next tile's logits exist
                        if dtype == torch.float32:
                            out[start:stop].addmm_(part, h[first:last], alpha=scale)
                        else:
                            out[start:stop].add_(torch.mm(part, h[first:last]), alpha=scale)
                        del part
        if out is None:  # no token had a label
            return (grad.to_dense() if grad is not None and grad.is_sparse else grad), None
        out = out.to(weight.dtype)
        if grad is not None:
            out.add_(grad)
        return out, None


class _ChunkedLMHeadLoss(torch.autograd.Function):
    """Mean label-smoothed cross-entropy of ``hidden @ weight.T`` against ``labels``, without the full logits.

    ``hidden`` holds only the rows that have a label. The forward pass keeps the gradient of ``hidden`` (rows x e)
    and the log-sum-exp; the weight's gradient is left to the ``_DeferredHeadWeightGradient`` that ``weight`` comes
    from (the backward here returns none for it).
    """

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, state: _HeadGradientState
    ) -> torch.Tensor:
        n, vocab, dtype, smoothing = hidden.shape[0], weight.shape[0], state.compute_dtype, state.label_smoothing
        device, f32 = hidden.device, torch.float32
        total = torch.zeros((), dtype=f32, device=device)
        lse = torch.empty(n, dtype=f32, device=device)
        grad_hidden = torch.empty(hidden.shape, dtype=f32, device=device)
        with torch.autocast(device.type, enabled=False):
            w, h = weight.to(dtype), hidden.to(dtype)
            # the target's part of every token's gradient: (1 - ε) W_label + ε/V Σ_j W_j
            spread = w.sum(0, dtype=f32).mul_(smoothing / vocab) if smoothing else None
            rows, cols = loss_tile(n, vocab, state.chunk_size)
            for first in range(0, n, rows):
                last = min(n, first + rows)
                target = labels[first:last]
                top = torch.full((last - first,), -math.inf, dtype=f32, device=device)
                norm = torch.zeros(last - first, dtype=f32, device=device)
                picked = torch.zeros(last - first, dtype=f32, device=device)
                logit_sum = torch.zeros(last - first, dtype=f32, device=device)
                weighted = torch.zeros(last - first, hidden.shape[1], dtype=f32, device=device)
                for start in range(0, vocab, cols):
                    stop = min(vocab, start + cols)
                    logits = torch.mm(h[first:last], w[start:stop].t()).float()
                    inside, local = _in_slice(target, start, stop)
                    picked = torch.where(inside, logits.gather(1, local[:, None]).squeeze(1), picked)
                    if smoothing:
                        logit_sum += logits.sum(1)
                    new_top = torch.maximum(top, logits.amax(1))
                    rescale = (top - new_top).exp_()
                    probs = logits.sub_(new_top[:, None]).exp_()  # exp(z - running max), in place
                    norm = norm.mul_(rescale).add_(probs.sum(1))
                    weighted.mul_(rescale[:, None]).add_(torch.mm(probs.to(dtype), w[start:stop]))
                    top = new_top
                    del logits, probs  # before the next tile's logits exist
                lse[first:last] = top + norm.log()
                # loss_i = lse_i - (1 - ε) z_i,label - ε/V Σ_j z_ij: F.cross_entropy's label smoothing, per token
                total += (lse[first:last] - (1.0 - smoothing) * picked - smoothing / vocab * logit_sum).sum()
                grad = weighted.div_(norm[:, None]).sub_(w[target].float(), alpha=1.0 - smoothing)
                grad_hidden[first:last] = grad.sub_(spread) if spread is not None else grad
        ctx.state = state
        ctx.hidden_dtype = hidden.dtype
        ctx.save_for_backward(hidden, labels, lse, grad_hidden)
        return total / n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        hidden, labels, lse, grad_hidden = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            ctx.state.pending.append((hidden, labels, lse, grad_loss))
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        scale = grad_loss.float() / max(hidden.shape[0], 1)
        return grad_hidden.mul(scale).to(ctx.hidden_dtype), None, None, None


def _chunked_lm_head_loss(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, state: _HeadGradientState
) -> torch.Tensor:
    """``F.cross_entropy(F.linear(hidden, weight).float().view(-1, vocab), labels.view(-1), ignore_index=-100,
    label_smoothing=...)`` with its gradients, in tiles of ``state.chunk_size`` logits. ``weight`` is the output of
    ``_DeferredHeadWeightGradient`` for ``state`` when its gradient is wanted (see above)."""
    vocab = weight.shape[0]
    flat = labels.reshape(-1)
    keep = (flat != -100).nonzero().squeeze(1)
    target = flat.index_select(0, keep)
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= vocab):
        bad = int(target.min()) if int(target.min()) < 0 else int(target.max())
        raise ValueError(f"labels contain {bad}, outside the vocabulary 0..{vocab - 1} (and not the ignored -100)")
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
    return _ChunkedLMHeadLoss.apply(rows, weight, target, state)


@dataclass
class RevDartsSeq2SeqLMOutput(Seq2SeqLMOutput):
    """A ``Seq2SeqLMOutput`` from a training step whose loss came from the chunked head: its ``logits`` are computed
    from the decoder's output when first asked for (``.logits``, ``["logits"]``, ``to_tuple()``, an integer index),
    so a training loop that reads only ``.loss`` never holds the batch x length x vocab tensor."""

    def _materialize_logits(self) -> None:
        compute = self.__dict__.pop("_compute_logits", None)
        if compute is None:
            return
        self["logits"] = compute()
        # the key order of an output built with its logits: loss, logits, then the rest
        for key in [k for k in self.keys() if k not in ("loss", "logits")]:
            self.move_to_end(key)

    def __getattribute__(self, name: str) -> Any:
        if name == "logits" and "_compute_logits" in object.__getattribute__(self, "__dict__"):
            object.__getattribute__(self, "_materialize_logits")()
        return super().__getattribute__(name)

    def __getitem__(self, key: Any) -> Any:
        if key == "logits" or not isinstance(key, str):
            self._materialize_logits()
        return super().__getitem__(key)

    def to_tuple(self) -> tuple:
        self._materialize_logits()
        return super().to_tuple()


def derived_split(name: str, width: int, config: RevDartsConfig, causal: bool, layer: int, split: int) -> nn.Module:
    """The split function of a derived model: the genotype's op for (layer, split)."""
    return SplitFunction(name, width, config, causal)


def _build_layers(
    config: RevDartsConfig, decoder: bool, genotype: list[list[str]], build_split: SplitBuilder
) -> list[ReversibleLayer]:
    # build_split(name, width, config, causal, layer, split) -> G_k; the supernet passes a mixed-op builder.
    splits = config.decoder_splits if decoder else config.encoder_splits
    width = config.d_model // splits
    layers = []
    for i, names in enumerate(genotype):
        names = list(names) + (["cross_attn"] if decoder else [])
        layers.append(ReversibleLayer([build_split(n, width, config, decoder, i, k) for k, n in enumerate(names)]))
    return layers


# Where a saved folder's config.json points ``AutoModel*`` and ``pipeline("translation")`` (remote code).
AUTO_MAP = {
    "AutoConfig": "configuration_revdarts.RevDartsConfig",
    "AutoModel": "modeling_revdarts.RevDartsModel",
    "AutoModelForSeq2SeqLM": "modeling_revdarts.RevDartsForConditionalGeneration",
}
CUSTOM_PIPELINES = {
    "translation": {
        "impl": "pipeline_translation.TranslationPipeline",
        "pt": ["AutoModelForSeq2SeqLM"],
        "type": "text",
    }
}


def _pipeline_file() -> Path:
    # This import is never needed at load time; it is here so that transformers' relative-import scan copies
    # pipeline_translation.py along with this file (into saved folders and its dynamic-module cache), which
    # keeps the pipeline shippable by a model that was itself loaded as remote code.
    from .pipeline_translation import TranslationPipeline  # noqa: F401

    return Path(__file__).with_name("pipeline_translation.py")


class RevDartsPreTrainedModel(PreTrainedModel):
    config_class = RevDartsConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass defined elsewhere (e.g. the search supernet) is not one of the classes the saved
        # ``auto_map`` names: it does not inherit the registration (its module cannot travel as remote code).
        super().__init_subclass__(**kwargs)
        cls._auto_class = None

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.save_pretrained`` plus what makes the folder self-contained: ``auto_map`` for
        AutoConfig/AutoModel/AutoModelForSeq2SeqLM, the modeling code (copied by transformers, with its
        relative imports), and the translation pipeline (``custom_pipelines``, its .py file)."""
        if self._auto_class is not None:
            os.makedirs(save_directory, exist_ok=True)
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            auto_map.update(AUTO_MAP)
            self.config.auto_map = auto_map
            if isinstance(self, RevDartsForConditionalGeneration):
                self.config.custom_pipelines = {k: dict(v) for k, v in CUSTOM_PIPELINES.items()}
                # Written before the parent call: with push_to_hub=True it uploads the folder itself.
                shutil.copyfile(_pipeline_file(), Path(save_directory) / "pipeline_translation.py")
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class RevDartsStackEmbedding(nn.Module):
    """Token embedding (shared, width e) → e×d projection when factorised → scale → sinusoidal positions."""

    def __init__(self, config: RevDartsConfig) -> None:
        super().__init__()
        e = config.embedding_dim or config.d_model
        self.proj = nn.Linear(e, config.d_model, bias=False) if e != config.d_model else None
        self.scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.max_positions = config.max_position_embeddings
        self.d_model = config.d_model

    def forward(self, embeds: torch.Tensor, past_length: int = 0) -> torch.Tensor:
        length = embeds.shape[1]
        if past_length + length > self.max_positions:
            raise ValueError(
                f"input of {past_length + length} positions is longer than max_position_embeddings="
                f"{self.max_positions}; truncate the input (tokenizer truncation=True, max_length) or build the "
                "model with a larger max_position_embeddings"
            )
        x = self.proj(embeds) if self.proj is not None else embeds
        x = x * self.scale
        return x + sinusoidal_positions(past_length, length, self.d_model, x.device, x.dtype)


class _RevDartsSide(nn.Module):
    """What encoder and decoder share: the embedding, the reversible stack of their genotype, a final LayerNorm."""

    def __init__(self, config: RevDartsConfig, decoder: bool, build_split: SplitBuilder) -> None:
        super().__init__()
        self.embed = RevDartsStackEmbedding(config)
        self.dropout = config.dropout
        genotype = config.decoder_genotype if decoder else config.encoder_genotype
        self.stack = ReversibleStack(
            _build_layers(config, decoder, genotype, build_split),
            config.reversible,
            config.reversible_exact_every,
            config.reversible_keep_layers,
        )
        self.norm = nn.LayerNorm(config.d_model)


class RevDartsEncoder(_RevDartsSide):
    def __init__(self, config: RevDartsConfig, build_split: SplitBuilder = derived_split) -> None:
        super().__init__(config, False, build_split)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = F.dropout(self.embed(inputs_embeds), self.dropout, self.training)
        pad = attention_mask.bool() if attention_mask is not None else None
        ctx = OpContext(pad_mask=pad, self_attn_mask=pad[:, None, None, :] if pad is not None else None)
        return self.norm(self.stack(x, ctx))


class RevDartsDecoder(_RevDartsSide):
    def __init__(self, config: RevDartsConfig, build_split: SplitBuilder = derived_split) -> None:
        super().__init__(config, True, build_split)
        # (layer, split) of every cross-attention: their cache state is a function of the encoder output only.
        self.static_states = frozenset(
            (i, k)
            for i, layer in enumerate(self.stack.layers)
            for k, fn in enumerate(layer.functions)
            if getattr(getattr(fn, "op", None), "name", None) == "cross_attn"
        )

    def new_cache(self) -> RevDartsCache:
        return RevDartsCache(len(self.stack.layers), self.static_states)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: RevDartsCache | None = None,
    ) -> torch.Tensor:
        past = cache.seen_tokens if cache is not None else 0
        length = inputs_embeds.shape[1]
        x = F.dropout(self.embed(inputs_embeds, past), self.dropout, self.training)
        # Query i (absolute position past+i) sees keys 0..past+i, minus padded keys.
        q_pos = torch.arange(past, past + length, device=x.device)
        k_pos = torch.arange(past + length, device=x.device)
        self_mask = (k_pos[None, :] <= q_pos[:, None])[None, None]
        pad = None
        if attention_mask is not None:
            attention_mask = attention_mask.bool()
            keys = attention_mask[:, -(past + length) :]
            if keys.shape[1] != past + length:
                raise ValueError(
                    f"decoder_attention_mask covers {keys.shape[1]} positions but the decoder sees {past + length}"
                )
            self_mask = self_mask & keys[:, None, None, :]
            pad = keys[:, past:]
        cross = encoder_attention_mask.bool()[:, None, None, :] if encoder_attention_mask is not None else None
        ctx = OpContext(pad_mask=pad, self_attn_mask=self_mask, cross_attn_mask=cross, causal=True)
        out = self.stack(x, ctx, encoder_hidden_states, cache.layers if cache is not None else None)
        if cache is not None:
            cache.seen_tokens += length
        return self.norm(out)


class RevDartsModel(RevDartsPreTrainedModel):
    """Encoder-decoder body: returns the decoder's last hidden state (width d_model)."""

    def __init__(self, config: RevDartsConfig, build_split: SplitBuilder = derived_split) -> None:
        super().__init__(config)
        e = config.embedding_dim or config.d_model
        self.shared = nn.Embedding(config.vocab_size, e, padding_idx=config.pad_token_id)
        self.encoder = RevDartsEncoder(config, build_split)
        self.decoder = RevDartsDecoder(config, build_split)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.shared = value

    def get_encoder(self) -> nn.Module:
        return _EncoderView(self)

    def _check_ids(self, ids: torch.Tensor, name: str) -> None:
        if ids.numel() and (int(ids.max()) >= self.config.vocab_size or int(ids.min()) < 0):
            raise ValueError(
                f"{name} contains token id {int(ids.max())} outside the vocabulary (vocab_size="
                f"{self.config.vocab_size}); the tokenizer does not match this model"
            )

    def encode(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids (or inputs_embeds) to encode")
            self._check_ids(input_ids, "input_ids")
            inputs_embeds = self.shared(input_ids)
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(inputs_embeds.shape[:2]):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the input {tuple(inputs_embeds.shape[:2])}"
            )
        return self.encoder(inputs_embeds, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Seq2SeqModelOutput:
        cache = kwargs.pop("cache", None) or kwargs.pop("past_key_values", None)
        if encoder_outputs is None:
            encoder_outputs = BaseModelOutput(last_hidden_state=self.encode(input_ids, attention_mask, inputs_embeds))
        elif not isinstance(encoder_outputs, BaseModelOutput):
            encoder_outputs = BaseModelOutput(last_hidden_state=encoder_outputs[0])
        if use_cache and cache is None:
            cache = self.decoder.new_cache()
        if not use_cache:
            cache = None
        if decoder_inputs_embeds is None:
            if decoder_input_ids is None:
                raise ValueError("pass decoder_input_ids, or labels to RevDartsForConditionalGeneration")
            self._check_ids(decoder_input_ids, "decoder_input_ids")
            decoder_inputs_embeds = self.shared(decoder_input_ids)
        if decoder_inputs_embeds.shape[0] != encoder_outputs.last_hidden_state.shape[0]:
            raise ValueError(
                f"the decoder inputs (labels/decoder_input_ids) have {decoder_inputs_embeds.shape[0]} rows but the "
                f"encoder inputs {encoder_outputs.last_hidden_state.shape[0]}: give one target per source sentence"
            )
        hidden = self.decoder(
            decoder_inputs_embeds,
            encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask,
            attention_mask=decoder_attention_mask,
            cache=cache,
        )
        out = Seq2SeqModelOutput(
            last_hidden_state=hidden,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            **{CACHE_FIELD: cache},
        )
        return out if _return_dict(self.config, return_dict) else out.to_tuple()


class _EncoderView(nn.Module):
    """What ``generate`` calls as ``model.get_encoder()``: token ids in, BaseModelOutput out."""

    def __init__(self, model: RevDartsModel) -> None:
        super().__init__()
        self._model = [model]  # a list: not registered as a submodule, so no parameters are duplicated
        self.main_input_name = "input_ids"

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, return_dict=True, **kwargs):
        return BaseModelOutput(last_hidden_state=self._model[0].encode(input_ids, attention_mask, inputs_embeds))


class RevDartsForConditionalGeneration(RevDartsPreTrainedModel, GenerationMixin):
    """RevDarts with a language-model head tied to the shared embedding; translation with ``generate``."""

    if _TRANSFORMERS_V5:
        _tied_weights_keys = {"lm_head.weight": "model.shared.weight"}
    else:
        _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: RevDartsConfig, build_split: SplitBuilder = derived_split) -> None:
        super().__init__(config)
        self.model = RevDartsModel(config, build_split)
        e = config.embedding_dim or config.d_model
        self.output_proj = nn.Linear(config.d_model, e, bias=False) if e != config.d_model else None
        self.lm_head = nn.Linear(e, config.vocab_size, bias=False)
        self.post_init()
        self._set_generation_defaults()

    def _set_generation_defaults(self) -> None:
        """A plain ``generate(**inputs)`` starts, pads and stops with the config's ids (generation_config.json of
        a saved model overrides these) and may run up to the decoder's position limit."""
        gen = getattr(self, "generation_config", None)
        if gen is None:
            return
        cfg = self.config
        gen.decoder_start_token_id = cfg.decoder_start_token_id
        gen.bos_token_id = cfg.bos_token_id
        gen.eos_token_id = cfg.eos_token_id
        gen.pad_token_id = cfg.pad_token_id
        normalize_max_length(gen, cfg.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        loaded = super().from_pretrained(*args, **kwargs)
        # generation_config.json is read after __init__: bring a folder of the other major (or of an earlier
        # version) to this major's length convention before a pipeline reads it (generation_revdarts.py).
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        normalize_max_length(model.generation_config, model.config.max_position_embeddings)
        return loaded

    def generate(self, inputs: torch.Tensor | None = None, generation_config: Any = None, **kwargs: Any) -> Any:
        """``GenerationMixin.generate``; without ``max_length``/``max_new_tokens`` it may run up to the decoder's
        position limit, and a length that would run past it is a ``ValueError`` before any decoding."""
        limit = self.config.max_position_embeddings
        normalize_max_length(self.generation_config, limit)
        cfg = self.config
        specials = {i for i in (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id, cfg.decoder_start_token_id)
                    if i is not None}
        kwargs = checked_length_kwargs(limit, self.generation_config, generation_config, inputs, kwargs, specials)
        return super().generate(inputs, generation_config=generation_config, **kwargs)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # our cache also holds convolution history; generate must not build a DynamicCache

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.shared

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.shared = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def get_encoder(self) -> nn.Module:
        return self.model.get_encoder()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Seq2SeqLMOutput:
        if labels is not None:
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                decoder_input_ids = shift_tokens_right(
                    labels, self.config.pad_token_id, self.config.decoder_start_token_id
                )
        elif use_cache is None:
            use_cache = self.config.use_cache
        state = None
        head_weight = self.lm_head.weight
        if labels is not None and self._chunked_loss_applies():
            state = _HeadGradientState(head_weight, self.config.label_smoothing, self.config.loss_chunk_size)
            if head_weight.requires_grad:
                head_weight = _DeferredHeadWeightGradient.apply(head_weight, state)
                if self._input_embeddings_tied_to_head():
                    # the lookups join the deferred gradient with sparse rows (see _DeferredHeadWeightGradient)
                    if inputs_embeds is None and input_ids is not None and encoder_outputs is None:
                        self.model._check_ids(input_ids, "input_ids")
                        inputs_embeds, input_ids = self._embed(input_ids, head_weight), None
                    if decoder_inputs_embeds is None and decoder_input_ids is not None:
                        self.model._check_ids(decoder_input_ids, "decoder_input_ids")
                        decoder_inputs_embeds, decoder_input_ids = self._embed(decoder_input_ids, head_weight), None
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        hidden = out.last_hidden_state
        if self.output_proj is not None:
            hidden = self.output_proj(hidden)
        fields = {"encoder_last_hidden_state": out.encoder_last_hidden_state, CACHE_FIELD: getattr(out, CACHE_FIELD)}
        if state is not None:
            output = RevDartsSeq2SeqLMOutput(loss=_chunked_lm_head_loss(hidden, head_weight, labels, state), **fields)
            output._compute_logits = self._logits_when_read(hidden)
        else:
            logits = self.lm_head(hidden)
            loss = None
            if labels is not None:
                loss = F.cross_entropy(
                    logits.float().view(-1, logits.shape[-1]),
                    labels.reshape(-1),
                    ignore_index=-100,
                    label_smoothing=self.config.label_smoothing,
                )
            output = Seq2SeqLMOutput(loss=loss, logits=logits, **fields)
        return output if _return_dict(self.config, return_dict) else output.to_tuple()

    def _chunked_loss_applies(self) -> bool:
        """A training step (train mode, gradients on) with ``config.chunked_loss`` and the plain bias-free head the
        chunked loss computes."""
        head = self.lm_head
        return (
            self.config.chunked_loss
            and self.training
            and torch.is_grad_enabled()
            and type(head) is nn.Linear
            and head.bias is None
        )

    def _input_embeddings_tied_to_head(self) -> bool:
        shared = self.model.shared
        return (
            type(shared) is nn.Embedding
            and shared.weight is self.lm_head.weight
            and shared.max_norm is None
            and not shared.scale_grad_by_freq
        )

    def _embed(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``self.model.shared(ids)`` on ``weight`` (the same values), with a sparse gradient."""
        return F.embedding(ids, weight, self.model.shared.padding_idx, sparse=True)

    def _logits_when_read(self, hidden: torch.Tensor) -> Callable[[], torch.Tensor]:
        weight = self.lm_head.weight
        version = weight._version

        def compute() -> torch.Tensor:
            if weight._version != version:
                raise RuntimeError(
                    "the logits of this training step were not kept (config.chunked_loss) and the LM head's weight "
                    "has changed since (an optimizer step?): read them before changing the weights, or set "
                    "model.config.chunked_loss = False to keep them"
                )
            return F.linear(hidden, weight)

        return compute

    def prepare_inputs_for_generation(
        self,
        decoder_input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_outputs: Any = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        # Our own slicing: feed exactly the tokens the cache has not seen (all of them without a cache).
        cache = kwargs.get("cache") or kwargs.get("past_key_values")
        if cache is not None:
            decoder_input_ids = decoder_input_ids[:, cache.get_seq_length() :]
        return {
            "decoder_input_ids": decoder_input_ids,
            "attention_mask": attention_mask,
            "encoder_outputs": encoder_outputs,
            "use_cache": use_cache,
            CACHE_FIELD: cache,
        }

    def _reorder_cache(self, cache: RevDartsCache, beam_idx: torch.LongTensor) -> RevDartsCache:
        # generate's beam search only permutes the beams of each source sentence
        cache.reorder_cache(beam_idx, within_batch=True)
        return cache

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)


RevDartsConfig.register_for_auto_class()
RevDartsModel.register_for_auto_class("AutoModel")
RevDartsForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
