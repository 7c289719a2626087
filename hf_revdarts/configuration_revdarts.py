"""RevDarts configuration: model sizes, the reversible split layout and the genotype.

This file is copied next to saved models (``trust_remote_code``), so it imports nothing from hf_revdarts.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

# Canonical candidate-op names (DESIGN.md §1). The order is the order of the α vector in the supernet.
ENCODER_OPS: tuple[str, ...] = (
    "conv_3",
    "conv_5",
    "conv_7",
    "conv_11",
    "dynconv_3",
    "dynconv_7",
    "dynconv_11",
    "dynconv_15",
    "self_attn",
    "glu",
    "ffn",
    "identity",
    "zero",
)
DECODER_OPS: tuple[str, ...] = ENCODER_OPS + ("cross_attn",)
POOLINGS: tuple[str, ...] = ("max", "avg")

# The vanilla Transformer expressed as a genotype: one split attends, the other is a feed-forward.
STANDARD_ENCODER_LAYER: list[str] = ["self_attn", "ffn"]
STANDARD_DECODER_LAYER: list[str] = ["self_attn", "ffn"]


def standard_genotype(encoder_layers: int, decoder_layers: int, decoder_splits: int = 3) -> dict[str, list]:
    """The self_attn/ffn genotype (the Transformer baseline) for the given depths."""
    dec = (STANDARD_DECODER_LAYER * decoder_splits)[: decoder_splits - 1]
    return {
        "encoder": [list(STANDARD_ENCODER_LAYER) for _ in range(encoder_layers)],
        "decoder": [list(dec) for _ in range(decoder_layers)],
    }


def validate_genotype(genotype: Any, num_layers: int, names_per_layer: int, allowed: tuple[str, ...], side: str) -> None:
    """Raise ``ValueError`` naming the problem when ``genotype`` is not ``num_layers`` lists of op names."""
    field = f"{side}_genotype"
    if not isinstance(genotype, (list, tuple)):
        raise ValueError(f"{field} must be a list with one list of op names per layer, got {type(genotype).__name__}")
    if len(genotype) != num_layers:
        raise ValueError(
            f"{field} has {len(genotype)} layers but {side}_layers={num_layers}: give one entry per layer "
            f"or change {side}_layers"
        )
    for i, layer in enumerate(genotype):
        if not isinstance(layer, (list, tuple)) or len(layer) != names_per_layer:
            got = len(layer) if isinstance(layer, (list, tuple)) else type(layer).__name__
            raise ValueError(
                f"{field}[{i}] must list {names_per_layer} op names (one per searchable split of the {side}), got {got}"
            )
        for name in layer:
            if name not in allowed:
                if side == "encoder" and name == "cross_attn":
                    raise ValueError(
                        f"{field}[{i}] uses 'cross_attn', which only exists in the decoder (the encoder has no "
                        "encoder output to attend to); pick another op"
                    )
                raise ValueError(f"{field}[{i}] has unknown op {name!r}; valid {side} ops: {', '.join(allowed)}")


class RevDartsConfig(PretrainedConfig):
    r"""
    Configuration of a multi-split reversible encoder-decoder whose layers are given by a searched genotype.

    Args:
        vocab_size: joint source/target vocabulary size.
        d_model: width of the residual stream; split into ``encoder_splits`` / ``decoder_splits`` equal parts.
        embedding_dim: width *e* of the factorised embedding (vocab × e, then e × d). ``None`` means e = d and
            no projection.
        encoder_layers, decoder_layers: number of reversible layers per stack.
        encoder_splits, decoder_splits: splits per layer (the decoder's last split is fixed cross-attention).
        pooling: how a split function merges its n-1 inputs, ``"max"`` or ``"avg"``.
        num_heads: heads of every attention op (must divide each split's width).
        ffn_multiplier: hidden width of ``ffn`` as a multiple of the split width.
        dropout, attention_dropout, activation_dropout: dropout probabilities.
        max_position_embeddings: longest input accepted (sinusoidal positions are precomputed up to it).
        reversible: train with backpropagation-with-reconstruction (``False``: ordinary autograd, same network).
        reversible_exact_every: keep an exact copy of the stack input every k layers so that reconstruction
            error cannot compound over more than k layers (0 = keep none, memory flat in depth).
        reversible_keep_layers: hybrid memory mode: with ``reversible=True``, the top k layers of each stack keep
            their activations (ordinary autograd) and only the layers below are reconstructed; time moves toward
            ordinary autograd as k grows (0 = reconstruct every layer; k >= the depth = ordinary autograd).
            ``hf_revdarts.memory.plan_memory`` picks k for a memory budget.
        label_smoothing: label smoothing of the training loss.
        encoder_genotype, decoder_genotype: one list of op names per layer; ``None`` gives the
            self_attn/ffn Transformer genotype.
    """

    model_type = "revdarts"
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "num_heads",
        "num_hidden_layers": "encoder_layers",
    }

    def __init__(
        self,
        vocab_size: int = 8000,
        d_model: int = 384,
        embedding_dim: int | None = None,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        encoder_splits: int = 2,
        decoder_splits: int = 3,
        pooling: str = "max",
        num_heads: int = 8,
        ffn_multiplier: int = 4,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation_dropout: float = 0.0,
        max_position_embeddings: int = 512,
        scale_embedding: bool = True,
        init_std: float = 0.02,
        reversible: bool = True,
        reversible_exact_every: int = 0,
        reversible_keep_layers: int = 0,
        label_smoothing: float = 0.0,
        encoder_genotype: list[list[str]] | None = None,
        decoder_genotype: list[list[str]] | None = None,
        use_cache: bool = True,
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        decoder_start_token_id: int = 1,
        is_encoder_decoder: bool = True,
        tie_word_embeddings: bool = True,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.embedding_dim = embedding_dim
        self.encoder_layers = encoder_layers
        self.decoder_layers = decoder_layers
        self.encoder_splits = encoder_splits
        self.decoder_splits = decoder_splits
        self.pooling = pooling
        self.num_heads = num_heads
        self.ffn_multiplier = ffn_multiplier
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.activation_dropout = activation_dropout
        self.max_position_embeddings = max_position_embeddings
        self.scale_embedding = scale_embedding
        self.init_std = init_std
        self.reversible = reversible
        self.reversible_exact_every = reversible_exact_every
        self.reversible_keep_layers = reversible_keep_layers
        self.label_smoothing = label_smoothing
        std = standard_genotype(encoder_layers, decoder_layers, decoder_splits)
        self.encoder_genotype = [list(x) for x in encoder_genotype] if encoder_genotype is not None else std["encoder"]
        self.decoder_genotype = [list(x) for x in decoder_genotype] if decoder_genotype is not None else std["decoder"]
        self.use_cache = use_cache
        super().__init__(
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            decoder_start_token_id=decoder_start_token_id,
            is_encoder_decoder=is_encoder_decoder,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )
        self.validate_revdarts()

    def get_genotype(self) -> dict[str, list[list[str]]]:
        """The genotype in the form ``RevDartsSupernet.genotype()`` returns."""
        return {"encoder": [list(x) for x in self.encoder_genotype], "decoder": [list(x) for x in self.decoder_genotype]}

    def validate_revdarts(self) -> None:
        """Check sizes and genotype; every message says which field to change."""
        if self.encoder_splits < 2 or self.decoder_splits < 2:
            raise ValueError(
                f"encoder_splits={self.encoder_splits} and decoder_splits={self.decoder_splits} must be >= 2 "
                "(a coupling needs at least two parts)"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not supported; use one of {POOLINGS}")
        for side, n in (("encoder", self.encoder_splits), ("decoder", self.decoder_splits)):
            if self.d_model % n:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by {side}_splits={n}; choose a d_model that is a "
                    f"multiple of {n}"
                )
            if (self.d_model // n) % self.num_heads:
                raise ValueError(
                    f"the {side} split width d_model/{side}_splits={self.d_model // n} is not divisible by "
                    f"num_heads={self.num_heads}; choose d_model a multiple of {n * self.num_heads} or fewer heads"
                )
        if self.reversible_exact_every < 0:
            raise ValueError(f"reversible_exact_every={self.reversible_exact_every} must be >= 0 (0 disables it)")
        if not isinstance(self.reversible_keep_layers, int) or self.reversible_keep_layers < 0:
            raise ValueError(
                f"reversible_keep_layers={self.reversible_keep_layers!r} must be an integer >= 0 (the number of top "
                "layers per stack that keep their activations; 0 = reconstruct every layer)"
            )
        if self.max_position_embeddings < 1:
            raise ValueError(f"max_position_embeddings={self.max_position_embeddings} must be positive")
        validate_genotype(self.encoder_genotype, self.encoder_layers, self.encoder_splits, ENCODER_OPS, "encoder")
        validate_genotype(self.decoder_genotype, self.decoder_layers, self.decoder_splits - 1, DECODER_OPS, "decoder")
