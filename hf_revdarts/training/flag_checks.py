"""Flag values that parse but would make a run meaningless, refused when the arguments are read (before any
work), each naming a value that works. Called from the argument dataclasses' ``__post_init__``
(``arguments.py``): a check here is one more line there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..model.genotype import validate_search_space
from ..search.architect import arch_lr_for_steps
from ..search.supernet import PARAMETER_FREE_OPS

# pad, bos, eos, unk: a vocabulary must hold more than these.
SPECIAL_TOKENS = 4


def check_dataset_flags(dataset: Any) -> None:
    """``DatasetArguments``: a Hub configuration given with a local folder would be silently ignored."""
    if dataset.dataset_config is not None and Path(dataset.dataset).exists():
        raise ValueError(
            f"--dataset_config {dataset.dataset_config} applies to a Hub dataset id, but --dataset {dataset.dataset} "
            "is a local folder, which has no configurations: leave --dataset_config out (or give the Hub id)"
        )


def check_data_flags(data: Any) -> None:
    """``DataArguments``: room for a word in every sentence, a vocabulary beyond the special tokens, and a
    validation split that is not the training data."""
    if data.max_length < 2:
        raise ValueError(f"--max_length {data.max_length} leaves no room for a token besides </s>: give at least 2 "
                         "(default 64)")
    if data.vocab_size <= SPECIAL_TOKENS:
        raise ValueError(f"--vocab_size {data.vocab_size} holds only the {SPECIAL_TOKENS} special tokens (pad, bos, "
                         "eos, unk), no text: give more (default 8000)")
    if data.eval_split == data.train_split:
        raise ValueError(
            f"--eval_split {data.eval_split} is the training split: validation loss, BLEU and the choice of best/ "
            "would measure how well the training data is memorised. Give a held-out split (e.g. validation)"
        )


def check_run_flags(run: Any) -> None:
    """``RunArguments``: an output folder that is named, and a divergence limit that lets a loss fall slowly."""
    if not str(run.output_dir).strip():
        raise ValueError("--output_dir is empty (it would mean the current folder): give the folder to write into")
    if 0 < run.divergence_factor <= 1:
        raise ValueError(f"--divergence_factor {run.divergence_factor:g} would stop any run whose loss does not fall "
                         "at once: give more than 1 (default 10), or 0 to turn the check off")


def check_depth_flags(model: Any, encoder_layers: int, decoder_layers: int) -> None:
    """``ModelArguments`` against the depth of the model built: hybrid's kept layers must leave some to rebuild."""
    keep = model.reversible_keep_layers
    depth = max(encoder_layers, decoder_layers)
    if keep is not None and keep >= depth:
        raise ValueError(
            f"--reversible_keep_layers {keep} keeps every layer of a {depth}-layer stack: nothing would be "
            f"reconstructed, which is --memory_mode ordinary. Give at most {depth - 1}, or --memory_mode ordinary"
        )


def check_launch(num_processes: int, environ: Any = None) -> None:
    """Refuse a launch that asked for several CPU processes and got one: ``accelerate launch --cpu --num_processes
    N`` runs a single process (its simple launcher sets MASTER_ADDR for N > 1, and starts no other rank)."""
    import os

    env = os.environ if environ is None else environ
    asked_cpu = str(env.get("ACCELERATE_USE_CPU", "")).lower() in ("1", "true", "yes")
    if num_processes == 1 and asked_cpu and "MASTER_ADDR" in env and "WORLD_SIZE" not in env and "RANK" not in env:
        raise ValueError(
            "accelerate launch --cpu --num_processes N starts only one process (the other ranks never start): for "
            "several CPU processes run ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N (gloo), "
            "or leave --num_processes out for one"
        )


def threads_per_process(asked: int, processes: int, cores: int | None = None) -> int:
    """Torch threads for each of ``processes``: ``asked`` (0: the cores shared out), cut to the share of the cores
    when the processes together would ask for more (more threads than cores spin against each other: the
    2-process search of the sample config ran 7x slower at 2 threads each on 2 cores), with a warning."""
    import logging
    import os

    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // max(1, processes))
    if not asked:
        return share
    if asked * processes > cores and asked > share:
        logging.getLogger(__name__).warning(
            "--num_threads %d x %d processes = %d threads on %d cores: each process uses %d (more threads than cores "
            "only wait for each other)", asked, processes, asked * processes, cores, share)
        return share
    return asked


def check_search_flags(s: Any, model: Any, max_steps: int, arch_lr: float) -> None:
    """Refuse settings under which the search decides nothing, naming a value that works: pruning that would act
    before α moves, a collapse limit the uniform start already crosses, an α weight decay that erases α."""
    spaces = {side: validate_search_space(ops, side) for side, ops in (("encoder", s.encoder_ops),
                                                                      ("decoder", s.decoder_ops))}
    widest = max(len(ops) for ops in spaces.values())
    if widest > 1 and s.prune_below >= 0.5 / widest:
        raise ValueError(
            f"--prune_below {s.prune_below:g} would prune ops before α has moved: each of a node's {widest} candidates "
            f"starts at weight 1/{widest} = {1 / widest:.3f}, so the search would keep whatever the random start "
            f"favoured. Give less than half that, below {0.5 / widest:.4f} (the README's recipe: 0.01), or 0 to prune "
            "nothing"
        )
    depth = {"encoder": model.encoder_layers or 1, "decoder": model.decoder_layers or 1}
    nodes = {side: 2 * (min(s.tie_blocks, depth[side]) if s.tie_blocks else depth[side]) for side in spaces}
    uniform = sum(nodes[side] * sum(op in PARAMETER_FREE_OPS for op in ops) / len(ops)
                  for side, ops in spaces.items()) / sum(nodes.values())
    if s.stop_share is not None and s.stop_share < uniform:
        raise ValueError(
            f"--stop_share {s.stop_share:g} is below {uniform:.3f}, the α mass zero and identity hold before α moves: "
            f"the search would stop at its first evaluation. Give more than {uniform:.3f} (default 0.6), or 1 to "
            "never stop on it"
        )
    if s.alpha_init_std > 0.1:
        raise ValueError(
            f"--alpha_init_std {s.alpha_init_std:g} starts α with logits about {s.alpha_init_std:g} apart: softmax(α) "
            "would be far from uniform before any α step, and the random start would pick the genotype. Give at "
            "most 0.1 (default 1e-3)"
        )
    if s.arch_lr is not None and s.arch_lr > s.arch_logit_range:
        raise ValueError(
            f"--arch_lr {s.arch_lr:g} moves each α logit by about {s.arch_lr:g} per α step (Adam), more than the whole "
            f"range a search moves them (--arch_logit_range {s.arch_logit_range:g}): the first α step would decide "
            f"every node from one batch. Leave --arch_lr out (the rule gives {arch_lr_for_steps(max(1, max_steps - s.arch_start_step), s.arch_logit_range):.3g} "
            f"here) or give at most {s.arch_logit_range:g}"
        )
    heads = {"self_attn", "cross_attn"}
    for side, splits in (("encoder", 2), ("decoder", 3)):
        width = model.d_model // splits
        k = s.partial_channels
        if width % k or (k > 1 and (width // k) % model.num_heads
                         and any(op in heads or op.startswith("dynconv") for op in spaces[side])):
            raise ValueError(
                f"--partial_channels {k} does not divide the {side}'s split width {width} (--d_model "
                f"{model.d_model} / {splits} splits) into a part of whole heads (--num_heads "
                f"{model.num_heads}): give a K with split width / K a multiple of --num_heads (1 always works)"
            )
    lr = arch_lr
    if s.arch_weight_decay * lr >= 1:
        raise ValueError(
            f"--arch_weight_decay {s.arch_weight_decay:g} with an α learning rate of {lr:.4g} multiplies α by "
            f"1 - {s.arch_weight_decay * lr:.3g} every α step (decoupled decay): α is erased, not learnt. Give "
            f"--arch_weight_decay below {1 / lr:.3g} (default 1e-3)"
        )
    if s.arch_weight_decay > 1:
        # Adam moves α by about its lr per step and the decay takes lr x decay x α: they balance at 1 / decay.
        raise ValueError(
            f"--arch_weight_decay {s.arch_weight_decay:g} holds every α logit within about 1/{s.arch_weight_decay:g} "
            f"= {1 / s.arch_weight_decay:.3g} of 0: softmax(α) stays near uniform and the search decides nothing. "
            "Give at most 1 (default 1e-3)"
        )
