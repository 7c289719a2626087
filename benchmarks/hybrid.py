#!/usr/bin/env python
"""Hybrid memory mode: step time and activation memory at a budget, vs ordinary autograd and checkpointing.

For each budget (a fraction of ordinary autograd's activation memory) the planner's rule picks the number k of
top layers per stack that keep their activations: the largest k whose predicted activation peak
(``hf_revdarts.estimate_memory(..., mode="hybrid", keep_layers=k)``) fits. The script then measures, in ONE
process with 1 thread (same weights, ``apply_memory_mode`` between steps):

* activation memory of a step: peak of live tensor bytes above the start (``LiveTensorBytes``; gradient buffers
  kept, so they are baseline), for ordinary, per-layer checkpointing, reversible and each hybrid k;
* step time (forward + backward): ``--repeats`` rounds after a warm-up round, every configuration once per
  round, the order rotated each round (so load drifts on a shared machine hit all of them alike); reported as
  the median of process CPU time (less disturbed by other processes than wall time) and the minimum wall time.

    python benchmarks/hybrid.py                     # model, d_model 192, 6+6 layers, batch 16 x 32
    python benchmarks/hybrid.py --supernet --d_model 96 --layers 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--supernet", action="store_true")
    p.add_argument("--d_model", type=int, default=192)
    p.add_argument("--layers", type=int, default=6, help="per stack (encoder and decoder)")
    p.add_argument("--heads", type=int, default=None, help="default 8 (model) / 2 (supernet)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                   help="fractions of ordinary autograd's activation memory")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args()

    import torch
    from memory_core import make_batch

    from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration, estimate_memory
    from hf_revdarts.memory import LiveTensorBytes, apply_memory_mode
    from hf_revdarts.search import RevDartsSupernet

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    heads = a.heads or (2 if a.supernet else 8)
    config = RevDartsConfig(vocab_size=a.vocab, d_model=a.d_model, num_heads=heads, encoder_layers=a.layers,
                            decoder_layers=a.layers, dropout=0.1, max_position_embeddings=max(64, a.length))
    model = (RevDartsSupernet(config) if a.supernet else RevDartsForConditionalGeneration(config)).train()
    batch = make_batch(a.batch, a.length, a.vocab, 1)

    def predicted(mode: str, keep: int = 0) -> int:
        return estimate_memory(config, a.batch, a.length, a.length, mode=mode, supernet=a.supernet,
                               keep_layers=keep).activation_bytes

    ordinary = predicted("ordinary")
    budget_k: dict[float, int | None] = {}
    for frac in a.budgets:
        fitting = [k for k in range(a.layers + 1) if predicted("hybrid", k) <= frac * ordinary]
        budget_k[frac] = max(fitting) if fitting else None
    configs = [("ordinary", 0), ("checkpoint", 0), ("reversible", 0)]
    configs += sorted({("hybrid", k) for k in budget_k.values() if k is not None}, key=lambda c: -c[1])

    def step() -> None:
        model.zero_grad(set_to_none=False)
        out = model(**batch)
        out.loss.backward()

    memory: dict[tuple[str, int], int] = {}
    for mode, k in configs:
        apply_memory_mode(model, mode, k)
        step()
        with LiveTensorBytes() as meter:
            step()
        memory[(mode, k)] = meter.peak
    cpu: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    wall: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    t_start = time.time()
    for rnd in range(a.repeats + 1):
        shift = rnd % len(configs)
        for mode, k in configs[shift:] + configs[:shift]:
            apply_memory_mode(model, mode, k)
            c0, w0 = time.process_time(), time.perf_counter()
            step()
            if rnd:  # round 0 is the warm-up
                cpu[(mode, k)].append(time.process_time() - c0)
                wall[(mode, k)].append(time.perf_counter() - w0)

    med = {c: statistics.median(v) for c, v in cpu.items()}
    mn = {c: min(v) for c, v in wall.items()}
    ref_o, ref_c = ("ordinary", 0), ("checkpoint", 0)
    what = "supernet" if a.supernet else "model (self_attn/ffn genotype)"
    print(f"{what}, d_model {a.d_model}, {a.layers}+{a.layers} layers, batch {a.batch} x {a.length}, "
          f"{a.threads} thread(s), {a.repeats} interleaved rounds; MB = 1e6 B")
    hdr = (f"{'budget':>7} {'config':<15}{'pred MB':>9}{'meas MB':>9}{'/ord mem':>9}{'cpu s':>8}"
           f"{'/ord cpu':>9}{'/ckpt cpu':>10}{'/ord wall':>10}{'/ckpt wall':>11}")
    print(hdr + "\n" + "-" * len(hdr))
    rows = []

    def line(label: str, c: tuple[str, int]) -> None:
        name = f"hybrid k={c[1]}" if c[0] == "hybrid" else c[0]
        row = {"budget": label, "config": name, "keep_layers": c[1], "predicted": predicted(*c),
               "measured": memory[c], "cpu_s": med[c], "cpu_vs_ordinary": med[c] / med[ref_o],
               "cpu_vs_checkpoint": med[c] / med[ref_c], "wall_min_s": mn[c],
               "wall_vs_ordinary": mn[c] / mn[ref_o], "wall_vs_checkpoint": mn[c] / mn[ref_c]}
        rows.append(row)
        print(f"{label:>7} {name:<15}{row['predicted'] / 1e6:>9.1f}{memory[c] / 1e6:>9.1f}"
              f"{memory[c] / memory[ref_o]:>9.2f}{med[c]:>8.3f}{row['cpu_vs_ordinary']:>9.2f}"
              f"{row['cpu_vs_checkpoint']:>10.2f}{row['wall_vs_ordinary']:>10.2f}{row['wall_vs_checkpoint']:>11.2f}")

    for c in configs[:3]:
        line("-", c)
    for frac, k in budget_k.items():
        if k is None:
            print(f"{frac:>6.0%}  nothing fits (reversible alone predicts {predicted('reversible') / 1e6:.1f} MB)")
        else:
            line(f"{frac:.0%}", ("hybrid", k))
    print(f"budget = fraction of ordinary's predicted activation peak ({ordinary / 1e6:.1f} MB); k = top layers kept "
          f"per stack (k={a.layers}: all, k=0: reversible); meas = live tensor bytes; cpu s = median process CPU "
          f"time per step; wall = min wall time; timing loop {time.time() - t_start:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
