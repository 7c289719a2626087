"""RevDarts configuration: model sizes, the reversible split layout and the genotype.

This file is copied next to saved models (``trust_remote_code``), so it imports only its neighbours in
``hf_revdarts/model`` (which travel with it).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from .genotype import DECODER_OPS, ENCODER_OPS, Genotype, validate_genotype, validate_search_ops

POOLINGS: tuple[str, ...] = ("max", "avg")


def validate_sizes(config: Any) -> None:
    """Raise ``ValueError`` naming the field when a size, probability or special token id is out of range
    (before the arithmetic on them fails with a ZeroDivisionError or an IndexError at the first forward)."""
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name in ("vocab_size", "d_model", "num_heads", "encoder_layers", "decoder_layers", "ffn_multiplier",
                 "encoder_splits", "decoder_splits", "max_position_embeddings"):
        value = getattr(config, name)
        if not is_int(value) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if config.embedding_dim is not None and (not is_int(config.embedding_dim) or config.embedding_dim < 1):
        raise ValueError(f"embedding_dim={config.embedding_dim!r} must be a positive integer, or None for d_model")
    for name in ("dropout", "attention_dropout", "activation_dropout", "label_smoothing"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"{name}={value!r} must be a probability in [0, 1)")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
        value = getattr(config, name, None)
        if value is not None and (not is_int(value) or not 0 <= value < config.vocab_size):
            raise ValueError(
                f"{name}={value!r} is not a token id of the vocabulary (0..{config.vocab_size - 1}); the tokenizer "
                "and vocab_size do not match"
            )


class RevDartsConfig(PretrainedConfig):
    r"""
    Configuration of a multi-split reversible encoder-decoder whose layers are given by a searched genotype, and of
    the search supernet built from the same sizes (``RevDartsSupernet(config)``).

    Args:
        vocab_size (`int`, *optional*, defaults to 8000):
            Size of the joint source/target vocabulary.
        d_model (`int`, *optional*, defaults to 384):
            Width of the residual stream; split into `encoder_splits` / `decoder_splits` equal parts.
        embedding_dim (`int`, *optional*):
            Width *e* of the factorised embedding (vocab × e, then e × d). `None` means e = `d_model`, no projection.
        encoder_layers (`int`, *optional*, defaults to 6):
            Number of reversible layers of the encoder stack.
        decoder_layers (`int`, *optional*, defaults to 6):
            Number of reversible layers of the decoder stack.
        encoder_splits (`int`, *optional*, defaults to 2):
            Parts a layer's input is split into in the encoder (each part has one searched split function).
        decoder_splits (`int`, *optional*, defaults to 3):
            Parts a layer's input is split into in the decoder; the last one is fixed cross-attention.
        pooling (`str`, *optional*, defaults to `"max"`):
            How a split function merges its n-1 inputs: `"max"` or `"avg"` (element-wise).
        num_heads (`int`, *optional*, defaults to 8):
            Heads of every attention op; must divide each split's width.
        ffn_multiplier (`int`, *optional*, defaults to 4):
            Hidden width of the `ffn` op as a multiple of the split width.
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout probability on embeddings and on every op's output.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability on attention weights.
        activation_dropout (`float`, *optional*, defaults to 0.0):
            Dropout probability inside `ffn` after its activation.
        max_position_embeddings (`int`, *optional*, defaults to 512):
            Longest input accepted, in tokens (sinusoidal positions are computed up to it).
        scale_embedding (`bool`, *optional*, defaults to `True`):
            Multiply token embeddings by sqrt(`d_model`).
        init_std (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of linear, convolution and embedding weights.
        reversible (`bool`, *optional*, defaults to `True`):
            Train with backpropagation-with-reconstruction; `False` runs the same network with ordinary autograd.
        reversible_exact_every (`int`, *optional*, defaults to 0):
            Keep an exact copy of the stack input every k layers, so fp32 reconstruction error cannot compound
            over more than k layers (0 keeps none: memory flat in depth).
        reversible_keep_layers (`int`, *optional*, defaults to 0):
            Hybrid memory mode: with `reversible=True`, the top k layers of each stack keep their activations
            (ordinary autograd) and only the layers below are reconstructed; time moves toward ordinary autograd as
            k grows (0 = reconstruct every layer; k >= the depth = ordinary autograd). `hf_revdarts.plan_memory`
            picks k for a memory budget.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the training loss.
        chunked_loss (`bool`, *optional*, defaults to `True`):
            In a training step (train mode, gradients on, `labels` given) compute the LM head and its cross-entropy in
            tiles of `loss_chunk_size` logits, recomputing them for the output embedding's gradient at the end of
            backward, instead of holding the batch x length x vocab logits, their log-softmax and its gradient: the
            same loss and gradients to float rounding. The output's `logits` are then computed only when read.
            Evaluation, `generate` and `chunked_loss=False` use the full head.
        loss_chunk_size (`int`, *optional*, defaults to 1048576):
            Logits (tokens x vocabulary entries) one tile of the chunked loss holds: about square, or whole
            vocabulary rows when `loss_chunk_size // vocab_size` tokens are at least a square's side.
        encoder_genotype (`list[list[str]]`, *optional*):
            One list of `encoder_splits` op names per encoder layer; `None` gives the self_attn/ffn Transformer.
        decoder_genotype (`list[list[str]]`, *optional*):
            One list of `decoder_splits - 1` op names per decoder layer; `None` gives the self_attn/ffn Transformer.
        search_encoder_ops (`list[str]`, *optional*):
            Search only: the candidate ops of every searched encoder split, in α order; `None` means all 13.
        search_decoder_ops (`list[str]`, *optional*):
            Search only: the candidate ops of every searched decoder split, in α order; `None` means all 14.
        tie_blocks (`int`, *optional*, defaults to 0):
            Search only: 0 gives every layer its own α; s > 0 shares α across a repeated block of s layers
            (layer i uses block position i mod s), as the paper does with s = 2.
        alpha_init_std (`float`, *optional*, defaults to 1e-3):
            Search only: α starts as `alpha_init_std * N(0, 1)`, i.e. near uniform (DARTS' choice).
        partial_channels (`int`, *optional*, defaults to 1):
            Search only: K > 1 sends 1/K of each split's channels through the candidate ops and lets the rest
            bypass (PC-DARTS): about 1/K² of the candidates' compute, but a different search; 1 is plain DARTS.
        use_cache (`bool`, *optional*, defaults to `True`):
            Whether `generate` keeps attention keys/values and convolution history between steps.
        pad_token_id (`int`, *optional*, defaults to 0):
            Padding token id (its embedding row is zero).
        bos_token_id (`int`, *optional*, defaults to 1):
            Beginning-of-sequence token id.
        eos_token_id (`int`, *optional*, defaults to 2):
            End-of-sequence token id.
        decoder_start_token_id (`int`, *optional*, defaults to 1):
            First decoder input token during teacher forcing and generation.
        is_encoder_decoder (`bool`, *optional*, defaults to `True`):
            Always `True` (an encoder-decoder); kept as an argument for `PretrainedConfig`.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`):
            Tie the LM head to the shared source/target embedding.
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
        chunked_loss: bool = True,
        loss_chunk_size: int = 1 << 20,
        encoder_genotype: list[list[str]] | None = None,
        decoder_genotype: list[list[str]] | None = None,
        search_encoder_ops: list[str] | None = None,
        search_decoder_ops: list[str] | None = None,
        tie_blocks: int = 0,
        alpha_init_std: float = 1e-3,
        partial_channels: int = 1,
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
        self.chunked_loss = chunked_loss
        self.loss_chunk_size = loss_chunk_size
        std = Genotype.standard(max(1, encoder_layers), max(1, decoder_layers), max(2, decoder_splits)).to_dict()
        self.encoder_genotype = [list(x) for x in encoder_genotype] if encoder_genotype is not None else std["encoder"]
        self.decoder_genotype = [list(x) for x in decoder_genotype] if decoder_genotype is not None else std["decoder"]
        self.search_encoder_ops = list(search_encoder_ops) if search_encoder_ops is not None else None
        self.search_decoder_ops = list(search_decoder_ops) if search_decoder_ops is not None else None
        self.tie_blocks = tie_blocks
        self.alpha_init_std = alpha_init_std
        self.partial_channels = partial_channels
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

    def get_genotype(self) -> Genotype:
        """The genotype of the layers (what ``RevDartsSupernet.genotype()`` derives)."""
        return Genotype(encoder=self.encoder_genotype, decoder=self.decoder_genotype)

    def validate_revdarts(self) -> None:
        """Check sizes and genotype; every message says which field to change."""
        validate_sizes(self)
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
        if not isinstance(self.chunked_loss, bool):
            raise ValueError(f"chunked_loss={self.chunked_loss!r} must be True or False")
        if not isinstance(self.loss_chunk_size, int) or isinstance(self.loss_chunk_size, bool) or self.loss_chunk_size < 1:
            raise ValueError(
                f"loss_chunk_size={self.loss_chunk_size!r} must be a positive integer (logits computed at once)"
            )
        if self.max_position_embeddings < 1:
            raise ValueError(f"max_position_embeddings={self.max_position_embeddings} must be positive")
        validate_genotype(self.encoder_genotype, self.encoder_layers, self.encoder_splits, ENCODER_OPS, "encoder")
        validate_genotype(self.decoder_genotype, self.decoder_layers, self.decoder_splits - 1, DECODER_OPS, "decoder")
        validate_search_ops(self.search_encoder_ops, ENCODER_OPS, "encoder")
        validate_search_ops(self.search_decoder_ops, DECODER_OPS, "decoder")
        if not isinstance(self.tie_blocks, int) or isinstance(self.tie_blocks, bool) or self.tie_blocks < 0:
            raise ValueError(
                f"tie_blocks={self.tie_blocks!r} must be an integer >= 0 (0 = every layer its own α, s > 0 = share α "
                "across a repeated block of s layers)"
            )
        if not isinstance(self.alpha_init_std, (int, float)) or not 0.0 <= self.alpha_init_std < float("inf"):
            raise ValueError(f"alpha_init_std={self.alpha_init_std!r} must be a finite number >= 0 (DARTS uses 1e-3)")
        if not isinstance(self.partial_channels, int) or isinstance(self.partial_channels, bool) or self.partial_channels < 1:
            raise ValueError(
                f"partial_channels={self.partial_channels!r} must be >= 1 (an integer; 1 = every channel, plain DARTS)"
            )
