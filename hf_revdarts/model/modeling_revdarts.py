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
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=-100,
                label_smoothing=self.config.label_smoothing,
            )
        output = Seq2SeqLMOutput(
            loss=loss,
            logits=logits,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
            **{CACHE_FIELD: getattr(out, CACHE_FIELD)},
        )
        return output if _return_dict(self.config, return_dict) else output.to_tuple()

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
