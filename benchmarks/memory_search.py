#!/usr/bin/env python
"""Supernet activation memory and step time: reversible vs ordinary autograd vs per-layer checkpointing.

Method: every configuration runs in a FRESH subprocess (this script with ``--worker``) whose environment
has ``MALLOC_MMAP_THRESHOLD_=131072``, so glibc returns freed large blocks to the kernel and the resident
set size follows the live tensors. The worker builds a ``RevDartsSupernet`` (untied α, dropout 0.1, every
split a 13/14-op mixture), runs a tiny warm-up step (lazy allocations, gradient buffers), then for each
measured step: ``zero_grad(set_to_none=False)`` (weight-gradient buffers stay allocated, so they are part
of the baseline, not of the activations), ``gc.collect()``, baseline = VmRSS, reset the peak by writing
"5" to ``/proc/self/clear_refs``, run forward+backward, read VmHWM. Activation memory = VmHWM - baseline.

Part 1 prints the table at 2/6/12 layers per stack (encoder and decoder each) for a fixed d_model.
Part 2 finds, per mode, the widest d_model (multiple of 48) whose activation memory fits in
``--budget_mb`` at a fixed batch × length and depth (guess from the d_model measurement, then walk in
steps of 48; activation memory is monotone in d). CPU numbers; MB = 10^6 bytes.

    python benchmarks/memory_search.py            # minutes on idle cores; >15 min on 2 busy shared cores
    python benchmarks/memory_search.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MODES = ("reversible", "ordinary", "checkpoint")
REPO = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    if m is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return int(m.group(1))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def worker(args: argparse.Namespace) -> None:
    import torch

    from hf_revdarts import RevDartsConfig
    from hf_revdarts.search import RevDartsSupernet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = RevDartsConfig(
        vocab_size=args.vocab, d_model=args.d_model, num_heads=args.heads, encoder_layers=args.layers,
        decoder_layers=args.layers, dropout=0.1, max_position_embeddings=max(64, args.length + 1),
        reversible=args.mode == "reversible",
    )
    model = RevDartsSupernet(config)
    model.train()
    if args.mode == "checkpoint":
        for stack in (model.model.encoder.stack, model.model.decoder.stack):
            stack.gradient_checkpointing = True

    def batch(b: int, t: int) -> dict:
        ids = torch.randint(4, args.vocab, (b, t))
        mask = torch.ones_like(ids)
        mask[0, t // 2 :] = 0  # some padding, as in real batches
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(4, args.vocab, (b, t))}

    model(**batch(1, 4)).loss.backward()  # warm-up: allocates .grad buffers, thread pools, kernels
    mems, times, cpu = [], [], []
    for _ in range(args.steps):
        data = batch(args.batch, args.length)
        model.zero_grad(set_to_none=False)
        gc.collect()
        base = _status_kb("VmRSS")
        _reset_peak()
        start, cpu0 = time.perf_counter(), time.process_time()
        model(**data).loss.backward()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu0)  # CPU seconds: less sensitive than wall time to other load
        mems.append((_status_kb("VmHWM") - base) * 1024 / 1e6)
    print(json.dumps({"activation_mb": min(mems), "step_s": min(times), "cpu_s": min(cpu),
                      "params_m": sum(p.numel() for p in model.parameters()) / 1e6}))


def run_worker(mode: str, layers: int, d_model: int, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--mode", mode, "--layers", str(layers), "--d_model", str(d_model),
           "--batch", str(a.batch), "--length", str(a.length), "--heads", str(a.heads), "--vocab", str(a.vocab),
           "--steps", str(a.steps), "--threads", str(a.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(a.threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"worker {mode} L={layers} d={d_model} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def widest(mode: str, a: argparse.Namespace, known: dict | None = None) -> tuple[int, dict]:
    """Largest multiple of 48 (<= --max_d) whose activation memory fits the budget.

    Activation memory grows monotonically with d, so: guess from one measurement (linear in d), then walk
    in steps of 48 up while it fits / down until it fits. Usually 1-3 probes instead of a full bisection,
    which matters because probes at large d are the slow ones.
    """
    probes: dict[int, dict] = {}

    def probe(d: int) -> dict:
        if d not in probes:
            probes[d] = run_worker(mode, a.search_layers, d, a)
            print(f"  probe {mode:10s} d={d:5d}: {probes[d]['activation_mb']:8.1f} MB", flush=True)
        return probes[d]

    ref_d = a.d_model - a.d_model % 48 or 48
    ref = known if known is not None else probe(ref_d)
    probes[ref_d] = ref
    guess = int(ref_d * a.budget_mb / max(ref["activation_mb"], 1e-3)) // 48 * 48
    d = min(max(guess, 48), a.max_d - a.max_d % 48)
    fits = lambda d: probe(d)["activation_mb"] <= a.budget_mb  # noqa: E731
    if fits(d):
        while d + 48 <= a.max_d and fits(d + 48):
            d += 48
        return d, probes[d]
    while d > 48 and not fits(d - 48):
        d -= 48
    return (d - 48, probes[d - 48]) if d > 48 else (0, {})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--mode", choices=MODES, default="reversible")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d_model", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=48)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--depths", default="2,6,12")
    p.add_argument("--search_layers", type=int, default=6, help="depth (per stack) of the widest-d search")
    p.add_argument("--budget_mb", type=float, default=150.0)
    p.add_argument("--max_d", type=int, default=480)
    p.add_argument("--quick", action="store_true", help="depths 2,6 and a smaller search (smoke test)")
    p.add_argument("--json_out", default=None)
    p.add_argument("--modes", default=",".join(MODES), help="modes of the widest-d search")
    p.add_argument("--skip_table", action="store_true", help="only the widest-d search")
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    if a.quick:
        a.depths, a.max_d, a.search_layers, a.steps = "2,6", 384, 2, 1
    t0 = time.time()
    print(f"supernet, d_model={a.d_model}, batch {a.batch} x length {a.length}, {a.threads} threads; "
          "activation MB = peak RSS during step - RSS before", flush=True)
    table = {}
    for layers in [] if a.skip_table else [int(x) for x in a.depths.split(",")]:
        for mode in MODES:
            table[(layers, mode)] = r = run_worker(mode, layers, a.d_model, a)
            print(f"  measured L={layers:2d} {mode:10s}: {r['activation_mb']:8.1f} MB  {r['cpu_s']:6.2f} cpu s", flush=True)
    print(f"\n{'layers':>6} | " + " | ".join(f"{m + ' MB':>15} {'wall s':>7} {'cpu s':>7}" for m in MODES))
    for layers in sorted({k[0] for k in table}):
        row = [
            f"{table[(layers, m)]['activation_mb']:15.1f} {table[(layers, m)]['step_s']:7.2f} "
            f"{table[(layers, m)].get('cpu_s', float('nan')):7.2f}"
            for m in MODES
        ]
        print(f"{layers:>6} | " + " | ".join(row))
    for layers in sorted({k[0] for k in table}):
        r, o = table[(layers, "reversible")], table[(layers, "ordinary")]
        print(f"L={layers}: reversible uses {r['activation_mb'] / o['activation_mb']:.2f}x the ordinary activation memory"
              f" at {r['cpu_s'] / o['cpu_s']:.2f}x its CPU time per step")
    print(f"\nwidest d_model (multiple of 48, <= {a.max_d}) with activations <= {a.budget_mb:.0f} MB at "
          f"{a.search_layers} layers per stack, batch {a.batch} x length {a.length}:", flush=True)
    wide = {}
    modes = [m for m in a.modes.split(",") if m]
    for mode in modes:
        d, r = widest(mode, a, table.get((a.search_layers, mode)) if a.d_model % 48 == 0 else None)
        wide[mode] = {"d_model": d, **r}
    for mode in modes:
        w = wide[mode]
        extra = f"({w['activation_mb']:.1f} MB, {w['step_s']:.2f} s/step)" if "activation_mb" in w else "(none fits)"
        print(f"  {mode:10s} d_model={w['d_model']:5d} {extra}")
    print(f"\ntotal {time.time() - t0:.0f} s")
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"table": {f"{k[0]}:{k[1]}": v for k, v in table.items()}, "widest": wide}))


if __name__ == "__main__":
    main()
