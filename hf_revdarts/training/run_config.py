"""The one builder of a run's ``RevDartsConfig`` (sizes, vocabulary, genotype or search settings) and of its
memory set-up, from the parsed arguments of ``arguments.py``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..memory import MEMORY_MODES, MemoryEstimate, MemoryPlan, estimate_memory, plan_memory
from ..model.configuration_revdarts import RevDartsConfig
from ..model.genotype import Genotype
from .arguments import DataArguments, ModelArguments, SearchArguments
from .flag_checks import check_depth_flags


def load_genotype(spec: str) -> tuple[Genotype | None, Path | None]:
    """(genotype, or None for ``standard``; the search folder it came from, if any) of ``--genotype``."""
    if spec == "standard":
        return None, None
    path = Path(spec)
    folder = path if path.is_dir() else None
    if folder is not None:
        path = folder / "genotype.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"--genotype {spec}: no genotype.json there; give a search output folder, a genotype.json file, or "
            "'standard'"
        )
    if folder is not None:
        # genotype.json is rewritten at every evaluation: only a finished search's is its result.
        summary = folder / "search_summary.json"
        failed = summary.is_file() and "error" in json.loads(summary.read_text(encoding="utf-8"))
        if failed or not summary.is_file():
            why = "stopped with an error (see its search_summary.json)" if failed else "has not finished (no search_summary.json)"
            raise ValueError(
                f"--genotype {spec}: the search there {why}, so its genotype.json is only that of its last "
                f"evaluation; resume the search, or pass --genotype {path} to train that genotype anyway"
            )
    try:
        return Genotype.load(path), folder
    except ValueError as e:
        raise ValueError(f"--genotype {e}") from e


def build_config(
    model_args: ModelArguments,
    tokenizer: Any | None,
    max_length: int,
    genotype: Genotype | None = None,
    search_args: SearchArguments | None = None,
) -> RevDartsConfig:
    """The ``RevDartsConfig`` of a run: sizes and memory mode from ``model_args``, vocabulary and special ids
    from ``tokenizer``, positions for ``max_length`` tokens; the layers from ``genotype`` (stacked to the
    asked depth; ``None``: the self_attn/ffn Transformer, 6+6 layers unless asked otherwise), or, with
    ``search_args``, the search settings of a supernet (its genotype fields are then unused).

    With ``tokenizer=None`` (before a tokenizer exists) the vocabulary and ids keep the config defaults: a
    script builds this once up front so that every size and search setting is checked before any work.
    """
    positions = model_args.max_position_embeddings
    if positions is not None and positions < max_length:
        raise ValueError(
            f"--max_position_embeddings {positions} < --max_length {max_length}: sentences of --max_length tokens "
            "(and translations as long) would not fit the model"
        )
    if genotype is None:
        genotype = Genotype.standard(model_args.encoder_layers or 6, model_args.decoder_layers or 6)
    genotype = Genotype.from_dict(genotype)
    try:
        stacked = genotype.stack(model_args.encoder_layers, model_args.decoder_layers)
    except ValueError as e:  # the depth that does not fit is a flag: --encoder_layers / --decoder_layers
        raise ValueError(f"--{e}") from e
    encoder, decoder = stacked.encoder, stacked.decoder
    check_depth_flags(model_args, len(encoder), len(decoder))
    search = {}
    if search_args is not None:
        search = dict(
            search_encoder_ops=search_args.encoder_ops,
            search_decoder_ops=search_args.decoder_ops,
            tie_blocks=search_args.tie_blocks,
            alpha_init_std=search_args.alpha_init_std,
            partial_channels=search_args.partial_channels,
        )
    vocabulary = {}
    if tokenizer is not None:
        vocabulary = dict(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.bos_token_id,
        )
    return RevDartsConfig(
        d_model=model_args.d_model,
        embedding_dim=model_args.embedding_dim,
        num_heads=model_args.num_heads,
        encoder_layers=len(encoder),
        decoder_layers=len(decoder),
        encoder_genotype=encoder,
        decoder_genotype=decoder,
        dropout=model_args.dropout,
        attention_dropout=model_args.attention_dropout,
        activation_dropout=model_args.activation_dropout,
        label_smoothing=model_args.label_smoothing,
        reversible=(model_args.memory_mode or "reversible") in ("reversible", "hybrid"),
        max_position_embeddings=model_args.max_position_embeddings or max(128, max_length + 2),
        **vocabulary,
        **search,
    )


@dataclass
class MemorySetup:
    """How a run spends memory: the mode, the hybrid mode's kept layers, and the predicted memory of a step on
    the largest batch the data can form (``--max_tokens`` of ``--max_length``-token sentences)."""

    mode: str
    keep_layers: int
    estimate: MemoryEstimate
    plan: MemoryPlan | None
    estimate_kwargs: dict[str, Any]
    partial_channels: int = 1  # supernet: the planner counts every channel, so its figure is an upper bound

    def estimate_at(self, config: RevDartsConfig, batch_size: int, source_length: int, target_length: int
                    ) -> MemoryEstimate:
        """The prediction for one batch shape (the step that was measured)."""
        return estimate_memory(config, batch_size, source_length, target_length, mode=self.mode,
                               keep_layers=self.keep_layers, **self.estimate_kwargs)

    def describe(self) -> str:
        text = "for the largest batch --max_tokens and --max_length allow, " + (
            self.plan.message() if self.plan is not None else self.estimate.summary())
        if self.estimate.supernet and self.partial_channels > 1:
            text += " (partial channels are not modelled: an upper bound)"
        return text


def default_device_type() -> str:
    """The device a run will most likely train on (for checks before the accelerator exists)."""
    import torch

    return "cuda" if torch.cuda.is_available() and not os.environ.get("ACCELERATE_USE_CPU") else "cpu"


def check_memory_budget(model_args: ModelArguments, data_args: DataArguments, config: RevDartsConfig,
                        supernet: bool) -> None:
    """Refuse, before any work, a ``--max_memory`` that nothing fits (vocabulary: ``--vocab_size``, the size the
    tokenizer is trained to; ``config`` is changed to it)."""
    if model_args.max_memory:
        config.vocab_size = data_args.vocab_size
        plan_run_memory(model_args, data_args, config, supernet=supernet, device_type=default_device_type())


def plan_run_memory(model_args: ModelArguments, data_args: DataArguments, config: RevDartsConfig,
                    supernet: bool, device_type: str = "cpu") -> MemorySetup:
    """The memory mode of a run: ``--memory_mode`` (default reversible), or with ``--max_memory`` the fastest
    mode the planner predicts to fit (only ``--memory_mode``, if given). Raises ValueError naming the widest
    d_model and the largest batch that would fit when nothing does."""
    rows = max(1, data_args.max_tokens // data_args.max_length)
    kwargs: dict[str, Any] = {"supernet": supernet, "device": "cuda" if device_type == "cuda" else "cpu"}
    if supernet:
        kwargs.update(encoder_ops=config.search_encoder_ops, decoder_ops=config.search_decoder_ops,
                      tie_blocks=config.tie_blocks or 0)
    shape = (rows, data_args.max_length, data_args.max_length)
    if model_args.max_memory is not None:
        modes = [model_args.memory_mode] if model_args.memory_mode else list(MEMORY_MODES)
        plan = plan_memory(config, *shape, max_memory=model_args.max_memory, modes=modes, **kwargs)
        if not plan.fits:
            raise ValueError(f"--max_memory {model_args.max_memory} (batches of {rows} x {data_args.max_length} "
                             f"tokens): {plan.message()}")
        assert plan.estimate is not None and plan.mode is not None
        setup = MemorySetup(plan.mode, plan.keep_layers, plan.estimate, plan, kwargs)
    else:
        mode = model_args.memory_mode or "reversible"
        depth = max(config.encoder_layers, config.decoder_layers)
        keep = (model_args.reversible_keep_layers or max(1, depth // 2)) if mode == "hybrid" else 0
        setup = MemorySetup(mode, keep, estimate_memory(config, *shape, mode=mode, keep_layers=keep, **kwargs), None,
                            kwargs)
    if supernet:
        setup.partial_channels = config.partial_channels
    return setup


def memory_report(setup: MemorySetup, config: RevDartsConfig, state: Any, meter: Any) -> str:
    """Predicted vs measured memory of the step ``meter`` measured (the shape of its largest micro-batch)."""
    estimate = setup.estimate_at(config, *state.batch_shape)
    return meter.report(estimate)
