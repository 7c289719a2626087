#!/usr/bin/env python
"""Differentiable architecture search on the reversible RevDarts supernet.

One process:      python training/search.py --output_dir runs/search
From a file:      python training/search.py configs/multi30k-en-de-search.yaml [--flag value ...]
Several (CPU):    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/search.py ...
                  (``accelerate launch --cpu --num_processes 2`` silently runs ONE process.)
GPU + bf16:       accelerate launch --mixed_precision bf16 training/search.py ...
Resume:           ... --resume_from_checkpoint latest   (or a checkpoint-NNNNNN folder)

Each step is an α step on held-out batches, then a θ step on training batches (first-order DARTS by
default, ``--second_order`` for the unrolled variant). With ``--selection sampled`` and ``--arch_start_step``
equal to ``--max_steps`` there is no α phase: θ alone is trained (one path per step with ``--warmup_sampling
single_path``, as SPOS) and the genotype is the sampled one the supernet scores best.

Writes into --output_dir: genotype.json, alpha_history.json, arch_parameters.json, search_summary.json,
derived_config/config.json, the supernet as a model folder (``supernet/``, loadable with
``RevDartsSupernet.from_pretrained``), alpha_heatmap.png, alpha_entropy.png, genotype.png, the tokenizer,
TensorBoard logs and checkpoint-NNNNNN folders (each written under a temporary name and renamed, so an
interrupted run never leaves a half-written one).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from hf_revdarts.memory import apply_memory_mode
from hf_revdarts.model.genotype import Genotype, validate_search_space
from hf_revdarts.search import Architect, CollapseGuard, RevDartsSupernet
from hf_revdarts.search.architect import arch_lr_for_steps, make_arch_optimizer, make_weight_optimizer
from hf_revdarts.search.selection import select_genotype
from hf_revdarts.search.visualize import plot_decisiveness, plot_genotype, plot_heatmap
from hf_revdarts.training.arguments import (
    SHARED_ARGUMENTS,
    DataArguments,
    DatasetArguments,
    ModelArguments,
    RunArguments,
    SearchArguments,
    loggable_arguments,
    parse_args,
)
from hf_revdarts.training.cli import run_script
from hf_revdarts.training.flag_checks import check_search_flags
from hf_revdarts.training.model_health import DivergenceGuard, mean_over_processes
from hf_revdarts.training.run_config import (
    MemorySetup,
    build_config,
    check_memory_budget,
    memory_report,
    plan_run_memory,
)
from hf_revdarts.training.tokenization import load_tokenizer
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
    save_checkpoint,
    shutdown,
    start_run,
    unscaled_backward,
    warmup_checkpoint,
    warmup_origin,
)
from hf_revdarts.utils.guards import NonFiniteError
from hf_revdarts.utils.integrity import load_state_checked

logger = get_logger("revdarts.search")

# The search's defaults where they differ from the shared schema's (which are train.py's): the default recipe
# (configs/multi30k-en-de-search.yaml): the supernet at the size the protocol trains (d=192, 4+4, α tied in blocks
# of 2), a single-path θ warm-up of 1000 steps, then 300 α steps with pruning, DARTS-PT's genotype.
SEARCH_DEFAULTS = {
    "max_eval_examples": 400, "vocab_size": 8000, "max_length": 40, "max_tokens": 4096,
    "d_model": 192, "num_heads": 4, "encoder_layers": 4, "decoder_layers": 4,
    "max_steps": 1300, "lr": 1.5e-3, "warmup_steps": 400, "max_grad_norm": 0.0, "eval_every": 100, "save_every": 100,
    "arch_start_step": 1000, "warmup_sampling": "single_path", "prune_below": 0.01, "selection": "perturbation",
}


@dataclass
class SearchArgs:
    dataset: DatasetArguments
    data: DataArguments
    model: ModelArguments
    run: RunArguments
    search: SearchArguments


@dataclass
class Texts:
    train: tuple[list[str], list[str]]
    arch: tuple[list[str], list[str]]
    eval: tuple[list[str], list[str]]


@dataclass
class Search:
    """What the loop, the evaluations and the outputs of one search share."""

    args: SearchArgs
    output_dir: Path
    accelerator: Any
    supernet: RevDartsSupernet
    model: Any  # the supernet as prepared by accelerate (DDP-wrapped with several processes)
    weight_optimizer: Any
    arch_optimizer: Any
    scheduler: Any
    architect: Architect
    guard: CollapseGuard
    state: TrainState
    eval_batches: list[dict[str, torch.Tensor]]
    memory: MemorySetup
    divergence: DivergenceGuard
    start: float = field(default_factory=time.time)
    pruned_ops: int = 0  # (node, op) pairs skipped in the last step (--prune_below)
    warmup: dict[str, Any] = field(default_factory=dict)  # --warmup_from: the checkpoint and its CPU seconds


def parse_search_args(argv: list[str] | None = None) -> SearchArgs:
    groups = parse_args(SHARED_ARGUMENTS + (SearchArguments,), argv, SEARCH_DEFAULTS, description=__doc__)
    return SearchArgs(*groups)


# ---------------------------------------------------------------- set-up ------------------------------------
def check_inputs(args: SearchArgs) -> tuple[Texts, Path | None, Path | None]:
    """Every input check before any work: output folder, search space, sizes, data, the checkpoint to resume and
    the warm-up to start from (both resolved and verified here, once)."""
    run = args.run
    check_output_dir(run.output_dir, run.overwrite_output_dir, run.resume_from_checkpoint, kind="search")
    no_alpha_phase = args.search.arch_start_step == run.max_steps and args.search.selection == "sampled"
    if args.search.arch_start_step >= run.max_steps and not no_alpha_phase:
        raise ValueError(
            f"--arch_start_step {args.search.arch_start_step} >= --max_steps {run.max_steps}: α would never be "
            "updated and genotype.json would be the argmax of its random initialisation (only --selection sampled "
            "selects without α: then --arch_start_step equal to --max_steps trains θ alone)"
        )
    check_search_flags(args.search, args.model, args.run.max_steps, arch_lr(args))
    if args.data.tokenizer:
        load_tokenizer(args.data.tokenizer)  # names a damaged tokenizer file now, not after the run has started
    if args.search.arch_split is not None and args.search.arch_split == args.data.train_split:
        raise ValueError(
            f"--arch_split {args.search.arch_split} is the training split: α would be fit on the data θ trains on "
            "(DARTS holds it out); give another split, or leave it out to hold out part of the training split"
        )
    validate_search_space(args.search.encoder_ops, "encoder")
    validate_search_space(args.search.decoder_ops, "decoder")
    check_memory_budget(args.model, args.data, build_config(args.model, None, args.data.max_length, search_args=args.search),
                        supernet=True)
    train = load_split(args.dataset, args.data.train_split, args.data.max_train_examples)
    if args.search.arch_split:
        arch = load_split(args.dataset, args.search.arch_split, args.data.max_train_examples)
    else:
        # DARTS' protocol: the training data is halved, θ learns on one half, α on the other.
        cut = int(len(train[0]) * (1 - args.search.arch_fraction))
        if cut < 1 or cut >= len(train[0]):
            raise ValueError(f"{len(train[0])} training pairs are too few to hold out a part for α")
        arch = (train[0][cut:], train[1][cut:])
        train = (train[0][:cut], train[1][:cut])
    texts = Texts(train, arch, load_split(args.dataset, args.data.eval_split, args.data.max_eval_examples))
    output_dir = Path(args.run.output_dir)
    resume = args.run.resume_from_checkpoint
    warmup = args.search.warmup_from
    return (texts, find_checkpoint(output_dir, resume, run.max_steps) if resume else None,
            warmup_checkpoint(warmup, args.search.arch_start_step) if warmup is not None else None)


def start_from_warmup(s: Search, path: Path) -> None:
    """θ, its Adam moments and learning-rate schedule from the shared warm-up; α (drawn at construction from
    this run's seed), the data order and the RNG stay this run's own, so α-phase seeds differ as separate
    searches would after the warm-up. Refuses a warm-up trained on another tokenizer's ids."""
    ours = s.output_dir / "tokenizer" / "tokenizer.json"
    for theirs in (path.parent / "tokenizer" / "tokenizer.json", path.parent.parent / "tokenizer" / "tokenizer.json"):
        if theirs.is_file() and ours.is_file() and theirs.read_bytes() != ours.read_bytes():
            raise ValueError(f"--warmup_from {path}: its tokenizer ({theirs.parent}) is not this run's: the warm-up "
                             "learned other token ids; give the same --tokenizer")
    own_alpha = [a.detach().clone() for a in s.supernet.arch_parameters()]
    load_state_checked(s.accelerator, path)  # also restores the warm-up run's RNG states, reseeded below
    with torch.no_grad():
        for a, own in zip(s.supernet.arch_parameters(), own_alpha):
            a.copy_(own)
    set_seed(s.args.run.seed + s.args.search.arch_start_step)
    warmup = json.loads((path / "train_state.json").read_text(encoding="utf-8"))
    s.state.step, s.state.loss_reference = warmup["step"], dict(warmup.get("loss_reference", {}))
    s.warmup = warmup_origin(path)
    logger.info(f"θ warm-up from {path} (step {s.state.step}); α, data order and RNG from --seed {s.args.run.seed}",
                main_process_only=True)


def setup(args: SearchArgs, texts: Texts, resume_path: Path | None) -> Search:
    """Accelerator, tokenizer (trained once, kept for resume), batch streams, supernet, optimisers, architect."""
    run, output_dir = args.run, Path(args.run.output_dir)
    accelerator = start_run(output_dir, run.seed, run.num_threads, run.mixed_precision, run.gradient_accumulation_steps,
                            run.overwrite_output_dir, kind="search")
    tokenizer = prepare_tokenizer(
        accelerator, output_dir / "tokenizer", Path(args.data.tokenizer) if args.data.tokenizer else None,
        texts.train[0] + texts.train[1] + texts.arch[0] + texts.arch[1], args.data.vocab_size, resume_path,
    )
    streams = {
        "train": batch_stream(tokenizer, texts.train, args.data, run.seed, accelerator),
        "arch": batch_stream(tokenizer, texts.arch, args.data, run.seed + 1, accelerator),
    }
    eval_stream = batch_stream(tokenizer, texts.eval, args.data, 0, accelerator, shuffle=False)
    eval_batches = [eval_stream.next() for _ in range(min(args.search.eval_batches, len(eval_stream)))]

    config = build_config(args.model, tokenizer, args.data.max_length, search_args=args.search)
    memory = plan_run_memory(args.model, args.data, config, supernet=True, device_type=accelerator.device.type)
    supernet = RevDartsSupernet(config)
    apply_memory_mode(supernet, memory.mode, memory.keep_layers)
    w_opt = make_weight_optimizer(supernet, lr=run.lr)
    a_opt = make_arch_optimizer(supernet, lr=arch_lr(args), weight_decay=args.search.arch_weight_decay)
    # Not passed through prepare(): AcceleratedScheduler steps once per process per call, which would
    # make the schedule depend on the process count. Registered for checkpointing instead.
    scheduler = inverse_sqrt_schedule(w_opt, run.warmup_steps)
    model, w_opt, a_opt = accelerator.prepare(supernet, w_opt, a_opt)
    guards = {
        "weights": non_finite_guard(accelerator, run.max_non_finite_steps, "the search's weight (θ) step"),
        "arch": non_finite_guard(accelerator, run.max_non_finite_steps, "the search's architecture (α) step"),
    }
    state = TrainState(streams, guards)
    accelerator.register_for_checkpointing(scheduler)
    world = accelerator.num_processes
    architect = Architect(
        model,
        supernet,
        a_opt,
        second_order=args.search.second_order,
        backward=unscaled_backward(accelerator),  # the architect averages its micro-batches itself
        no_sync=lambda: accelerator.no_sync(model),
        all_reduce_mean=lambda t: accelerator.reduce(t, reduction="mean") if world > 1 else t,
    )
    if resume_path is not None:
        load_checkpoint(accelerator, state, resume_path, logger)
    divergence = DivergenceGuard(run.divergence_factor, state.loss_reference, "the search",
                                 mean_over_processes(accelerator), lambda: guards["weights"].last_good_checkpoint,
                                 result="no genotype is derived from it")
    s = args.search
    guard = CollapseGuard(s.warn_share, s.stop_share, s.stop_argmax_fraction)
    accelerator.init_trackers("search", config=loggable_arguments(*vars(args).values()))
    logger.info(
        f"supernet: {sum(p.numel() for p in supernet.weight_parameters()) / 1e6:.2f}M weights, "
        f"{len(supernet.arch_parameters())} α nodes, {len(streams['train'])} train / "
        f"{len(streams['arch'])} α batches per epoch and process; {run_environment(accelerator)}",
        main_process_only=True,
    )
    logger.info(memory.describe(), main_process_only=True)
    return Search(args, output_dir, accelerator, supernet, model, w_opt, a_opt, scheduler, architect, guard, state,
                  eval_batches, memory, divergence)


def arch_lr(args: SearchArgs) -> float:
    """--arch_lr, or the rule: Adam moves a logit about one lr per α step, so lr × α steps = the logit range."""
    if args.search.arch_lr is not None:
        return args.search.arch_lr
    arch_steps = max(1, args.run.max_steps - args.search.arch_start_step)
    return arch_lr_for_steps(arch_steps, args.search.arch_logit_range)


# ---------------------------------------------------------------- the loop ----------------------------------
def search_step(s: Search) -> dict[str, float]:
    """One DARTS step: α on held-out batches (from step --arch_start_step on), then θ on training batches.
    A step whose loss or gradients are NaN/inf is skipped (α and θ each have their ``NonFiniteGuard``)."""
    started = time.perf_counter()
    accum, device, step = s.args.run.gradient_accumulation_steps, s.accelerator.device, s.state.step + 1
    lr = s.scheduler.get_last_lr()[0]
    # Pruning reads α: before the first α step it would only read the random initialisation.
    alpha_moved = s.state.step > s.args.search.arch_start_step
    pruned = s.supernet.prune_ops(s.args.search.prune_below if alpha_moved else 0.0) if s.args.search.prune_below else None
    train_batches = next_batches(s.state.streams["train"], accum, device)
    s.state.batch_shape = largest_batch_shape(train_batches)
    logs: dict[str, float] = {}
    if s.state.step >= s.args.search.arch_start_step:  # before that, no α loss to show (not a NaN placeholder)
        arch_batches = next_batches(s.state.streams["arch"], accum, device)
        s.state.batch_shape = largest_batch_shape(train_batches + arch_batches)
        alphas = s.supernet.arch_parameters()

        def allow(loss: float) -> bool:
            return guard_allows_step(s.accelerator, s.state.guards["arch"], step, loss, None, alphas)

        with s.accelerator.autocast():
            logs["arch_loss"] = s.architect.step(arch_batches, train_batches, unrolled_lr=lr, allow_step=allow)
    s.weight_optimizer.zero_grad(set_to_none=True)
    s.arch_optimizer.zero_grad(set_to_none=True)
    single_path = s.args.search.warmup_sampling == "single_path" and s.state.step < s.args.search.arch_start_step
    if single_path:  # seeded by run seed and step: every process draws the same path, a resume the same sequence
        s.supernet.sample_single_path(torch.Generator().manual_seed(s.args.run.seed * 1_000_003 + s.state.step))
    train_loss, _ = backward_micro_batches(s.accelerator, s.model, train_batches)
    if single_path:
        s.supernet.prune_ops(0.0)  # evaluations and α steps see the whole supernet
    s.divergence.check_step(step, train_loss)
    norm = None
    if s.args.run.max_grad_norm > 0:
        norm = s.accelerator.clip_grad_norm_(s.supernet.weight_parameters(), s.args.run.max_grad_norm)
    if guard_allows_step(s.accelerator, s.state.guards["weights"], step, train_loss, norm,
                         s.supernet.weight_parameters()):
        s.weight_optimizer.step()
    s.scheduler.step()
    s.weight_optimizer.zero_grad(set_to_none=True)
    s.arch_optimizer.zero_grad(set_to_none=True)  # the θ backward also reached α; α moves only on held-out data
    s.state.step += 1
    s.state.train_seconds += time.perf_counter() - started  # checkpointed: what a shared warm-up cost
    if s.state.step == s.args.search.arch_start_step:
        # Kept apart from the rotated checkpoints: other α-phase seeds can start from it (--warmup_from).
        save_checkpoint(s.accelerator, s.output_dir / "warmup", s.state, 0)
    if pruned is not None:
        s.pruned_ops = pruned
        logs["pruned_ops"] = float(pruned)
    return {"train_loss": train_loss, **logs, "lr": lr}


def search_loop(s: Search) -> None:
    """Steps until --max_steps or the collapse guard stops; evaluations and checkpoints on their schedule."""
    if not s.state.history:
        evaluate(s)  # the starting point of the α history (at --arch_start_step after --warmup_from)
    s.model.train()
    run_steps(s.accelerator, s.state, s.args.run, s.output_dir, lambda: search_step(s), lambda: evaluate(s), "search",
              model=s.supernet, memory_report=lambda meter: memory_report(s.memory, s.supernet.config, s.state, meter))


# ---------------------------------------------------------------- evaluation --------------------------------
@torch.no_grad()
def mean_entropy(supernet: RevDartsSupernet) -> float:
    """Mean entropy of softmax(α) over nodes, as a fraction of the uniform distribution's (1 = uniform)."""
    vals = []
    for a in supernet.arch_parameters():
        p = torch.softmax(a.float(), -1)
        if len(p) < 2:  # a one-op search space is decided from the start (and log(1) = 0 would divide by 0)
            vals.append(0.0)
            continue
        vals.append(float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(len(p))))
    return sum(vals) / len(vals)


def evaluate(s: Search) -> bool:
    """Validation loss and an α snapshot into the history (and the running outputs); True asks to stop."""
    val_loss = evaluate_loss(s.model, s.accelerator, s.eval_batches)
    s.divergence.check_validation(s.state.step, val_loss)  # no genotype from a supernet whose outputs overflow
    val_loss = finite_or_none(val_loss, "the validation loss", s.state.step)
    stats, stop = s.guard.check(s.supernet, s.state.step)
    snapshot = {
        "step": s.state.step,
        "val_loss": val_loss,
        "softmax": s.supernet.arch_weights(),
        "genotype": s.supernet.genotype().to_dict(),
        "op_counts": stats["op_counts"],
        "param_free_share": stats["param_free_share"],
        "mean_top_weight": stats["mean_top_weight"],
        "entropy": mean_entropy(s.supernet),
    }
    s.state.history.append(snapshot)
    logged = {"val_loss": val_loss, "alpha_entropy": snapshot["entropy"], "param_free_share": stats["param_free_share"]}
    s.accelerator.log({k: v for k, v in logged.items() if v is not None}, step=s.state.step)
    if s.accelerator.is_main_process:
        write_outputs(s, final=False)
    return stop


# ---------------------------------------------------------------- outputs -----------------------------------
def write_outputs(s: Search, final: bool, genotype: Genotype | None = None) -> None:
    """genotype.json (argmax while running, the --selection's at the end) and alpha_history.json; at the end
    also the derived config, the supernet and figures."""
    out, genotype = s.output_dir, genotype or s.supernet.genotype()
    atomic_write_json(out / "genotype.json", genotype.to_dict())
    atomic_write_json(out / "alpha_history.json", s.state.history, indent=None)
    if not final:
        return
    with atomic_folder(out / "derived_config") as tmp:
        (tmp / "config.json").write_text(s.supernet.derive_config(genotype).to_json_string(), encoding="utf-8")
    with atomic_folder(out / "supernet") as tmp:
        s.supernet.save_pretrained(tmp)
    if not s.args.search.no_figures and s.state.history:
        op_names = {side: s.supernet.op_names(side) for side in ("encoder", "decoder")}
        plot_heatmap(s.state.history, op_names, out / "alpha_heatmap.png")
        plot_decisiveness(s.state.history, out / "alpha_entropy.png")
        plot_genotype(genotype, out / "genotype.png")


def write_final_outputs(s: Search) -> None:
    """α per rank (identical across processes), the final outputs and search_summary.json."""
    alphas = {n: a.detach().cpu().tolist() for n, a in s.supernet.named_arch_parameters()}
    rank_diff = 0.0
    if s.accelerator.num_processes > 1:
        atomic_write_json(s.output_dir / f"arch_parameters.rank{s.accelerator.process_index}.json", alphas, indent=None)
        flat = torch.cat([a.detach().flatten() for a in s.supernet.arch_parameters()])
        gathered = s.accelerator.gather(flat.unsqueeze(0))
        rank_diff = float((gathered - gathered[0:1]).abs().max())
    if not s.accelerator.is_main_process:
        return
    atomic_write_json(s.output_dir / "arch_parameters.json", alphas, indent=None)
    s.supernet.prune_ops(0.0)  # the derivations see every op (DARTS-PT removes each in turn)
    selections = select(s)
    genotype = Genotype.from_dict(selections[s.args.search.selection]["genotype"])
    atomic_write_json(s.output_dir / "selection.json", selections)
    write_outputs(s, final=True, genotype=genotype)
    first, last = s.state.history[0], s.state.history[-1]
    summary = {
        "steps": s.state.step,
        "stopped_early": s.state.stopped_early,
        **run_environment(s.accelerator),
        "seconds": time.time() - s.start,
        "val_loss_first": first["val_loss"],
        "val_loss_last": last["val_loss"],
        "alpha_entropy_first": first["entropy"],
        "alpha_entropy_last": last["entropy"],
        "alpha_max_abs_diff_across_ranks": rank_diff,
        "arch_lr": arch_lr(s.args),
        # 0: θ alone was trained (--selection sampled, as SPOS); the argmax genotype then reads α's random start
        "alpha_steps": max(0, s.state.step - s.args.search.arch_start_step),
        "mean_top_weight": last["mean_top_weight"],
        "selection": s.args.search.selection,
        "genotype": genotype.to_dict(),
        "genotypes": {method: sel["genotype"] for method, sel in selections.items()},
        "non_finite_steps_skipped": s.state.skipped_steps(),
        "prune_below": s.args.search.prune_below,
        "pruned_ops_at_end": s.pruned_ops,
        **s.warmup,
    }
    atomic_write_json(s.output_dir / "search_summary.json", summary)
    print(json.dumps(summary))


def select(s: Search) -> dict[str, dict[str, Any]]:
    """The argmax genotype, and with --selection perturbation or sampled also that method's from the same
    supernet (on the held-out batches; sampled draws with the run's seed)."""
    selections = {"argmax": select_genotype(s.supernet, "argmax").to_dict()}
    method = s.args.search.selection
    if method != "argmax":
        batches = [{k: v.to(s.accelerator.device) for k, v in b.items()} for b in s.eval_batches]
        selections[method] = select_genotype(s.supernet, method, batches=batches, progress=True,
                                             samples=s.args.search.sampled_genotypes, seed=s.args.run.seed).to_dict()
    return selections


def write_failure_summary(s: Search, error: str) -> None:
    """search_summary.json of a search stopped by NaN/inf: how far it got and why (no genotype is derived
    from it; genotype.json and alpha_history.json hold the last evaluation with finite α)."""
    if s.accelerator.is_main_process:
        summary = {
            "steps": s.state.step,
            **run_environment(s.accelerator),
            "seconds": time.time() - s.start,
            "non_finite_steps_skipped": s.state.skipped_steps(),
            "error": error,
        }
        atomic_write_json(s.output_dir / "search_summary.json", summary)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    args = parse_search_args(argv)
    texts, resume_path, warmup_path = check_inputs(args)
    search = setup(args, texts, resume_path)
    if warmup_path is not None and resume_path is None:
        start_from_warmup(search, warmup_path)
    elif warmup_path is not None:  # resumed: θ is past the warm-up, its origin still goes on record
        search.warmup = warmup_origin(warmup_path)
    try:
        search_loop(search)
    except NonFiniteError as e:
        write_failure_summary(search, str(e))
        raise
    write_final_outputs(search)
    shutdown(search.accelerator)
    return 0


if __name__ == "__main__":
    run_script(main)
