#!/usr/bin/env python
"""Predicted vs measured activation memory of a training step: ``hf_revdarts.estimate_memory`` against the step.

Every configuration (model or supernet, d_model, depth) runs in a FRESH subprocess (this script with
``--worker``). The worker builds the network once (train mode, dropout 0.1) and, for each memory mode in turn
(``hf_revdarts.memory.apply_memory_mode``: same weights), runs a warm-up step and then measures a real step with
the gradient buffers kept (``zero_grad(set_to_none=False)``: they are part of the baseline, as the planner's
"activation" excludes them) and the model output held through backward (as the training loops do); the prediction
is told how many target positions carry a label, which is what the chunked LM head (the default) works on:

* torch-level (the figure compared): the step under ``hf_revdarts.memory.LiveTensorBytes``, a dispatch mode that
  counts every new tensor storage until it is freed. Its peak is what ``torch.cuda.max_memory_allocated`` minus
  the starting allocation reports on a GPU (without the caching allocator's rounding). It is deterministic and
  independent of what ran before in the process, so the modes can share one.
* RSS, for reference (``--rss``: then one fresh process per mode, ``MALLOC_MMAP_THRESHOLD_=131072`` as in
  ``memory_core.py``): VmHWM after resetting it via ``/proc/self/clear_refs``, minus VmRSS before the step. It
  matches the torch-level figure when the step's tensors are large, but glibc serves blocks under its mmap
  threshold (128 KiB) from a heap it keeps after a free, so with small tensors (a supernet split at d=96 with a
  small batch) a step's RSS growth depends on what earlier steps left: the first real step can show more than
  twice the live bytes, a later one half of them. That is why the torch-level measure is the reference here.

Prints a table and the largest relative error; target: within +-15%. CPU figures; MB = 10^6 bytes.

    python benchmarks/memory_planner.py            # default grid, a few minutes with 1 thread
    python benchmarks/memory_planner.py --full     # d_model 96..480 x 2/6/12 layers x model/supernet (long)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
MODES = ("ordinary", "hybrid", "checkpoint", "reversible")
DEFAULT_GRID = [("model", 96, 2), ("model", 288, 6), ("model", 480, 12), ("supernet", 96, 12), ("supernet", 480, 2),
                ("supernet", 192, 6)]


def build(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
    from hf_revdarts.search import RevDartsSupernet

    torch.manual_seed(0)
    config = RevDartsConfig(
        vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads, encoder_layers=args.layers,
        decoder_layers=args.layers, dropout=0.1, attention_dropout=args.attention_dropout, activation_dropout=0.0,
        max_position_embeddings=max(64, args.length),
    )
    model = RevDartsSupernet(config) if args.kind == "supernet" else RevDartsForConditionalGeneration(config)
    model.train()
    return config, model


def worker(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    from memory_core import PeakMeter, make_batch, rss_bytes

    from hf_revdarts.memory import LiveTensorBytes, apply_memory_mode, estimate_memory

    torch.set_num_threads(args.threads)
    meter = PeakMeter() if args.rss else None
    config, model = build(args)
    params = sum(p.numel() for p in model.parameters()) * 4
    warm = make_batch(1, 4, args.vocab, args.seed)
    batch = make_batch(args.batch, args.length, args.vocab, args.seed + 1)

    def step(b: dict) -> None:
        model.zero_grad(set_to_none=False)
        out = model(**b)  # held through backward, like the training loops' outputs
        out.loss.backward()
        del out

    rows = []
    for mode in args.modes:
        apply_memory_mode(model, mode, args.layers // 2)
        step(warm)
        rss = float("nan")
        if meter is not None:  # the first real step, as memory_core.py measures it
            model.zero_grad(set_to_none=False)
            gc.collect()
            base = rss_bytes()
            meter.reset()
            step(batch)
            rss = meter.peak() - base
        model.zero_grad(set_to_none=False)
        gc.collect()
        t0 = time.process_time()
        step(batch)
        cpu_s = time.process_time() - t0
        live = LiveTensorBytes()
        with live:
            step(batch)
        est = estimate_memory(config, args.batch, args.length, args.length, mode=mode,
                              supernet=args.kind == "supernet", keep_layers=args.layers // 2,
                              labelled_tokens=int((batch["labels"] != -100).sum()))
        rows.append({"kind": args.kind, "d_model": args.d_model, "layers": args.layers, "mode": mode,
                     "keep_layers": est.keep_layers, "measured": live.peak, "rss": rss, "cpu_s": cpu_s,
                     "predicted": est.activation_bytes, "peak_at": est.peak_at, "params_measured": params,
                     "params_predicted": est.parameter_bytes})
    return rows


def run_worker(args: argparse.Namespace, kind: str, d: int, layers: int, modes: list[str]) -> list[dict[str, Any]]:
    cmd = [sys.executable, __file__, "--worker", "--kind", kind, "--d_model", str(d), "--layers", str(layers),
           "--modes", *modes, "--heads", str(args.supernet_heads if kind == "supernet" else args.heads)]
    for k in ("batch", "length", "vocab", "threads", "seed", "attention_dropout"):
        cmd += [f"--{k}", str(getattr(args, k))]
    cmd += ["--rss"] if args.rss else []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000)
    if proc.returncode:
        raise RuntimeError(f"worker {kind} d={d} L={layers} {modes} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="d_model 96/192/288/480 x 2/6/12 layers, model and supernet")
    p.add_argument("--grid", nargs="*", default=None, help="entries kind:d_model:layers, e.g. supernet:192:6")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=32, help="source and target length (right-padded batches)")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--heads", type=int, default=8, help="heads of the model (supernet: --supernet_heads)")
    p.add_argument("--supernet_heads", type=int, default=2)
    p.add_argument("--attention_dropout", type=float, default=0.0, help="0 as in the training scripts (flash "
                   "attention on CPU); > 0 selects the math kernel, which keeps the attention matrices")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss", action="store_true", help="also measure RSS, one fresh process per mode (slower)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", default="model", help=argparse.SUPPRESS)
    p.add_argument("--d_model", type=int, default=96, help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.grid:
        grid = [(k, int(d), int(L)) for k, d, L in (g.split(":") for g in args.grid)]
    elif args.full:
        grid = [(k, d, L) for k in ("model", "supernet") for d in (96, 192, 288, 480) for L in (2, 6, 12)]
    else:
        grid = DEFAULT_GRID
    print(f"CPU, {args.threads} thread(s); batch {args.batch} x {args.length} (right-padded), vocab {args.vocab}, "
          f"dropout 0.1, attention_dropout {args.attention_dropout}; heads: model {args.heads}, supernet "
          f"{args.supernet_heads}; hybrid keeps the top L/2 layers; MB = 1e6 B", flush=True)
    hdr = (f"{'kind':<9}{'d':>5}{'L':>4} {'mode':<11}{'predicted':>10}{'measured':>10}{'pred/meas':>10}"
           f"{'RSS':>9}{'cpu s':>8}  peak in (predicted)")
    print(hdr + "\n" + "-" * len(hdr), flush=True)
    rows, t0 = [], time.time()
    for kind, d, layers in grid:
        batches = [[m] for m in args.modes] if args.rss else [args.modes]
        for modes in batches:
            for r in run_worker(args, kind, d, layers, modes):
                rows.append(r)
                assert r["params_predicted"] == r["params_measured"], r
                print(f"{kind:<9}{d:>5}{layers:>4} {r['mode']:<11}{r['predicted'] / 1e6:>10.1f}"
                      f"{r['measured'] / 1e6:>10.1f}{r['predicted'] / r['measured']:>10.3f}{r['rss'] / 1e6:>9.1f}"
                      f"{r['cpu_s']:>8.2f}  {r['peak_at']}", flush=True)
    errors = [r["predicted"] / r["measured"] - 1 for r in rows]
    worst = max(errors, key=abs)
    inside = sum(abs(e) <= 0.15 for e in errors)
    print("\npredicted = hf_revdarts.estimate_memory(...).activation_bytes; measured = peak of live tensor bytes "
          "during the step above the start (LiveTensorBytes); RSS = VmHWM - VmRSS before, first real step "
          "(reference only, --rss); cpu s = process CPU time of one step. Parameter counts predicted exactly.")
    print(f"{inside}/{len(rows)} within +-15%; worst error {worst:+.1%}; mean |error| "
          f"{sum(abs(e) for e in errors) / len(errors):.1%}; total {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
