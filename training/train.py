#!/usr/bin/env python
"""Train a RevDarts translation model from a genotype (a search's output, or a named preset).

One process:      python training/train.py --genotype runs/search --output_dir runs/train
From a file:      python training/train.py configs/multi30k-en-de-train.yaml [--flag value ...]
Several (CPU):    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/train.py ...
GPU + bf16:       accelerate launch --mixed_precision bf16 training/train.py ...
Resume:           ... --resume_from_checkpoint latest

``--genotype`` takes a search output folder (its genotype.json, and its tokenizer unless --tokenizer is
given), a genotype.json file, or the preset ``standard`` (the self_attn/ffn Transformer, for baselines).
A genotype of fewer layers than asked for is stacked as a repeated block (the paper's s-layer blocks).

Label smoothing, Adam(0.9, 0.98) with inverse-sqrt warm-up, gradient accumulation, bf16, checkpoints
(save_state, atomic) and resume, TensorBoard through accelerate, tqdm. Every --eval_every steps: validation
loss and BLEU (greedy, on up to --bleu_sentences sentences); the best model by BLEU is kept in
``output_dir/best`` as a complete HuggingFace folder (weights, config with genotype, tokenizer).

The budget is in updates (``--max_steps``, default 1000). ``--time_budget_minutes`` alone trains until the
wall-clock budget is spent; with ``--max_steps`` too, whichever comes first (logged at the start).
``--average_checkpoints N`` averages the weights of the last N checkpoints (``--save_every`` apart) at the
end into ``output_dir/averaged``, a complete model folder, and records its validation scores in
train_summary.json.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger

from hf_revdarts import RevDartsForConditionalGeneration
from hf_revdarts.evaluation.metric import bleu_and_chrf
from hf_revdarts.evaluation.translation import translate
from hf_revdarts.memory import apply_memory_mode
from hf_revdarts.model.genotype import Genotype
from hf_revdarts.training.arguments import (
    SHARED_ARGUMENTS,
    DataArguments,
    DatasetArguments,
    ModelArguments,
    RunArguments,
    TrainArguments,
    loggable_arguments,
    parse_args,
)
from hf_revdarts.training.averaging import latest_checkpoints, load_averaged_weights
from hf_revdarts.training.cli import run_script
from hf_revdarts.training.model_health import DivergenceGuard, mean_over_processes
from hf_revdarts.training.run_config import (
    MemorySetup,
    build_config,
    check_memory_budget,
    load_genotype,
    memory_report,
    plan_run_memory,
)
from hf_revdarts.training.tokenization import load_tokenizer, save_tokenizer
from hf_revdarts.training.training_utils import (
    TrainState,
    atomic_folder,
    atomic_write_json,
    backward_micro_batches,
    batch_stream,
    check_output_dir,
    evaluate_loss,
    find_checkpoint,
    finite_or_none,
    guard_allows_step,
    inverse_sqrt_schedule,
    largest_batch_shape,
    load_checkpoint,
    load_split,
    next_batches,
    non_finite_guard,
    prepare_tokenizer,
    run_environment,
    run_steps,
    shutdown,
    start_run,
)
from hf_revdarts.utils.guards import NonFiniteError, assert_finite_state
from hf_revdarts.utils.integrity import complete_checkpoints

logger = get_logger("revdarts.train")
DEFAULT_MAX_STEPS = 1000  # the update budget when neither --max_steps nor --time_budget_minutes is given


@dataclass
class TrainArgs:
    dataset: DatasetArguments
    data: DataArguments
    model: ModelArguments
    run: RunArguments
    train: TrainArguments


@dataclass
class Inputs:
    """What the checks found: the genotype, the texts, where the tokenizer comes from, the checkpoint."""

    genotype: Genotype | None
    train: tuple[list[str], list[str]]
    eval: tuple[list[str], list[str]]
    tokenizer_source: Path | None
    resume_path: Path | None


@dataclass
class Training:
    """What the loop, the evaluations and the outputs of one training run share."""

    args: TrainArgs
    output_dir: Path
    accelerator: Any
    model: Any  # as prepared by accelerate (DDP-wrapped with several processes)
    unwrapped: RevDartsForConditionalGeneration
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    state: TrainState
    eval_batches: list[dict[str, torch.Tensor]]
    bleu_pairs: tuple[list[str], list[str]]
    hparams: dict[str, Any]
    memory: MemorySetup
    tokens_seen: int = 0  # by this process: a resumed run restores train_seconds, not the tokens before it
    seconds_here: float = 0.0
    averaged: dict[str, Any] | None = None
    divergence: DivergenceGuard | None = None


def parse_train_args(argv: list[str] | None = None) -> TrainArgs:
    args = TrainArgs(*parse_args(SHARED_ARGUMENTS + (TrainArguments,), argv, description=__doc__))
    if args.run.max_steps is None and not args.train.time_budget_minutes:
        args.run.max_steps = DEFAULT_MAX_STEPS
    return args


def budget_text(args: TrainArgs) -> str:
    """The run's budget in words, for the log: updates, time, or whichever comes first."""
    steps, minutes = args.run.max_steps, args.train.time_budget_minutes
    if not minutes:
        return f"{steps} updates"
    if steps is None:
        return f"{minutes:g} minutes of training (no --max_steps: as many updates as fit)"
    return f"{steps} updates or {minutes:g} minutes of training, whichever comes first"


def checkpoints_written(max_steps: int, save_every: int) -> int:
    """How many checkpoints a run of ``max_steps`` writes: every ``save_every`` steps and at the end."""
    return max_steps // save_every + (max_steps % save_every > 0)


def check_averaging(args: TrainArgs) -> None:
    """--average_checkpoints N needs N checkpoints written and kept; refused before any work otherwise."""
    n, run = args.train.average_checkpoints, args.run
    if not n:
        return
    if run.checkpoints_total_limit and n > run.checkpoints_total_limit:
        raise ValueError(
            f"--average_checkpoints {n} needs the last {n} checkpoints, but --checkpoints_total_limit "
            f"{run.checkpoints_total_limit} keeps fewer; raise it to >= {n} (0 keeps all)"
        )
    if run.max_steps is not None and n > checkpoints_written(run.max_steps, run.save_every):
        raise ValueError(
            f"--average_checkpoints {n}: --max_steps {run.max_steps} with --save_every {run.save_every} writes only "
            f"{checkpoints_written(run.max_steps, run.save_every)} checkpoint(s); lower --save_every or N"
        )


# ---------------------------------------------------------------- set-up ------------------------------------
def check_inputs(args: TrainArgs) -> Inputs:
    """Every input check before any work: output folder, genotype, sizes, data, tokenizer folder, checkpoint."""
    check_output_dir(args.run.output_dir, args.run.overwrite_output_dir, args.run.resume_from_checkpoint)
    check_averaging(args)
    genotype, search_dir = load_genotype(args.train.genotype)
    check_memory_budget(args.model, args.data, build_config(args.model, None, args.data.max_length, genotype),
                        supernet=False)
    train = load_split(args.dataset, args.data.train_split, args.data.max_train_examples)
    eval_pairs = load_split(args.dataset, args.data.eval_split, args.data.max_eval_examples)
    tok_source = Path(args.data.tokenizer) if args.data.tokenizer else (search_dir / "tokenizer" if search_dir else None)
    if tok_source is not None:
        load_tokenizer(tok_source)  # names a missing or damaged tokenizer file now, not after the run has started
    resume = args.run.resume_from_checkpoint
    resume_path = find_checkpoint(Path(args.run.output_dir), resume, args.run.max_steps) if resume else None
    return Inputs(genotype, train, eval_pairs, tok_source, resume_path)


def setup(args: TrainArgs, inputs: Inputs) -> Training:
    """Accelerator, tokenizer (the search's, or trained once and kept for resume), batches, model, optimiser."""
    run, output_dir = args.run, Path(args.run.output_dir)
    accelerator = start_run(output_dir, run.seed, run.num_threads, run.mixed_precision, run.gradient_accumulation_steps,
                            run.overwrite_output_dir)
    tokenizer = prepare_tokenizer(
        accelerator, output_dir / "tokenizer", inputs.tokenizer_source, inputs.train[0] + inputs.train[1],
        args.data.vocab_size, inputs.resume_path,
    )
    streams = {"train": batch_stream(tokenizer, inputs.train, args.data, run.seed, accelerator)}
    eval_stream = batch_stream(tokenizer, inputs.eval, args.data, 0, accelerator, shuffle=False)
    eval_batches = [eval_stream.next() for _ in range(len(eval_stream))]
    bleu_n = args.train.bleu_sentences
    bleu_pairs = (inputs.eval[0][:bleu_n], inputs.eval[1][:bleu_n])

    config = build_config(args.model, tokenizer, args.data.max_length, inputs.genotype)
    memory = plan_run_memory(args.model, args.data, config, supernet=False, device_type=accelerator.device.type)
    model = RevDartsForConditionalGeneration(config)
    apply_memory_mode(model, memory.mode, memory.keep_layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr, betas=(0.9, 0.98), eps=1e-9)
    scheduler = inverse_sqrt_schedule(optimizer, run.warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    state = TrainState(streams, {"weights": non_finite_guard(accelerator, run.max_non_finite_steps, "training")})
    if inputs.resume_path is not None:
        load_checkpoint(accelerator, state, inputs.resume_path, logger)
    unwrapped = accelerator.unwrap_model(model)
    divergence = DivergenceGuard(run.divergence_factor, state.loss_reference, "training", mean_over_processes(accelerator),
                                 lambda: state.guards["weights"].last_good_checkpoint)
    hparams = loggable_arguments(*vars(args).values())
    accelerator.init_trackers("train", config=hparams)
    logger.info(f"budget: {budget_text(args)}", main_process_only=True)
    logger.info(
        f"model: {sum(p.numel() for p in unwrapped.parameters()) / 1e6:.2f}M parameters, genotype "
        f"{config.get_genotype().to_dict()}, {len(streams['train'])} batches per "
        f"epoch and process; {run_environment(accelerator)}",
        main_process_only=True,
    )
    logger.info(memory.describe(), main_process_only=True)
    return Training(args, output_dir, accelerator, model, unwrapped, tokenizer, optimizer, scheduler, state,
                    eval_batches, bleu_pairs, hparams, memory, divergence=divergence)


# ---------------------------------------------------------------- the loop ----------------------------------
def train_step(t: Training) -> dict[str, float]:
    """One optimiser step over --gradient_accumulation_steps micro-batches; a stop once the time budget is spent."""
    tick = time.time()
    batches = next_batches(t.state.streams["train"], t.args.run.gradient_accumulation_steps, t.accelerator.device)
    t.state.batch_shape = largest_batch_shape(batches)
    loss, tokens = backward_micro_batches(t.accelerator, t.model, batches)
    norm = None
    if t.args.run.max_grad_norm > 0:
        norm = t.accelerator.clip_grad_norm_(t.model.parameters(), t.args.run.max_grad_norm)
    t.divergence.check_step(t.state.step + 1, loss)  # a loss far above its first value: stop before this update
    # A NaN/inf loss or gradient skips the update (counted; the run stops past --max_non_finite_steps).
    if guard_allows_step(t.accelerator, t.state.guards["weights"], t.state.step + 1, loss, norm, t.model.parameters()):
        t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    t.scheduler.step()
    t.state.step += 1
    elapsed = time.time() - tick
    t.state.train_seconds += elapsed
    t.seconds_here += elapsed
    t.tokens_seen += tokens
    budget = t.args.train.time_budget_minutes * 60
    t.state.stopped_early = budget > 0 and t.state.train_seconds >= budget
    tokens_per_second = t.tokens_seen / max(t.seconds_here, 1e-9)
    return {"train_loss": loss, "tokens_per_second": tokens_per_second, "lr": t.scheduler.get_last_lr()[0]}


def train_loop(t: Training) -> None:
    """Steps until --max_steps or the time budget; evaluations and checkpoints on their schedule."""
    t.model.train()
    run_steps(t.accelerator, t.state, t.args.run, t.output_dir, lambda: train_step(t),
              lambda: evaluate_and_keep_best(t), "train", model=t.unwrapped,
              memory_report=lambda meter: memory_report(t.memory, t.unwrapped.config, t.state, meter))


# ---------------------------------------------------------------- evaluation --------------------------------
def validation_scores(t: Training) -> dict[str, Any]:
    """Validation loss (all processes); on the main process greedy BLEU/chrF on --bleu_sentences sentences."""
    val_loss = evaluate_loss(t.model, t.accelerator, t.eval_batches)
    t.divergence.check_validation(t.state.step, val_loss)  # a diverged model gets no scores and no best/
    scores: dict[str, Any] = {"val_loss": finite_or_none(val_loss, "the validation loss", t.state.step)}
    if t.accelerator.is_main_process:
        sources, references = t.bleu_pairs
        hyps = translate(t.unwrapped, t.tokenizer, sources, num_beams=1, max_new_tokens=t.args.data.max_length)
        scores.update(bleu_and_chrf(hyps, references))
        scores["example"] = {"source": sources[0], "hypothesis": hyps[0], "reference": references[0]}
    return scores


def evaluate_and_keep_best(t: Training) -> bool:
    """Validation loss; on the main process greedy BLEU/chrF, and ``best/`` replaced when BLEU improved."""
    state = t.state
    entry: dict[str, Any] = {"step": state.step, **validation_scores(t), "train_seconds": state.train_seconds}
    val_loss = entry["val_loss"]
    if t.accelerator.is_main_process:
        if not state.best or entry["bleu"] > state.best["bleu"]:
            state.best = {k: entry[k] for k in ("step", "val_loss", "bleu", "chrf")}
            save_model_folder(t, t.output_dir / "best")
        shown = val_loss if val_loss is None else round(val_loss, 3)
        logger.info(f"step {state.step}: val loss {shown}, BLEU {entry['bleu']:.2f} — "
                    f"{entry['example']['hypothesis']!r}", main_process_only=True)
    state.history.append(entry)
    t.accelerator.log({k: v for k, v in entry.items() if isinstance(v, (int, float))}, step=state.step)
    t.accelerator.wait_for_everyone()
    return False  # training stops on --max_steps or the time budget only


# ---------------------------------------------------------------- outputs -----------------------------------
def save_model_folder(t: Training, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """A complete, loadable model folder (weights, config, generation config, modeling code, tokenizer)."""
    assert_finite_state(t.unwrapped, "best model")
    with atomic_folder(folder) as tmp:
        t.unwrapped.save_pretrained(tmp)
        save_tokenizer(t.tokenizer, tmp)
        atomic_write_json(tmp / "training_state.json", {"best": t.state.best, "args": t.hparams, **(extra or {})})


def average_last_checkpoints(t: Training) -> None:
    """``averaged/``: the mean weights of the last --average_checkpoints checkpoints, with validation scores.

    Training is over (its last checkpoint is written), so every process loads the average into its own
    model and the usual validation runs on it. A time-budgeted run may end with fewer checkpoints than
    asked: those that exist are averaged, with a warning, and the summary names them.
    """
    n = t.args.train.average_checkpoints
    if not n:
        return
    t.accelerator.wait_for_everyone()
    paths = latest_checkpoints(t.output_dir, max(1, min(n, len(complete_checkpoints(t.output_dir)))))
    if paths[-1].name != f"checkpoint-{t.state.step:06d}":
        raise RuntimeError(f"the newest checkpoint in {t.output_dir} is {paths[-1].name}, not this run's last "
                           f"step {t.state.step}: refusing to average checkpoints of another run")
    if len(paths) < n:
        logger.warning(f"--average_checkpoints {n}: only {len(paths)} checkpoint(s) exist (the time budget ended "
                       "the run early); averaging those", main_process_only=True)
    load_averaged_weights(t.unwrapped, paths)
    steps = [int(p.name.split("-")[-1]) for p in paths]
    t.averaged = {"checkpoints": [p.name for p in paths], "steps": steps, **validation_scores(t)}
    if t.accelerator.is_main_process:
        save_model_folder(t, t.output_dir / "averaged", {"averaged": t.averaged})
        logger.info(f"averaged steps {steps}: val loss {t.averaged['val_loss']}, BLEU "
                    f"{t.averaged['bleu']:.2f}", main_process_only=True)
    t.accelerator.wait_for_everyone()


def write_summary(t: Training, error: str | None = None) -> None:
    """train_summary.json: steps, time, parameters, genotype, the best evaluation, the history, the steps
    skipped for NaN/inf, and the error that stopped the run, if one did."""
    if not t.accelerator.is_main_process:
        return
    summary = {
        "steps": t.state.step,
        "train_seconds": round(t.state.train_seconds, 1),
        "stopped_by_time_budget": t.state.stopped_early,
        "budget": {"max_steps": t.args.run.max_steps, "time_budget_minutes": t.args.train.time_budget_minutes},
        "parameters": sum(p.numel() for p in t.unwrapped.parameters()),
        "genotype": t.unwrapped.config.get_genotype().to_dict(),
        "best": t.state.best,
        "averaged": t.averaged,
        "history": t.state.history,
        **run_environment(t.accelerator),
        "non_finite_steps_skipped": t.state.skipped_steps(),
    }
    if error is not None:
        summary["error"] = error
    atomic_write_json(t.output_dir / "train_summary.json", summary)
    if error is not None:
        return
    shown = {k: summary[k] for k in ("steps", "train_seconds", "best", "parameters")}
    if t.averaged:
        shown["averaged"] = {k: t.averaged[k] for k in ("steps", "val_loss", "bleu", "chrf")}
    print(json.dumps(shown))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_train_args(argv)
    inputs = check_inputs(args)
    training = setup(args, inputs)
    try:
        train_loop(training)
    except NonFiniteError as e:
        write_summary(training, error=str(e))  # what happened up to the divergence, as valid JSON
        raise
    average_last_checkpoints(training)
    write_summary(training)
    shutdown(training.accelerator)
    return 0


if __name__ == "__main__":
    run_script(main)
