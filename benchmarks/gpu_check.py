#!/usr/bin/env python
"""GPU check: the widest supernet d_model whose training step fits a memory budget (default 16 GB), per memory mode
(reversible, ordinary, per-layer checkpointing, hybrid with the top half of the layers kept), and step times.

Measured with ``torch.cuda.max_memory_allocated``, reset before the supernet is built: the figure is everything
a search step needs — weights, gradients, both Adam optimisers' state and the activation peak — over two full
steps (forward, backward, θ and α updates). The process's allocator is also capped at the budget
(``set_per_process_memory_fraction``), so an out-of-memory error counts as "does not fit".

Search per mode: start at the planner's prediction (``hf_revdarts.memory.widest_d_model``, device "cuda"), then
walk in steps of ``d_model_step`` (48 with 8 heads) up while it fits, down until it fits. Every probe also logs
the planner's predicted total next to the measured one (a check of the planner on a GPU). Then the step time of
every mode at one common width (the widest ordinary fits, else the narrowest probed), interleaved.

``--dry-run`` runs the same logic on CPU at toy size (live tensor bytes instead of the CUDA counters), to test it
without a GPU. Figures go to ``--out`` (default $OUT) as gpu_check.json and gpu_check.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hf_revdarts import RevDartsConfig  # noqa: E402
from hf_revdarts.memory import (  # noqa: E402
    LiveTensorBytes,
    apply_memory_mode,
    d_model_step,
    estimate_memory,
    format_bytes,
    parse_memory_size,
    widest_d_model,
)
from hf_revdarts.search import RevDartsSupernet  # noqa: E402

MODES = ("reversible", "ordinary", "checkpoint", "hybrid")


class Probe:
    """One supernet at one width and mode: two search steps, peak memory since before it was built."""

    def __init__(self, a: argparse.Namespace, d: int, mode: str) -> None:
        self.a, self.d, self.mode = a, d, mode
        self.config = RevDartsConfig(
            vocab_size=a.vocab, d_model=d, embedding_dim=a.embedding_dim, num_heads=a.heads,
            encoder_layers=a.layers, decoder_layers=a.layers, dropout=0.1, max_position_embeddings=max(64, a.length),
        )

    def predicted(self) -> int:
        return estimate_memory(self.config, self.a.batch, self.a.length, self.a.length, mode=self.mode,
                               supernet=True, keep_layers=self.a.layers // 2, device=self.a.device_kind,
                               optimizer_foreach=True, **self.a.space).total_bytes

    def run(self, steps: int = 2) -> dict[str, Any]:
        a, device = self.a, torch.device(self.a.device)
        meter = LiveTensorBytes() if device.type == "cpu" else None
        if meter is None:
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            start = torch.cuda.memory_allocated(device)
        else:
            meter.__enter__()
        times: list[float] = []
        fits, error = True, ""
        try:
            torch.manual_seed(0)
            with device:
                model = RevDartsSupernet(self.config, **a.space).train()
            apply_memory_mode(model, self.mode, a.layers // 2)
            # foreach: the CUDA default (temporaries the size of all parameters), and few dispatches on CPU
            w_opt = torch.optim.Adam(model.weight_parameters(), lr=1e-4, foreach=True)
            a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, foreach=True)
            g = torch.Generator().manual_seed(1)
            batch = {"input_ids": torch.randint(4, a.vocab, (a.batch, a.length), generator=g),
                     "attention_mask": torch.ones(a.batch, a.length, dtype=torch.long),
                     "labels": torch.randint(4, a.vocab, (a.batch, a.length), generator=g)}
            batch = {k: v.to(device) for k, v in batch.items()}
            for _ in range(steps):
                _sync(device)
                t0 = time.perf_counter()
                for opt in (w_opt, a_opt):  # first-order DARTS: a θ step and an α step, each forward + backward
                    w_opt.zero_grad(set_to_none=True)
                    a_opt.zero_grad(set_to_none=True)
                    out = model(**batch)
                    out.loss.backward()
                    opt.step()
                    del out
                _sync(device)
                times.append(time.perf_counter() - t0)
            del model, w_opt, a_opt, batch
        except torch.OutOfMemoryError as err:  # capped at the budget
            fits, error = False, str(err).splitlines()[0][:200]
        finally:
            if meter is not None:
                meter.__exit__(None, None, None)
        peak = meter.peak if meter is not None else torch.cuda.max_memory_allocated(device) - start
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        fits = fits and peak <= a.budget_bytes
        return {"mode": self.mode, "d_model": self.d, "fits": fits, "measured_bytes": int(peak),
                "predicted_bytes": self.predicted(), "step_s": times[-1] if times else None, "error": error}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def widest(a: argparse.Namespace, mode: str, deadline: float, log: list) -> dict[str, Any]:
    step = d_model_step(RevDartsConfig(num_heads=a.heads, d_model=a.heads * 6))
    guess = widest_d_model(
        RevDartsConfig(vocab_size=a.vocab, d_model=step, embedding_dim=a.embedding_dim, num_heads=a.heads,
                       encoder_layers=a.layers, decoder_layers=a.layers),
        a.batch, a.length, a.length, a.budget_bytes, mode=mode, supernet=True, keep_layers=a.layers // 2,
        device=a.device_kind, max_d_model=a.max_d, optimizer_foreach=True, **a.space,
    ) or step
    probes: dict[int, dict] = {}

    def probe(d: int) -> dict:
        if d not in probes:
            r = Probe(a, d, mode).run()
            probes[d] = r
            log.append(r)
            print(f"  {mode:<10} d={d:>5}: {'fits' if r['fits'] else 'does not fit':<13} measured "
                  f"{format_bytes(r['measured_bytes']):>10}  predicted {format_bytes(r['predicted_bytes']):>10}  "
                  f"step {r['step_s'] or float('nan'):.3f} s {r['error']}", flush=True)
        return probes[d]

    d, best = guess, None
    if probe(d)["fits"]:
        best = d
        while d + step <= a.max_d and time.time() < deadline and probe(d + step)["fits"]:
            d += step
            best = d
    else:
        while d - step >= step and time.time() < deadline:
            d -= step
            if probe(d)["fits"]:
                best = d
                break
    # complete: the next width up was measured not to fit (or is past --max_d), or nothing fits down to one step
    above = None if best is None else best + step
    complete = (best is None and d == step) or (above is not None and (above > a.max_d or
                                                                     (above in probes and not probes[above]["fits"])))
    return {"mode": mode, "widest_d_model": best, "planner_guess": guess, "complete": bool(complete),
            "at_widest": probes.get(best) if best else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="16GB")
    p.add_argument("--layers", type=int, default=6, help="per stack")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64, help="source and target length")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--embedding_dim", type=int, default=256, help="factorised embedding, as the paper's search")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--max_d", type=int, default=2400)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--time_limit", type=float, default=420.0, help="seconds for the search (the script stops probing)")
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: tests the logic without a GPU")
    a = p.parse_args()
    if a.dry_run:
        a.device, a.budget, a.layers, a.batch, a.length, a.vocab = "cpu", a.budget if a.budget != "16GB" else "5MB", \
            2, 4, 12, 300
        a.embedding_dim, a.heads, a.max_d, a.time_limit = 32, 2, 120, min(a.time_limit, 240)
        # one op of each kind keeps the CPU run short (the meter costs Python time per op)
        a.space = {"encoder_ops": ["conv_3", "dynconv_3", "self_attn", "ffn", "identity"],
                   "decoder_ops": ["glu", "self_attn", "zero"]}
    else:
        a.space = {}
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --dry-run to test the script on CPU")
        a.device = "cuda"
        total = torch.cuda.get_device_properties(0).total_memory
        budget = parse_memory_size(a.budget)
        if budget > total:
            sys.exit(f"budget {a.budget} exceeds the device's {format_bytes(total)}")
        torch.cuda.set_per_process_memory_fraction(budget / total)
    a.device_kind = "cuda" if a.device == "cuda" else "cpu"
    a.budget_bytes = parse_memory_size(a.budget)
    card = torch.cuda.get_device_name(0) if a.device == "cuda" else "CPU (dry run)"
    print(f"{card}: budget {a.budget}, supernet {a.layers}+{a.layers} layers, batch {a.batch} x {a.length}, vocab "
          f"{a.vocab}, embedding {a.embedding_dim}, {a.heads} heads, torch {torch.__version__}", flush=True)
    t0 = time.time()
    deadline = t0 + a.time_limit * 0.75  # the rest for the common-width timing
    log: list[dict] = []
    results: dict[str, dict] = {}
    timing: dict[str, list[float]] = {}
    for m in a.modes:
        results[m] = widest(a, m, deadline, log)
        write_report(a, card, results, log, None, timing, t0)  # partial figures survive a timeout
    fitting = [r["widest_d_model"] for r in results.values() if r["widest_d_model"]]
    common = results.get("ordinary", {}).get("widest_d_model") or (min(fitting) if fitting else None)
    if common:
        probes = {m: Probe(a, common, m) for m in a.modes}
        for _ in range(1 if a.dry_run else 2):  # interleaved rounds
            for m, pr in probes.items():
                if time.time() > t0 + a.time_limit:
                    break
                r = pr.run(steps=3)
                if r["step_s"] is not None and r["fits"]:
                    timing.setdefault(m, []).append(r["step_s"])
    lines = write_report(a, card, results, log, common, timing, t0)
    print("\n".join(lines))
    print(f"\nwrote {Path(a.out) / 'gpu_check.json'} and gpu_check.md ({time.time() - t0:.0f} s)")


def write_report(a: argparse.Namespace, card: str, results: dict, log: list, common: int | None,
                 timing: dict[str, list[float]], t0: float) -> list[str]:
    at_common = {m: statistics.median(v) for m, v in timing.items()}
    report = {"card": card, "torch": torch.__version__, "settings": {k: getattr(a, k) for k in (
        "budget", "layers", "batch", "length", "vocab", "embedding_dim", "heads", "max_d", "space")},
        "widest": results, "probes": log, "common_d_model": common, "step_s_at_common": at_common,
        "seconds": time.time() - t0}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    lines = [f"### Widest supernet d_model in {a.budget} ({card})", "",
             f"{a.layers}+{a.layers} layers, batch {a.batch} x {a.length} tokens, vocab {a.vocab}, factorised embedding "
             f"{a.embedding_dim}, {a.heads} heads; weights + gradients + Adam (θ and α) + activations, "
             f"{'torch.cuda.max_memory_allocated' if a.device == 'cuda' else 'live tensor bytes'}; one search step "
             "= a θ step and an α step.", "",
             f"| mode | widest d_model | measured | planner predicted | step s (at widest) | step s at d={common} |",
             "|---|---|---|---|---|---|"]
    for m, r in results.items():
        w, t = r["at_widest"], at_common.get(m)
        cells = [m + (" (top half kept)" if m == "hybrid" else ""),
                 f"{r['widest_d_model'] or 'none'}{'' if r['complete'] else ' (search cut short)'}",
                 format_bytes(w["measured_bytes"]) if w else "-", format_bytes(w["predicted_bytes"]) if w else "-",
                 f"{w['step_s']:.3f}" if w and w["step_s"] else "-", f"{t:.3f}" if t else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    return lines

if __name__ == "__main__":
    main()
