#!/usr/bin/env python
"""Train a RevDarts translation model from a genotype (a search's output, or a named preset).

One process:      python training/train.py --genotype runs/search --output_dir runs/train
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
``--time_budget_minutes`` stops training (with a final evaluation) when the wall-clock budget is spent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
    atomic_write_json,
    bleu_and_chrf,
    evaluate_loss,
    find_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    shutdown,
    translate,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=str(SAMPLE_DATA), help="local {split}.{lang}[.gz] folder or Hub dataset id")
    d.add_argument("--dataset_config", default=None, help="Hub dataset configuration, e.g. de-en for wmt14")
    d.add_argument("--src_lang", default="en")
    d.add_argument("--tgt_lang", default="de")
    d.add_argument("--train_split", default="train")
    d.add_argument("--eval_split", default="validation")
    d.add_argument("--max_train_examples", type=int, default=None)
    d.add_argument("--max_eval_examples", type=int, default=500)
    d.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the search's, else train one)")
    d.add_argument("--vocab_size", type=int, default=8000, help="when a tokenizer is trained here")
    d.add_argument("--max_length", type=int, default=64, help="tokens per sentence after truncation")
    d.add_argument("--max_tokens", type=int, default=2048, help="padded tokens per batch and process")
    m = p.add_argument_group("model")
    m.add_argument("--genotype", default="standard", help="search output folder, genotype.json, or 'standard'")
    m.add_argument("--d_model", type=int, default=192)
    m.add_argument("--embedding_dim", type=int, default=None)
    m.add_argument("--num_heads", type=int, default=4)
    m.add_argument("--encoder_layers", type=int, default=None, help="default: the genotype's")
    m.add_argument("--decoder_layers", type=int, default=None, help="default: the genotype's")
    m.add_argument("--dropout", type=float, default=0.1)
    m.add_argument("--label_smoothing", type=float, default=0.1)
    m.add_argument("--reversible", action="store_true", help="backprop-with-reconstruction (memory-efficient)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--max_steps", type=int, default=1000)
    o.add_argument("--time_budget_minutes", type=float, default=0.0, help="stop after this much training time")
    o.add_argument("--lr", type=float, default=1e-3, help="peak lr of the inverse-sqrt schedule")
    o.add_argument("--warmup_steps", type=int, default=200)
    o.add_argument("--gradient_accumulation_steps", type=int, default=1)
    o.add_argument("--max_grad_norm", type=float, default=1.0)
    o.add_argument("--mixed_precision", default=None, choices=["no", "bf16", "fp16"], help="default: accelerate's")
    o.add_argument("--seed", type=int, default=0)
    r = p.add_argument_group("run")
    r.add_argument("--output_dir", required=True)
    r.add_argument("--eval_every", type=int, default=200)
    r.add_argument("--bleu_sentences", type=int, default=200, help="validation sentences translated per evaluation")
    r.add_argument("--save_every", type=int, default=500)
    r.add_argument("--checkpoints_total_limit", type=int, default=2)
    r.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    r.add_argument("--num_threads", type=int, default=0, help="torch threads per process (0: cores / processes)")
    args = p.parse_args(argv)
    for name in ("max_steps", "eval_every", "save_every", "gradient_accumulation_steps", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def load_genotype(spec: str) -> tuple[dict[str, list[list[str]]] | None, Path | None]:
    """(genotype or None for the standard preset, the search folder it came from if any)."""
    if spec == "standard":
        return None, None
    path = Path(spec)
    folder = path if path.is_dir() else None
    if folder is not None:
        path = folder / "genotype.json"
    if not path.is_file():
        raise FileNotFoundError(f"--genotype {spec}: no genotype.json there; give a search output folder, a "
                                "genotype.json file, or 'standard'")
    try:
        genotype = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(genotype, dict) or set(genotype) != {"encoder", "decoder"}:
        raise ValueError(f"{path} must hold {{'encoder': [[...]], 'decoder': [[...]]}}, got keys {list(genotype)}")
    return genotype, folder


def stack_genotype(layers: list[list[str]], depth: int | None, side: str) -> list[list[str]]:
    """Repeat a searched block of s layers to reach ``depth`` layers (the paper stacks its s=2 block)."""
    if depth is None or depth == len(layers):
        return [list(x) for x in layers]
    if depth % len(layers):
        raise ValueError(
            f"--{side}_layers={depth} is not a multiple of the genotype's {len(layers)} {side} layers; the "
            "genotype is stacked as a repeated block"
        )
    return [list(x) for _ in range(depth // len(layers)) for x in layers]


def build_config(args: argparse.Namespace, tokenizer: Any, genotype: dict | None) -> Any:
    from hf_revdarts import RevDartsConfig, standard_genotype

    if genotype is None:
        genotype = standard_genotype(args.encoder_layers or 6, args.decoder_layers or 6)
    enc = stack_genotype(genotype["encoder"], args.encoder_layers, "encoder")
    dec = stack_genotype(genotype["decoder"], args.decoder_layers, "decoder")
    return RevDartsConfig(
        vocab_size=len(tokenizer),
        d_model=args.d_model,
        embedding_dim=args.embedding_dim,
        num_heads=args.num_heads,
        encoder_layers=len(enc),
        decoder_layers=len(dec),
        encoder_genotype=enc,
        decoder_genotype=dec,
        dropout=args.dropout,
        label_smoothing=args.label_smoothing,
        reversible=args.reversible,
        max_position_embeddings=max(128, args.max_length + 2),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.bos_token_id,
    )


def save_model_folder(model: Any, tokenizer: Any, folder: Path, extra: dict[str, Any]) -> None:
    """A complete, loadable model folder (weights, config, generation config, modeling code, tokenizer)."""
    from hf_revdarts.tokenization import save_tokenizer

    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
        atomic_write_json(tmp / "training_state.json", extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm
    from transformers import PreTrainedTokenizerFast

    from hf_revdarts import RevDartsForConditionalGeneration
    from hf_revdarts.data import BatchStream, tokenize_pairs, get_tokenizer, load_parallel_text
    from hf_revdarts.tokenization import save_tokenizer
    from hf_revdarts.search.architect import inverse_sqrt_schedule

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger = get_logger("revdarts.train")
    output_dir = Path(args.output_dir)

    # ---- every input check before any work --------------------------------------------------------
    genotype, search_dir = load_genotype(args.genotype)
    train_src, train_tgt = load_parallel_text(
        args.dataset, args.src_lang, args.tgt_lang, args.train_split, args.dataset_config, args.max_train_examples
    )
    eval_src, eval_tgt = load_parallel_text(
        args.dataset, args.src_lang, args.tgt_lang, args.eval_split, args.dataset_config, args.max_eval_examples
    )
    tok_source = Path(args.tokenizer) if args.tokenizer else (search_dir / "tokenizer" if search_dir else None)
    if tok_source is not None and not (tok_source / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer folder {tok_source} has no tokenizer.json")
    if args.resume_from_checkpoint:
        resume_path = find_checkpoint(output_dir, args.resume_from_checkpoint)

    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    torch.set_num_threads(args.num_threads or max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(output_dir)
    accelerator.wait_for_everyone()

    # ---- tokenizer: reused from the search (same ids) or trained once and kept for resume ------------
    tok_dir = output_dir / "tokenizer"
    if accelerator.is_main_process and not (tok_dir / "tokenizer.json").is_file():
        tokenizer = (
            PreTrainedTokenizerFast.from_pretrained(str(tok_source))
            if tok_source is not None
            else get_tokenizer(train_src + train_tgt, args.vocab_size)
        )
        with atomic_folder(tok_dir) as tmp:
            save_tokenizer(tokenizer, tmp)
    accelerator.wait_for_everyone()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    train_ex = tokenize_pairs(tokenizer, train_src, train_tgt, args.max_length)
    eval_ex = tokenize_pairs(tokenizer, eval_src, eval_tgt, args.max_length)
    rank, world = accelerator.process_index, accelerator.num_processes
    pad = tokenizer.pad_token_id
    streams = {"train": BatchStream(train_ex, args.max_tokens, args.seed, rank, world, pad_id=pad)}
    eval_stream = BatchStream(eval_ex, args.max_tokens, 0, rank, world, shuffle=False, pad_id=pad)
    eval_batches = [eval_stream.next() for _ in range(len(eval_stream))]
    bleu_src, bleu_ref = eval_src[: args.bleu_sentences], eval_tgt[: args.bleu_sentences]

    # ---- model and optimiser ---------------------------------------------------------------------
    config = build_config(args, tokenizer, genotype)
    model = RevDartsForConditionalGeneration(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.98), eps=1e-9)
    scheduler = inverse_sqrt_schedule(optimizer, args.warmup_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    state = TrainState(streams)
    if args.resume_from_checkpoint:
        accelerator.load_state(str(resume_path))
        state.load_state_dict(json.loads((resume_path / "train_state.json").read_text()))
        logger.info(f"resumed from {resume_path} at step {state.step}", main_process_only=True)
    unwrapped = accelerator.unwrap_model(model)
    n_params = sum(p.numel() for p in unwrapped.parameters())
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
    accelerator.init_trackers("train", config=hparams)
    logger.info(
        f"model: {n_params / 1e6:.2f}M parameters, genotype {config.get_genotype()}, {world} process(es), "
        f"{len(streams['train'])} batches per epoch and process",
        main_process_only=True,
    )

    def evaluate_and_keep_best() -> None:
        val_loss = evaluate_loss(model, accelerator, eval_batches)
        entry: dict[str, Any] = {"step": state.step, "val_loss": val_loss, "train_seconds": state.train_seconds}
        if accelerator.is_main_process:
            hyps = translate(unwrapped, tokenizer, bleu_src, num_beams=1, max_new_tokens=args.max_length)
            entry.update(bleu_and_chrf(hyps, bleu_ref))
            entry["example"] = {"source": bleu_src[0], "hypothesis": hyps[0], "reference": bleu_ref[0]}
            if not state.best or entry["bleu"] > state.best["bleu"]:
                state.best = {k: entry[k] for k in ("step", "val_loss", "bleu", "chrf")}
                save_model_folder(unwrapped, tokenizer, output_dir / "best", {"best": state.best, "args": hparams})
            logger.info(f"step {state.step}: val loss {val_loss:.3f}, BLEU {entry['bleu']:.2f} — "
                        f"{hyps[0]!r}", main_process_only=True)
        state.history.append(entry)
        accelerator.log({k: v for k, v in entry.items() if isinstance(v, (int, float))}, step=state.step)
        accelerator.wait_for_everyone()

    budget = args.time_budget_minutes * 60
    model.train()
    bar = tqdm(total=args.max_steps, initial=state.step, disable=not accelerator.is_local_main_process, desc="train")
    tokens_seen = 0
    while state.step < args.max_steps and not state.stopped_early:
        tick = time.time()
        train_loss = 0.0
        for _ in range(args.gradient_accumulation_steps):
            batch = {k: v.to(accelerator.device) for k, v in streams["train"].next().items()}
            tokens_seen += int((batch["labels"] != -100).sum())
            with accelerator.accumulate(model), accelerator.autocast():
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            train_loss += float(loss.detach()) / args.gradient_accumulation_steps
        scheduler.step()
        state.step += 1
        state.train_seconds += time.time() - tick
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tokens_seen / max(state.train_seconds, 1e-9):.0f}")
        accelerator.log({"train_loss": train_loss, "lr": scheduler.get_last_lr()[0]}, step=state.step)
        out_of_time = budget > 0 and state.train_seconds >= budget
        if out_of_time:
            state.stopped_early = True
        if state.step % args.eval_every == 0 or state.step == args.max_steps or out_of_time:
            evaluate_and_keep_best()
        if state.step % args.save_every == 0 or state.step == args.max_steps or out_of_time:
            save_checkpoint(accelerator, output_dir, state, args.checkpoints_total_limit)
    bar.close()
    if accelerator.is_main_process:
        summary = {
            "steps": state.step,
            "train_seconds": round(state.train_seconds, 1),
            "stopped_by_time_budget": state.stopped_early,
            "parameters": n_params,
            "genotype": config.get_genotype(),
            "best": state.best,
            "history": state.history,
            "processes": world,
        }
        atomic_write_json(output_dir / "train_summary.json", summary)
        print(json.dumps({k: summary[k] for k in ("steps", "train_seconds", "best", "parameters")}))
    accelerator.end_training()
    shutdown(accelerator)
    return 0


if __name__ == "__main__":
    sys.exit(main())
