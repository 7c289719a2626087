#!/usr/bin/env python
"""Differentiable architecture search on the reversible RevDarts supernet.

One process:      python training/search.py --output_dir runs/search
Several (CPU):    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 training/search.py ...
                  (``accelerate launch --cpu --num_processes 2`` silently runs ONE process.)
GPU + bf16:       accelerate launch --mixed_precision bf16 training/search.py ...
Resume:           ... --resume_from_checkpoint latest   (or a checkpoint-NNNNNN folder)

Alternates a θ step on the training batches and an α step on held-out batches (first-order DARTS by
default, ``--second_order`` for the unrolled variant). Writes into --output_dir: genotype.json,
alpha_history.json, alpha_heatmap.png, genotype.png, derived_config/config.json, arch_parameters.json,
the tokenizer, TensorBoard logs and checkpoint-NNNNNN folders (each written to a temporary name and
renamed, so an interrupted run never leaves a half-written one).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SAMPLE_DATA,
    TrainState,
    atomic_folder,
    atomic_savefig,
    atomic_write_text,
    evaluate_loss,
    find_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    shutdown,
)

DEFAULT_DATA = SAMPLE_DATA


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=str(DEFAULT_DATA), help="local {split}.{lang}[.gz] folder or Hub dataset id")
    d.add_argument("--dataset_config", default=None, help="Hub dataset configuration, e.g. de-en for wmt14")
    d.add_argument("--src_lang", default="en")
    d.add_argument("--tgt_lang", default="de")
    d.add_argument("--train_split", default="train")
    d.add_argument("--arch_split", default=None, help="held-out split for α (default: hold out part of train)")
    d.add_argument("--arch_fraction", type=float, default=0.5, help="share of train held out for α if no --arch_split")
    d.add_argument("--eval_split", default="validation", help="split whose loss is reported at each evaluation")
    d.add_argument("--max_train_examples", type=int, default=6000)
    d.add_argument("--max_eval_examples", type=int, default=400)
    d.add_argument("--vocab_size", type=int, default=2000)
    d.add_argument("--max_length", type=int, default=40, help="tokens per sentence after truncation")
    d.add_argument("--max_tokens", type=int, default=800, help="padded tokens per batch and process")
    m = p.add_argument_group("supernet")
    m.add_argument("--d_model", type=int, default=96)
    m.add_argument("--embedding_dim", type=int, default=None)
    m.add_argument("--num_heads", type=int, default=2)
    m.add_argument("--encoder_layers", type=int, default=2)
    m.add_argument("--decoder_layers", type=int, default=2)
    m.add_argument("--tie_blocks", type=int, default=2, help="share α across blocks of s layers (0 = untied)")
    m.add_argument("--encoder_ops", default=None, help="comma-separated custom encoder search space")
    m.add_argument("--decoder_ops", default=None, help="comma-separated custom decoder search space")
    m.add_argument("--dropout", type=float, default=0.1)
    m.add_argument("--label_smoothing", type=float, default=0.1)
    m.add_argument("--no_reversible", action="store_true", help="ordinary autograd (the memory baseline)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--max_steps", type=int, default=150)
    o.add_argument("--lr", type=float, default=5e-4, help="θ peak lr (inverse-sqrt schedule)")
    o.add_argument("--warmup_steps", type=int, default=50)
    o.add_argument("--arch_lr", type=float, default=3e-4)
    o.add_argument("--arch_weight_decay", type=float, default=1e-3)
    o.add_argument("--arch_start_step", type=int, default=0, help="θ-only warm-up steps before α updates begin")
    o.add_argument("--second_order", action="store_true", help="unrolled (finite-difference) DARTS gradient for α")
    o.add_argument("--gradient_accumulation_steps", type=int, default=1)
    o.add_argument("--max_grad_norm", type=float, default=0.0, help="θ gradient clipping (0 = off)")
    o.add_argument("--mixed_precision", default=None, choices=["no", "bf16", "fp16"], help="default: accelerate's")
    o.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("collapse guard")
    g.add_argument("--warn_share", type=float, default=0.3)
    g.add_argument("--stop_share", type=float, default=0.6, help="stop when mean α mass on zero/identity exceeds it")
    g.add_argument("--stop_argmax_fraction", type=float, default=0.5, help="stop when this share of nodes picks them")
    r = p.add_argument_group("run")
    r.add_argument("--output_dir", required=True)
    r.add_argument("--eval_every", type=int, default=25)
    r.add_argument("--eval_batches", type=int, default=20)
    r.add_argument("--save_every", type=int, default=100)
    r.add_argument("--checkpoints_total_limit", type=int, default=2)
    r.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    r.add_argument("--num_threads", type=int, default=0, help="torch threads per process (0: cores / processes)")
    r.add_argument("--no_figures", action="store_true")
    args = p.parse_args(argv)
    for name in ("max_steps", "eval_every", "save_every", "gradient_accumulation_steps", "max_tokens", "vocab_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if not 0 < args.arch_fraction < 1:
        p.error("--arch_fraction must be in (0, 1)")
    return args


def _split_ops(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def alpha_snapshot(supernet: Any, step: int, val_loss: float, stats: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": step,
        "val_loss": val_loss,
        "softmax": supernet.arch_weights(),
        "genotype": supernet.genotype(),
        "op_counts": stats["op_counts"],
        "param_free_share": stats["param_free_share"],
        "entropy": mean_entropy(supernet),
    }


@torch.no_grad()
def mean_entropy(supernet: Any) -> float:
    """Mean entropy of softmax(α) over nodes, as a fraction of the uniform distribution's (1 = uniform)."""
    vals = []
    for a in supernet.arch_parameters():
        p = torch.softmax(a.float(), -1)
        vals.append(float(-(p * p.clamp_min(1e-12).log()).sum() / math.log(len(p))))
    return sum(vals) / len(vals)


def plot_heatmap(history: list[dict[str, Any]], supernet: Any, path: Path) -> None:
    """softmax(α) over time: one panel per α node, ops × evaluation steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(history[0]["softmax"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    steps = [h["step"] for h in history]
    for ax, name in zip(axes.flat, names):
        ops = supernet.op_names(name.split(".")[0])
        data = np.array([h["softmax"][name] for h in history]).T
        im = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(ops)), ops, fontsize=6)
        ticks = np.linspace(0, len(steps) - 1, min(5, len(steps))).astype(int)
        ax.set_xticks(ticks, [steps[t] for t in ticks], fontsize=6)
        ax.set_title(name, fontsize=8)
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        cbar.ax.tick_params(labelsize=6)
        cbar.formatter.set_useOffset(False)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("softmax(α) over search steps (x: step, one panel per node)")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_genotype(genotype: dict[str, list[list[str]]], path: Path) -> None:
    """The derived layers as boxes: encoder left, decoder right (with its fixed cross-attention split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    enc, dec = genotype["encoder"], [row + ["cross_attn*"] for row in genotype["decoder"]]
    height = max(len(enc), len(dec))
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.7 * height))
    for x0, side, rows in ((0.0, "encoder", enc), (4.5, "decoder", dec)):
        ax.text(x0 + 1.6, height + 0.2, side, ha="center", fontsize=11, weight="bold")
        for i, row in enumerate(rows):
            w = 3.4 / len(row)
            for k, name in enumerate(row):
                color = "#dddddd" if name.startswith("cross") else ("#f4a6a6" if name in ("zero", "identity") else "#a6c8f4")
                ax.add_patch(plt.Rectangle((x0 + k * w, i), w * 0.95, 0.8, color=color))
                ax.text(x0 + k * w + w * 0.47, i + 0.4, name, ha="center", va="center", fontsize=7)
            ax.text(x0 - 0.1, i + 0.4, f"L{i}", ha="right", va="center", fontsize=7)
    ax.set_xlim(-0.6, 8.2)
    ax.set_ylim(-0.2, height + 0.6)
    ax.axis("off")
    ax.set_title("derived genotype (bottom = first layer; * fixed)", fontsize=9)
    atomic_savefig(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    from hf_revdarts import RevDartsConfig
    from hf_revdarts.data import BatchStream, tokenize_pairs, get_tokenizer, load_parallel_text
    from hf_revdarts.tokenization import save_tokenizer
    from hf_revdarts.search import Architect, CollapseGuard, RevDartsSupernet
    from hf_revdarts.search.architect import inverse_sqrt_schedule, make_arch_optimizer, make_weight_optimizer
    from hf_revdarts.search.supernet import validate_search_space

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger = get_logger("revdarts.search")
    output_dir = Path(args.output_dir)

    # ---- every input check before any work --------------------------------------------------------
    encoder_ops = validate_search_space(_split_ops(args.encoder_ops), "encoder")
    decoder_ops = validate_search_space(_split_ops(args.decoder_ops), "decoder")
    guard = CollapseGuard(args.warn_share, args.stop_share, args.stop_argmax_fraction)
    train_src, train_tgt = load_parallel_text(
        args.dataset, args.src_lang, args.tgt_lang, args.train_split, args.dataset_config, args.max_train_examples
    )
    if args.arch_split:
        arch_src, arch_tgt = load_parallel_text(
            args.dataset, args.src_lang, args.tgt_lang, args.arch_split, args.dataset_config, args.max_train_examples
        )
    else:
        # DARTS' protocol: the training data is halved, θ learns on one half, α on the other.
        cut = int(len(train_src) * (1 - args.arch_fraction))
        if cut < 1 or cut >= len(train_src):
            raise ValueError(f"{len(train_src)} training pairs are too few to hold out a part for α")
        arch_src, arch_tgt = train_src[cut:], train_tgt[cut:]
        train_src, train_tgt = train_src[:cut], train_tgt[:cut]
    eval_src, eval_tgt = load_parallel_text(
        args.dataset, args.src_lang, args.tgt_lang, args.eval_split, args.dataset_config, args.max_eval_examples
    )
    if args.resume_from_checkpoint:
        resume_path = find_checkpoint(output_dir, args.resume_from_checkpoint)  # fail now, not after setup

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    threads = args.num_threads or max(1, (os.cpu_count() or 1) // accelerator.num_processes)
    torch.set_num_threads(threads)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)  # left by a run killed mid-write
    accelerator.wait_for_everyone()

    # ---- tokenizer: trained once (main process), reused on resume so ids never change ---------------
    tok_dir = output_dir / "tokenizer"
    if accelerator.is_main_process and not (tok_dir / "tokenizer.json").is_file():
        with atomic_folder(tok_dir) as tmp:
            save_tokenizer(get_tokenizer(train_src + train_tgt + arch_src + arch_tgt, args.vocab_size), tmp)
    accelerator.wait_for_everyone()
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    pad = tokenizer.pad_token_id
    train_ex = tokenize_pairs(tokenizer, train_src, train_tgt, args.max_length)
    arch_ex = tokenize_pairs(tokenizer, arch_src, arch_tgt, args.max_length)
    eval_ex = tokenize_pairs(tokenizer, eval_src, eval_tgt, args.max_length)
    rank, world = accelerator.process_index, accelerator.num_processes
    streams = {
        "train": BatchStream(train_ex, args.max_tokens, args.seed, rank, world, pad_id=pad),
        "arch": BatchStream(arch_ex, args.max_tokens, args.seed + 1, rank, world, pad_id=pad),
    }
    eval_stream = BatchStream(eval_ex, args.max_tokens, 0, rank, world, shuffle=False, pad_id=pad)
    eval_batches = [eval_stream.next() for _ in range(min(args.eval_batches, len(eval_stream)))]

    # ---- supernet and optimisers -----------------------------------------------------------------------
    config = RevDartsConfig(
        vocab_size=len(tokenizer),
        d_model=args.d_model,
        embedding_dim=args.embedding_dim,
        num_heads=args.num_heads,
        encoder_layers=args.encoder_layers,
        decoder_layers=args.decoder_layers,
        dropout=args.dropout,
        label_smoothing=args.label_smoothing,
        reversible=not args.no_reversible,
        max_position_embeddings=max(64, args.max_length + 2),
        pad_token_id=pad,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )
    supernet = RevDartsSupernet(config, args.tie_blocks, encoder_ops, decoder_ops)
    w_opt = make_weight_optimizer(supernet, lr=args.lr)
    a_opt = make_arch_optimizer(supernet, lr=args.arch_lr, weight_decay=args.arch_weight_decay)
    # Not passed through prepare(): AcceleratedScheduler steps once per process per call, which would
    # make the schedule depend on the process count. Registered for checkpointing instead.
    scheduler = inverse_sqrt_schedule(w_opt, args.warmup_steps)
    model, w_opt, a_opt = accelerator.prepare(supernet, w_opt, a_opt)
    state = TrainState(streams)
    accelerator.register_for_checkpointing(scheduler)
    architect = Architect(
        model,
        supernet,
        a_opt,
        second_order=args.second_order,
        backward=accelerator.backward,
        no_sync=lambda: accelerator.no_sync(model),
        all_reduce_mean=lambda t: accelerator.reduce(t, reduction="mean") if world > 1 else t,
    )
    if args.resume_from_checkpoint:
        accelerator.load_state(str(resume_path))
        state.load_state_dict(json.loads((resume_path / "train_state.json").read_text()))
        logger.info(f"resumed from {resume_path} at step {state.step}", main_process_only=True)

    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
    accelerator.init_trackers("search", config=hparams)
    n_w = sum(p.numel() for p in supernet.weight_parameters())
    logger.info(
        f"supernet: {n_w / 1e6:.2f}M weights, {len(supernet.arch_parameters())} α nodes, {world} process(es), "
        f"{len(streams['train'])} train / {len(streams['arch'])} α batches per epoch and process",
        main_process_only=True,
    )

    def to_dev(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(accelerator.device) for k, v in b.items()}

    def record(val_loss: float) -> bool:
        stats, stop = guard.check(supernet, state.step)
        snap = alpha_snapshot(supernet, state.step, val_loss, stats)
        state.history.append(snap)
        accelerator.log(
            {"val_loss": val_loss, "alpha_entropy": snap["entropy"], "param_free_share": stats["param_free_share"]},
            step=state.step,
        )
        if accelerator.is_main_process:
            write_outputs(final=False)
        return stop

    def write_outputs(final: bool) -> None:
        geno = supernet.genotype()
        atomic_write_text(output_dir / "genotype.json", json.dumps(geno, indent=1))
        atomic_write_text(output_dir / "alpha_history.json", json.dumps(state.history))
        if final:
            derived = supernet.derive_config()
            (output_dir / "derived_config").mkdir(exist_ok=True)
            atomic_write_text(output_dir / "derived_config" / "config.json", derived.to_json_string())
            if not args.no_figures and state.history:
                plot_heatmap(state.history, supernet, output_dir / "alpha_heatmap.png")
                plot_genotype(geno, output_dir / "genotype.png")

    kill_at = int(os.environ.get("REVDARTS_TEST_SIGKILL_AT_STEP", "0"))  # test hook: simulate a crash
    accum = args.gradient_accumulation_steps
    if state.step == 0 and not state.history:
        record(evaluate_loss(model, accelerator, eval_batches))
    model.train()
    bar = tqdm(total=args.max_steps, initial=state.step, disable=not accelerator.is_local_main_process, desc="search")
    start = time.time()
    while state.step < args.max_steps and not state.stopped_early:
        lr = scheduler.get_last_lr()[0]
        train_mbs = [to_dev(streams["train"].next()) for _ in range(accum)]
        arch_loss = float("nan")
        if state.step >= args.arch_start_step:
            arch_mbs = [to_dev(streams["arch"].next()) for _ in range(accum)]
            with accelerator.autocast():
                arch_loss = architect.step(arch_mbs, train_mbs, unrolled_lr=lr)
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        train_loss = 0.0
        for i, batch in enumerate(train_mbs):
            ctx = accelerator.no_sync(model) if i < accum - 1 else _null()
            with ctx:
                loss = model(**batch).loss
                accelerator.backward(loss / accum)
            train_loss += float(loss.detach()) / accum
        if args.max_grad_norm > 0:
            accelerator.clip_grad_norm_(supernet.weight_parameters(), args.max_grad_norm)
        w_opt.step()
        scheduler.step()
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)  # the θ backward also reached α; α moves only on held-out data
        state.step += 1
        bar.update(1)
        bar.set_postfix(train=f"{train_loss:.3f}", arch=f"{arch_loss:.3f}")
        accelerator.log({"train_loss": train_loss, "arch_loss": arch_loss, "lr": lr}, step=state.step)
        if state.step % args.eval_every == 0 or state.step == args.max_steps:
            if record(evaluate_loss(model, accelerator, eval_batches)):
                state.stopped_early = True
        if state.step % args.save_every == 0 or state.step == args.max_steps or state.stopped_early:
            save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit)
        if kill_at and state.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    alphas = {n: a.detach().cpu().tolist() for n, a in supernet.named_arch_parameters()}
    if world > 1:
        atomic_write_text(output_dir / f"arch_parameters.rank{rank}.json", json.dumps(alphas))
        flat = torch.cat([a.detach().flatten() for a in supernet.arch_parameters()])
        gathered = accelerator.gather(flat.unsqueeze(0))
        rank_diff = float((gathered - gathered[0:1]).abs().max())
    else:
        rank_diff = 0.0
    if accelerator.is_main_process:
        atomic_write_text(output_dir / "arch_parameters.json", json.dumps(alphas))
        write_outputs(final=True)
        first, last = state.history[0], state.history[-1]
        summary = {
            "steps": state.step,
            "stopped_early": state.stopped_early,
            "processes": world,
            "seconds": time.time() - start,
            "val_loss_first": first["val_loss"],
            "val_loss_last": last["val_loss"],
            "alpha_entropy_first": first["entropy"],
            "alpha_entropy_last": last["entropy"],
            "alpha_max_abs_diff_across_ranks": rank_diff,
            "genotype": supernet.genotype(),
        }
        atomic_write_text(output_dir / "search_summary.json", json.dumps(summary, indent=1))
        print(json.dumps(summary))
    accelerator.end_training()
    shutdown(accelerator)
    return 0


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
