"""Flag values that parse but would make a run meaningless, refused when the arguments are read (before any
work), each naming a value that works. Called from the argument dataclasses' ``__post_init__``
(``arguments.py``): a check here is one more line there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
