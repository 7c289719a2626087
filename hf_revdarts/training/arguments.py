"""The argument schema of the search and training scripts (``run_config`` builds their ``RevDartsConfig``).

Arguments are dataclasses read by ``transformers.HfArgumentParser``, as in transformers' example scripts:
every field is a command-line flag (``--name``) and a key of a config file. A script is run with flags,
with a YAML or JSON file, or both (flags override the file, the file overrides the script's defaults)::

    python training/search.py configs/multi30k-en-de-search.yaml --max_steps 400 --arch_start_step 300

Adding a flag is adding a field (with its ``help``) to the dataclass it belongs to. The search and the
training share ``DatasetArguments``, ``DataArguments``, ``ModelArguments`` and ``RunArguments``; what only
one of them reads is in ``SearchArguments`` / ``TrainArguments``. Each script sets its own defaults for
shared fields where they differ (the default search recipe for search.py, a model to train for train.py).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..memory import MEMORY_MODES, parse_memory_size
from .cli import record_flag_sources
from .flag_checks import check_data_flags, check_dataset_flags, check_run_flags

# The bundled English→German sample (present in a source checkout): the default data of every script.
SAMPLE_DATA = Path(__file__).resolve().parents[2] / "samples" / "en-de"
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(obj, name)}")


def _fraction(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name} must be a fraction in [0, 1], got {value}")


def _positive_or_none(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be >= 1 (or left out), got {value}")


def _non_negative(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        # `not value >= 0` also catches nan
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name} must be a finite number >= 0, got {value}")


def _probability(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"--{name} must be a probability in [0, 1), got {value}")


def _positive_number(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be a finite number > 0, got {value}")


def _tokenizer_folder(value: str | None, flag: str) -> None:
    if value is not None and not (Path(value) / "tokenizer.json").is_file():
        what = "does not exist" if not Path(value).exists() else "has no tokenizer.json"
        raise FileNotFoundError(f"--{flag} {value} {what}: give a folder saved with save_pretrained (tokenizer.json)")


# ---------------------------------------------------------------- the schema --------------------------------
@dataclass
class DatasetArguments:
    """Which parallel text (every script that reads data)."""

    dataset: str = field(
        default=str(SAMPLE_DATA),
        metadata={"help": "local folder of {split}.{lang}[.gz] files or a Hub dataset id (default: the bundled sample)"},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration, e.g. de-en for wmt14"})
    src_lang: str = field(default="en", metadata={"help": "source language code"})
    tgt_lang: str = field(default="de", metadata={"help": "target language code"})

    def __post_init__(self) -> None:
        if self.src_lang == self.tgt_lang:
            raise ValueError(f"--src_lang and --tgt_lang are both {self.src_lang!r}: give two different languages")
        check_dataset_flags(self)


@dataclass
class DataArguments:
    """How much of the text is used and how it is tokenised and batched."""

    train_split: str = field(default="train", metadata={"help": "split trained on"})
    eval_split: str = field(default="validation", metadata={"help": "split evaluated at each --eval_every"})
    max_train_examples: int | None = field(default=None, metadata={"help": "first N training pairs (default: all)"})
    max_eval_examples: int | None = field(default=500, metadata={"help": "first N evaluation pairs"})
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "tokenizer folder to reuse (train.py default: the search's); otherwise a BPE is trained"},
    )
    vocab_size: int = field(default=8000, metadata={"help": "vocabulary of a tokenizer trained here"})
    max_length: int = field(default=64, metadata={"help": "tokens per sentence after truncation"})
    max_tokens: int = field(default=2048, metadata={"help": "padded tokens per batch and process"})

    def __post_init__(self) -> None:
        _positive(self, "vocab_size", "max_length", "max_tokens")
        _positive_or_none(self, "max_train_examples", "max_eval_examples")
        if self.max_tokens < self.max_length:
            raise ValueError(
                f"--max_tokens {self.max_tokens} < --max_length {self.max_length}: a batch must hold at least one "
                "sentence of the longest length"
            )
        _tokenizer_folder(self.tokenizer, "tokenizer")
        check_data_flags(self)


@dataclass
class ModelArguments:
    """Sizes of the supernet (search) or of the derived model (train), and how memory is spent."""

    d_model: int = field(default=192, metadata={"help": "width of the residual stream"})
    embedding_dim: int | None = field(default=None, metadata={"help": "factorised embedding width e (default: d_model)"})
    num_heads: int = field(default=4, metadata={"help": "attention heads (must divide each split's width)"})
    encoder_layers: int | None = field(default=None, metadata={"help": "encoder layers (train.py default: the genotype's)"})
    decoder_layers: int | None = field(default=None, metadata={"help": "decoder layers (train.py default: the genotype's)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout of the attention probabilities"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the ffn's ReLU"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the training loss"})
    max_position_embeddings: int | None = field(
        default=None, metadata={"help": "longest input in tokens (default: max(128, max_length + 2))"}
    )
    memory_mode: Literal["reversible", "ordinary", "checkpoint", "hybrid"] | None = field(
        default=None,
        metadata={
            "help": "reversible (the default): backprop-with-reconstruction, activation memory flat in depth; "
            "ordinary: plain autograd; checkpoint: plain autograd with per-layer activation checkpointing; hybrid: "
            "the top --reversible_keep_layers layers of each stack keep their activations, the rest are "
            "reconstructed. With --max_memory: the planner chooses, or checks this mode against the budget"
        },
    )
    reversible_keep_layers: int | None = field(
        default=None,
        metadata={"help": "hybrid: top layers of each stack that keep their activations (default: half the depth)"},
    )
    max_memory: str | None = field(
        default=None,
        metadata={
            "help": "memory budget of one training step per process (e.g. 16GB, 500MB, 1.5GiB): the fastest memory "
            "mode predicted to fit its largest batch (ordinary > hybrid > checkpoint > reversible); if none fits, "
            "an error naming the widest d_model and the largest batch that would"
        },
    )

    def __post_init__(self) -> None:
        _positive(self, "d_model", "num_heads")
        _positive_or_none(self, "embedding_dim", "encoder_layers", "decoder_layers", "max_position_embeddings")
        _probability(self, "dropout", "attention_dropout", "activation_dropout", "label_smoothing")
        if self.memory_mode is not None and self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"--memory_mode {self.memory_mode!r} is not one of {', '.join(MEMORY_MODES)}")
        if self.reversible_keep_layers is not None:
            if self.memory_mode != "hybrid":
                raise ValueError("--reversible_keep_layers applies to --memory_mode hybrid only")
            if self.max_memory is not None:
                raise ValueError("give --max_memory or --reversible_keep_layers, not both: with a budget the planner "
                                 "keeps as many layers as fit")
            if self.reversible_keep_layers < 1:
                raise ValueError(f"--reversible_keep_layers must be >= 1, got {self.reversible_keep_layers}")
        if self.max_memory is not None:
            parse_memory_size(self.max_memory)  # a clear error for an unreadable size, before any work


@dataclass
class RunArguments:
    """Optimisation and bookkeeping of a run (search and train)."""

    output_dir: str = field(metadata={"help": "folder of everything the run writes (required)"})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimiser steps, the training budget (default 1000; train.py with --time_budget_minutes "
                  "and no --max_steps: until the time is spent)"},
    )
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate of the weights (inverse-sqrt schedule)"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warm-up steps of the schedule"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping of the weights (0 = off)"})
    mixed_precision: Literal["no", "bf16", "fp16"] | None = field(
        default=None, metadata={"help": "no, bf16 or fp16 (default: accelerate's configuration)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of initialisation, dropout and batch order"})
    eval_every: int = field(default=200, metadata={"help": "evaluate every N steps (and at the end)"})
    save_every: int = field(default=500, metadata={"help": "checkpoint every N steps (and at the end)"})
    checkpoints_total_limit: int = field(default=2, metadata={"help": "checkpoints kept (0 = all)"})
    resume_from_checkpoint: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "delete what a previous run left in --output_dir and start again"}
    )
    max_non_finite_steps: int = field(
        default=10,
        metadata={"help": "optimiser steps with a NaN/inf loss or gradient that are skipped before the run stops"},
    )
    num_threads: int = field(default=0, metadata={"help": "torch threads per process (0: cores / processes)"})
    divergence_factor: float = field(
        default=10.0,
        metadata={"help": "stop as diverged when the loss exceeds this multiple of its first value (0 = off)"},
    )

    def __post_init__(self) -> None:
        _positive(self, "eval_every", "save_every", "gradient_accumulation_steps")
        if self.max_steps is not None:
            _positive(self, "max_steps")
        _positive_number(self, "lr")
        _non_negative(self, "warmup_steps", "max_grad_norm", "checkpoints_total_limit", "max_non_finite_steps",
                      "num_threads", "divergence_factor")
        check_run_flags(self)
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")
        if self.resume_from_checkpoint and self.overwrite_output_dir:
            raise ValueError(
                "--resume_from_checkpoint and --overwrite_output_dir contradict each other: the first continues the "
                "run in --output_dir, the second deletes it"
            )


@dataclass
class SearchArguments:
    """What only the architecture search reads."""

    arch_split: str | None = field(default=None, metadata={"help": "held-out split for α (default: part of train)"})
    arch_fraction: float = field(default=0.5, metadata={"help": "share of train held out for α without --arch_split"})
    eval_batches: int = field(default=20, metadata={"help": "evaluation batches per process for the reported loss"})
    encoder_ops: list[str] | None = field(
        default=None, metadata={"help": "encoder search space, comma- or space-separated (default: all 13 ops)"}
    )
    decoder_ops: list[str] | None = field(
        default=None, metadata={"help": "decoder search space, comma- or space-separated (default: all 14 ops)"}
    )
    tie_blocks: int = field(default=2, metadata={"help": "share α across blocks of s layers (0 = every layer its own)"})
    alpha_init_std: float = field(default=1e-3, metadata={"help": "α starts as alpha_init_std * N(0, 1)"})
    partial_channels: int = field(
        default=1, metadata={"help": "PC-DARTS: 1/K of each split's channels through the candidate ops (1 = all)"}
    )
    arch_lr: float | None = field(
        default=None,
        metadata={"help": "α learning rate (AdamW, fixed); default: arch_logit_range / α steps, i.e. "
                  "arch_lr_for_steps(max_steps - arch_start_step) — the paper's 3e-4 at 30k α steps"},
    )
    arch_logit_range: float = field(
        default=9.0, metadata={"help": "total α logit movement the default α lr allows (paper: 3e-4 × 30k steps = 9)"}
    )
    arch_weight_decay: float = field(default=1e-3, metadata={"help": "α weight decay"})
    arch_start_step: int = field(default=0, metadata={
        "help": "weight-only warm-up steps before α updates begin (= --max_steps with --selection sampled: no α phase, "
                "θ alone is trained and the sampled genotypes are scored on it, as SPOS)"})
    warmup_sampling: str = field(
        default="full",
        metadata={"help": "how θ trains before --arch_start_step: full (every candidate op, the supernet step) or "
                  "single_path (one candidate per node drawn uniformly each step, as SPOS: about one model step)",
                  "choices": ["full", "single_path"]},
    )
    warmup_from: str | None = field(
        default=None,
        metadata={"help": "start at --arch_start_step from another search's θ warm-up (its folder, whose warmup/ "
                  "holds the checkpoint every search with --arch_start_step > 0 keeps, or that checkpoint): θ, "
                  "its optimiser and schedule from there; α, data order and RNG from this run's --seed. Several "
                  "α-phase seeds then share one warm-up"},
    )
    second_order: bool = field(default=False, metadata={"help": "unrolled (finite-difference) DARTS gradient for α"})
    warn_share: float = field(default=0.3, metadata={"help": "warn when mean α mass on zero/identity exceeds it"})
    stop_share: float = field(default=0.6, metadata={"help": "stop when mean α mass on zero/identity exceeds it"})
    stop_argmax_fraction: float = field(default=0.5, metadata={"help": "stop when this share of nodes picks them"})
    selection: str = field(
        default="argmax",
        metadata={"help": "how the genotype is derived: argmax of α (zero excluded, as DARTS), perturbation "
                  "(DARTS-PT: the op whose removal raises the held-out loss most) or sampled (of --sampled_genotypes "
                  "genotypes drawn from the space and the argmax one, the lowest held-out loss of the supernet "
                  "computing only that genotype); argmax is always reported beside it",
                  "choices": ["argmax", "perturbation", "sampled"]},
    )
    sampled_genotypes: int = field(default=200, metadata={
        "help": "with --selection sampled: how many genotypes are drawn and scored (forward passes only)"})
    prune_below: float = field(
        default=0.0,
        metadata={"help": "skip the candidate ops whose softmax weight in a node has fallen below this (e.g. "
                  "0.01): α has settled against them, and the supernet step gets cheaper; 0 computes every op"},
    )
    no_figures: bool = field(default=False, metadata={"help": "skip the pictures at the end"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.prune_below < 1.0:
            raise ValueError(f"--prune_below must be in [0, 1), got {self.prune_below}")
        if self.warmup_sampling not in ("full", "single_path"):
            raise ValueError(f"--warmup_sampling must be full or single_path, got {self.warmup_sampling!r}")
        if self.warmup_from is not None and self.arch_start_step == 0:
            raise ValueError("--warmup_from needs --arch_start_step > 0: the step the warm-up ended at")
        if self.warmup_sampling == "single_path" and self.arch_start_step == 0:
            raise ValueError("--warmup_sampling single_path samples the θ warm-up before α moves, but "
                             "--arch_start_step is 0 (no warm-up): give --arch_start_step N > 0")
        if self.selection not in ("argmax", "perturbation", "sampled"):
            raise ValueError(f"--selection must be argmax, perturbation or sampled, got {self.selection!r}")
        _positive(self, "sampled_genotypes")
        self.encoder_ops = _op_list(self.encoder_ops)
        self.decoder_ops = _op_list(self.decoder_ops)
        _positive(self, "eval_batches")
        if self.arch_lr is not None:  # None: the rule arch_logit_range / α steps
            _positive_number(self, "arch_lr")
        _positive_number(self, "arch_logit_range")
        _positive(self, "partial_channels")
        _non_negative(self, "arch_weight_decay", "arch_start_step", "tie_blocks", "alpha_init_std")
        _fraction(self, "warn_share", "stop_share", "stop_argmax_fraction")
        if not 0 < self.arch_fraction < 1:
            raise ValueError(f"--arch_fraction must be in (0, 1), got {self.arch_fraction}")


@dataclass
class TrainArguments:
    """What only the training of a derived model reads."""

    genotype: str = field(
        default="standard", metadata={"help": "search output folder, a genotype.json, or 'standard' (self_attn/ffn)"}
    )
    time_budget_minutes: float = field(
        default=0.0,
        metadata={"help": "stop after this much training time (0 = off); with --max_steps too, whichever comes first"},
    )
    average_checkpoints: int = field(
        default=0,
        metadata={"help": "at the end, average the last N checkpoints into output_dir/averaged (0 = off; "
                  "N <= --checkpoints_total_limit, spaced --save_every apart)"},
    )
    bleu_sentences: int = field(default=200, metadata={"help": "validation sentences translated per evaluation"})

    def __post_init__(self) -> None:
        _non_negative(self, "time_budget_minutes", "average_checkpoints")
        _positive(self, "bleu_sentences")


SHARED_ARGUMENTS = (DatasetArguments, DataArguments, ModelArguments, RunArguments)


def _op_list(value: str | Sequence[str] | None) -> list[str] | None:
    # "ffn,glu", ["ffn", "glu"] and ["ffn,glu"] all mean the same list.
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    ops = [op.strip() for item in items for op in str(item).split(",") if op.strip()]
    return ops or None


# ---------------------------------------------------------------- parsing -----------------------------------
def _file_value(path: Path, key: str, value: Any, action: Any) -> Any:
    """A config file's value converted as the same flag's text would be, or a ``ValueError`` naming the file
    and the key (argparse converts and checks flags, never defaults)."""
    if action is not None and value is None and action.required:
        raise ValueError(f"config file {path}: --{key} needs a value, the file gives none (null)")
    if value is None or action is None:
        return value
    many = action.nargs in ("+", "*")
    items = value if many and isinstance(value, list) else [value]
    converted = []
    for item in items:
        try:
            if isinstance(item, (dict, list)):
                raise TypeError
            converted.append(item if action.type is None else action.type(str(item)))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            kind = getattr(action.type, "__name__", "value")
            kind = "true/false" if kind == "string_to_bool" else "list of strings" if many else kind
            raise ValueError(f"config file {path}: --{key} {value!r} is not a valid {kind}") from None
        if action.choices is not None and converted[-1] not in action.choices:
            raise ValueError(
                f"config file {path}: --{key} {item!r} is not one of {', '.join(map(str, action.choices))}"
            )
    return converted if many else converted[0]


def read_config_file(
    path: str | os.PathLike, known: set[str] | dict[str, Any], _extended_by: tuple[Path, ...] = ()
) -> dict[str, Any]:
    """The flat ``{flag: value}`` mapping of a YAML or JSON config file; unknown keys are an error, and with
    ``known`` the parser's actions by name, each value is converted and checked as its flag would be. A file
    with ``extends: <file>`` (relative to it) holds that file's values with its own on top: one recipe for
    several language pairs."""
    path = Path(path)
    if path.resolve() in _extended_by:
        raise ValueError(f"config file {path} extends itself (through {' -> '.join(map(str, _extended_by))})")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 text ({e})") from e
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError: both say line and column
        raise ValueError(f"config file {path} is not valid {path.suffix[1:].upper()}: {e}") from e
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of flag names to values, got {type(data).__name__}")
    base = data.pop("extends", None)
    if base is not None and not isinstance(base, str):
        raise ValueError(f"config file {path}: extends must name a config file, got {base!r}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ValueError(f"config file {path} has unknown keys: {said}")
    if isinstance(known, dict):
        data = {k: _file_value(path, k, v, known[k]) for k, v in data.items()}
    if base is not None:
        data = {**read_config_file(path.parent / base, known, (*_extended_by, path.resolve())), **data}
    return data


def parse_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
    description: str | None = None,
) -> tuple[Any, ...]:
    """One instance per dataclass, from (in rising priority) the dataclass defaults, ``defaults`` (the
    script's own), a config file given as the first argument (.yaml, .yml or .json), and flags. Every value
    is checked (the dataclasses' ``__post_init__``) before the script does any work."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(
        dataclass_types, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    known = {action.dest: action for action in parser._actions if action.dest != "help"}
    values = dict(defaults or {})
    if set(values) - set(known):
        raise ValueError(f"defaults for unknown arguments: {sorted(set(values) - set(known))}")
    config_file = argv.pop(0) if argv and argv[0].endswith(CONFIG_SUFFIXES) else None
    file_values = read_config_file(config_file, known) if config_file else {}
    values.update(file_values)
    parser.set_defaults(**values)
    record_flag_sources(argv, file_values, config_file, {a.dest: a.default for a in parser._actions})
    for action in parser._actions:
        if action.dest in values:
            action.required = False  # given by the file: the flag becomes an override
    try:
        return tuple(parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False))
    except ValueError as e:
        stray = [a for a in argv if a.endswith(CONFIG_SUFFIXES) and repr(a) in str(e)]
        if "not used by the HfArgumentParser" in str(e) and stray:
            raise ValueError(f"{e}: a config file ({stray[0]}) must be the first argument, before any flag") from e
        raise


def loggable_arguments(*groups: Any) -> dict[str, int | float | str | bool]:
    """All fields of the given argument dataclasses in one flat dict of scalars (lists and None as text), for
    TensorBoard's hparams and the saved run settings."""
    out: dict[str, Any] = {}
    for group in groups:
        out.update({k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(group).items()})
    return out
