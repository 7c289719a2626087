"""Activation memory and step time of a RevDarts training step: reversible vs ordinary vs checkpointed.

Method
------
For every depth L (``encoder_layers = decoder_layers = L``), every vocabulary size (``--vocab``, default
8000, the size the project trains with: the LM head's batch x length x vocab tensors are then a large part of a
step) and every mode

* ``reversible``  -- ``config.reversible=True`` (backpropagation with reconstruction) and the model's default
  head, the chunked loss (``config.chunked_loss``: no batch x length x vocab tensor),
* ``ordinary``    -- ``config.reversible=False``, ``config.chunked_loss=False``: plain autograd and the full
  LM head (logits, their log-softmax and its gradient), every activation kept -- the baseline,
* ``checkpoint``  -- ``reversible=False`` (chunked head) plus
  ``model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})``
  (per-layer activation checkpointing; the worker checks that each ``ReversibleStack`` got
  ``gradient_checkpointing=True`` and counts the calls of its checkpoint function: 2·L per step),
* ``reversible_full_head`` -- reconstruction with the full head (``chunked_loss=False``), i.e. the reversible
  step before the chunked loss existed: what the head itself costs in memory and time,

the parent process starts a FRESH worker subprocess (this script with ``--worker``) whose environment has
``MALLOC_MMAP_THRESHOLD_=131072``: glibc then serves every allocation above 128 KiB with ``mmap`` and gives
it back to the kernel on ``free``, so the resident set size (RSS) follows the live tensors instead of
glibc's high-water mark. The worker

1. builds ``RevDartsForConditionalGeneration`` (train mode, dropout 0.1, no optimizer),
2. runs one tiny warm-up step (batch 1, length 4) so that lazy allocations (thread pools, kernels,
   ``.grad`` buffers) happen before measuring,
3. for each of ``--steps`` real steps (forward + backward with ``labels`` on a right-padded batch):
   ``zero_grad`` (``--grads keep``: buffers kept and zeroed, so the baseline includes them; ``none``:
   set to None, so the step's peak includes allocating them), ``gc.collect()``, baseline = VmRSS from
   ``/proc/self/status``, reset the peak by writing ``5`` to ``/proc/self/clear_refs`` (resets VmHWM;
   checked at start-up, else a 1 ms VmRSS sampling thread is used), run the step, read VmHWM.
   activation memory = peak RSS during the step - RSS before it; step time = wall-clock time.
4. prints one JSON line: the medians over the steps (and the per-step lists).

The parent prints a table and the ratios the issue asks for. Numbers are CPU numbers (torch uses
``--threads`` threads, default 2); "MB" means 10^6 bytes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

MODES = ("reversible", "ordinary", "checkpoint", "reversible_full_head")


# --------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    assert m is not None, field
    return int(m.group(1))


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


class PeakMeter:
    """Peak RSS since ``reset()``: VmHWM after ``clear_refs``=5 when the kernel supports it, else sampling."""

    def __init__(self) -> None:
        self.uses_hwm = self._clear_refs_works()
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _clear_refs_works(self) -> bool:
        block = bytearray(64 * 1024 * 1024)  # raise VmHWM by 64 MB, free it, then check the reset lowers it
        block[::4096] = b"\1" * len(block[::4096])
        del block
        high = _status_kb("VmHWM")
        return self._reset_hwm() and _status_kb("VmHWM") < high - 32 * 1024

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, rss_bytes())
            time.sleep(0.001)

    def reset(self) -> None:
        if self.uses_hwm:
            self._reset_hwm()
        else:
            self._peak = rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def peak(self) -> int:
        if self.uses_hwm:
            return _status_kb("VmHWM") * 1024
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        return max(self._peak, rss_bytes())


# --------------------------------------------------------------------------------------------- worker
def genotype(kind: str, layers: int) -> tuple[list[list[str]] | None, list[list[str]] | None]:
    """``standard``: self_attn/ffn in every layer (config default); ``mixed``: cycles several ops."""
    if kind == "standard":
        return None, None
    enc_cycle = [["self_attn", "ffn"], ["dynconv_7", "glu"], ["conv_5", "ffn"]]
    dec_cycle = [["self_attn", "ffn"], ["dynconv_7", "glu"], ["conv_5", "self_attn"]]
    return [enc_cycle[i % 3] for i in range(layers)], [dec_cycle[i % 3] for i in range(layers)]


def make_batch(batch: int, length: int, vocab: int, seed: int) -> dict[str, Any]:
    """Right-padded source and target: lengths uniform in [length/2, length], labels -100 on padding."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, length), generator=g)
    labels = torch.randint(4, vocab, (batch, length), generator=g)
    src_len = torch.randint(length // 2, length + 1, (batch,), generator=g)
    tgt_len = torch.randint(length // 2, length + 1, (batch,), generator=g)
    src_len[0] = tgt_len[0] = length
    pos = torch.arange(length)[None, :]
    mask = (pos < src_len[:, None]).long()
    ids = ids.masked_fill(mask == 0, 0)
    labels = labels.masked_fill(pos >= tgt_len[:, None], -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_model(args: argparse.Namespace, L: int, mode: str) -> tuple[Any, list[int]]:
    """The model for one mode (same seed, so the same weights in every mode) and a checkpoint-call counter."""
    import torch

    from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
    from hf_revdarts.model.reversible import ReversibleStack

    torch.manual_seed(args.seed)
    enc, dec = genotype(args.genotype, L)
    config = RevDartsConfig(
        vocab_size=args.vocab[0],
        d_model=args.d_model,
        num_heads=args.heads,
        encoder_layers=L,
        decoder_layers=L,
        encoder_genotype=enc,
        decoder_genotype=dec,
        dropout=0.1,
        attention_dropout=args.attention_dropout,
        activation_dropout=0.0,
        max_position_embeddings=max(64, args.length),
        reversible=mode in ("reversible", "reversible_full_head"),
        chunked_loss=mode not in ("ordinary", "reversible_full_head"),
    )
    model = RevDartsForConditionalGeneration(config).train()
    calls = [0]
    if mode == "checkpoint":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers 5.2x: renamed activation_checkpointing_*
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for s in model.modules():
            if isinstance(s, ReversibleStack):
                assert s.gradient_checkpointing is True, "HF did not set ReversibleStack.gradient_checkpointing"
                inner = s._gradient_checkpointing_func

                def counted(*a: Any, _inner: Any = inner, **k: Any) -> Any:
                    calls[0] += 1
                    return _inner(*a, **k)

                s._gradient_checkpointing_func = counted
    return model, calls


def timing_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Step times of all modes in ONE process, interleaved (rev, ord, ckpt, rev, ...), with the normal
    allocator: on a shared machine the load drifts, and interleaving exposes every mode to the same drift."""
    import torch

    torch.set_num_threads(args.threads)
    L = args.layers[0]
    models = {mode: build_model(args, L, mode)[0] for mode in args.modes}
    batch = make_batch(args.batch, args.length, args.vocab[0], args.seed + 1)
    times: dict[str, list[float]] = {mode: [] for mode in args.modes}
    cpu: dict[str, list[float]] = {mode: [] for mode in args.modes}
    for rep in range(args.steps + 1):  # the first round is a warm-up
        for mode, model in models.items():
            model.zero_grad(set_to_none=True)
            c0, t0 = time.process_time(), time.perf_counter()
            model(**batch).loss.backward()
            if rep:
                times[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)
    return {"L": L, "vocab": args.vocab[0], "times": times, "cpu": cpu}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hf_revdarts.model.reversible import ReversibleStack

    torch.set_num_threads(args.threads)
    meter = PeakMeter()
    L, mode = args.layers[0], args.mode
    model, calls = build_model(args, L, mode)
    stacks = [m for m in model.modules() if isinstance(m, ReversibleStack)]
    n_params = sum(p.numel() for p in model.parameters())
    stack_params = [sum(p.numel() for p in s.parameters()) for s in stacks]

    def step(b: dict[str, Any]) -> None:
        model.zero_grad(set_to_none=(args.grads == "none"))
        model(**b).loss.backward()

    step(make_batch(1, 4, args.vocab[0], args.seed))  # warm-up: lazy allocations, .grad buffers
    batch = make_batch(args.batch, args.length, args.vocab[0], args.seed + 1)
    mems, times, fwd_times, phases = [], [], [], []
    for _ in range(args.steps):
        calls[0] = 0
        model.zero_grad(set_to_none=(args.grads == "none"))
        gc.collect()
        base = rss_bytes()
        meter.reset()
        t0 = time.perf_counter()
        loss = model(**batch).loss
        t1 = time.perf_counter()
        fwd_peak, after_fwd = meter.peak() - base, rss_bytes() - base
        meter.reset()
        loss.backward()
        t2 = time.perf_counter()
        bwd_peak = meter.peak() - base
        del loss
        times.append(t2 - t0)
        fwd_times.append(t1 - t0)
        mems.append(max(fwd_peak, bwd_peak))
        phases.append((fwd_peak, after_fwd, bwd_peak))
        if mode == "checkpoint":
            assert calls[0] == 2 * L, f"expected {2 * L} checkpointed layer calls, got {calls[0]}"
    return {
        "L": L,
        "vocab": args.vocab[0],
        "mode": mode,
        "act_mb": statistics.median(mems) / 1e6,
        "step_s": statistics.median(times),
        "act_mb_all": [m / 1e6 for m in mems],
        "fwd_peak_mb": statistics.median(ph[0] for ph in phases) / 1e6,
        "saved_after_fwd_mb": statistics.median(ph[1] for ph in phases) / 1e6,
        "bwd_peak_mb": statistics.median(ph[2] for ph in phases) / 1e6,
        "fwd_s": statistics.median(fwd_times),
        "step_s_all": times,
        "params_mb": n_params * 4 / 1e6,
        "enc_stack_params_mb": stack_params[0] * 4 / 1e6,
        "dec_stack_params_mb": stack_params[1] * 4 / 1e6,
        "peak_method": "VmHWM+clear_refs" if meter.uses_hwm else "1ms VmRSS sampling",
        "checkpoint_calls": calls[0],
    }


# --------------------------------------------------------------------------------------------- parent
def run_worker(args: argparse.Namespace, layers: int, vocab: int, mode: str | None) -> dict[str, Any]:
    """A fresh subprocess: the memory worker for ``mode``, or (``mode=None``) the interleaved timing worker."""
    cmd = [sys.executable, os.path.abspath(__file__), "--layers", str(layers), "--modes", *args.modes]
    cmd += ["--vocab", str(vocab)]
    cmd += ["--worker", "--mode", mode] if mode else ["--timing-worker"]
    for k in ("d_model", "heads", "batch", "length", "steps", "threads", "seed", "genotype", "grads",
              "attention_dropout"):
        cmd += [f"--{k}", str(getattr(args, k))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if mode:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    else:
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"worker {mode or 'timing'} L={layers} vocab={vocab} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _reference(modes: list[str]) -> str:
    return "ordinary" if "ordinary" in modes else modes[0]


def print_timing_only(args: argparse.Namespace) -> None:
    """Interleaved step times (wall and process CPU time, median and min) and their ratios to ordinary (or to the
    first mode when ordinary is not run)."""
    ref_mode = _reference(args.modes)
    short = ref_mode[:3]
    hdr = (f"{'L':>3} {'vocab':>6} {'mode':<21} {'wall med':>9} {'wall min':>9} {'cpu med':>8} {'cpu min':>8} "
           f"{f'/{short} wall min':>14} {f'/{short} cpu med':>13}")
    print(hdr)
    print("-" * len(hdr))
    for L in args.layers:
        for vocab in args.vocab:
            r = run_worker(args, L, vocab, None)
            ref_w, ref_c = min(r["times"][ref_mode]), statistics.median(r["cpu"][ref_mode])
            for mode in args.modes:
                w, c = r["times"][mode], r["cpu"][mode]
                print(
                    f"{L:>3} {vocab:>6} {mode:<21} {statistics.median(w):>9.3f} {min(w):>9.3f} "
                    f"{statistics.median(c):>8.3f} {min(c):>8.3f} {min(w) / ref_w:>14.2f} "
                    f"{statistics.median(c) / ref_c:>13.2f}",
                    flush=True,
                )
    print(f"load average at end {loadavg()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d_model", type=int, default=384)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64, help="source and target length")
    p.add_argument("--vocab", type=int, nargs="+", default=[8000],
                   help="vocabulary sizes (8000: the project's; the LM head's tensors grow with it)")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 6, 12])
    p.add_argument("--modes", nargs="+", default=["reversible", "ordinary", "checkpoint"], choices=MODES)
    p.add_argument("--steps", type=int, default=3, help="measured steps after the warm-up (median reported)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--genotype", choices=("standard", "mixed"), default="standard")
    p.add_argument("--attention_dropout", type=float, default=0.0,
                   help="0 as in the training scripts (flash attention on CPU); > 0 selects the math kernel, which "
                   "keeps the attention matrices")
    p.add_argument(
        "--grads",
        choices=("keep", "none"),
        default="keep",
        help="keep: .grad buffers exist before the step (zeroed), so they are in the baseline; "
        "none: zero_grad(set_to_none=True), the step's peak includes allocating them",
    )
    p.add_argument("--no-interleaved", action="store_true", help="skip the interleaved timing processes")
    p.add_argument(
        "--timing-only",
        action="store_true",
        help="only the interleaved timing (no memory processes); with --threads 1 its CPU-time ratios are the "
        "least disturbed by other load on a shared machine",
    )
    p.add_argument("--json", help="also write all results to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--timing-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.timing_worker:
        print(json.dumps(timing_worker(args)))
        return

    print(
        f"RevDarts training step on CPU ({args.threads} threads): d_model={args.d_model} heads={args.heads} "
        f"batch={args.batch} src_len=tgt_len={args.length} (right-padded) vocab={'/'.join(map(str, args.vocab))} "
        f"genotype={args.genotype} dropout=0.1 attention_dropout={args.attention_dropout} grads={args.grads}; "
        f"median of {args.steps} steps after a warm-up; load average at start {loadavg()}",
        flush=True,
    )
    if args.timing_only:
        print_timing_only(args)
        return
    res: dict[tuple[int, int, str], dict[str, Any]] = {}
    timing: dict[tuple[int, int], dict[str, list[float]]] = {}
    cputime: dict[tuple[int, int], dict[str, list[float]]] = {}
    t_start = time.time()
    hdr = (
        f"{'L':>3} {'vocab':>6} {'mode':<21} {'act MB':>8} {'fwd pk':>7} {'saved':>7} {'bwd pk':>7} {'step s':>7} "
        f"{'il med':>7} {'il min':>7} {'params':>7} {'stk grads':>10}"
    )
    print(hdr)
    print("-" * len(hdr))
    for L in args.layers:
        for vocab in args.vocab:
            rows = {mode: run_worker(args, L, vocab, mode) for mode in args.modes}
            if not args.no_interleaved:
                t = run_worker(args, L, vocab, None)
                timing[L, vocab], cputime[L, vocab] = t["times"], t["cpu"]
            for mode, r in rows.items():
                res[(L, vocab, mode)] = r
                il = timing.get((L, vocab), {}).get(mode)
                r["il_med_s"] = statistics.median(il) if il else float("nan")
                r["il_min_s"] = min(il) if il else float("nan")
                ic = cputime.get((L, vocab), {}).get(mode)
                r["il_cpu_s"] = statistics.median(ic) if ic else float("nan")
                stack = f"{r['enc_stack_params_mb']:.1f}/{r['dec_stack_params_mb']:.1f}"
                print(
                    f"{L:>3} {vocab:>6} {mode:<21} {r['act_mb']:>8.1f} {r['fwd_peak_mb']:>7.1f} "
                    f"{r['saved_after_fwd_mb']:>7.1f} {r['bwd_peak_mb']:>7.1f} {r['step_s']:>7.3f} "
                    f"{r['il_med_s']:>7.3f} {r['il_min_s']:>7.3f} {r['params_mb']:>7.1f} {stack:>10}",
                    flush=True,
                )
    any_r = next(iter(res.values()))
    print(
        f"act MB = peak RSS during forward+backward - RSS before (MB = 1e6 B; peak via {any_r['peak_method']}, "
        "fresh process with MALLOC_MMAP_THRESHOLD_=131072); fwd pk / bwd pk = peak during forward / backward; "
        "saved = RSS held after forward (graph + loss); step s = median step time in that process; "
        "il med / il min = step time with all modes interleaved in one process, normal allocator (il cpu: "
        "its process CPU time, median); "
        "params = fp32 size of all parameters; stk grads = of the encoder/decoder stack parameters."
    )
    print(f"total wall time {time.time() - t_start:.0f} s, load average at end {loadavg()}\n")

    def ratio(a: tuple[int, int, str], b: tuple[int, int, str], key: str) -> str:
        return f"{res[a][key] / res[b][key]:.2f}" if a in res and b in res and res[b][key] > 0 else "n/a"

    print(
        f"{'L':>3} {'vocab':>6} {'ord/rev mem':>12} {'ckpt/rev mem':>13} {'rev/ord time':>13} {'rev/ord il med':>15} "
        f"{'rev/ord il min':>15} {'rev/ord il cpu':>15} {'ckpt/ord il med':>16} {'rev/ckpt il med':>16}"
    )
    for L in args.layers:
        for V in args.vocab:
            print(
                f"{L:>3} {V:>6} {ratio((L, V, 'ordinary'), (L, V, 'reversible'), 'act_mb'):>12} "
                f"{ratio((L, V, 'checkpoint'), (L, V, 'reversible'), 'act_mb'):>13} "
                f"{ratio((L, V, 'reversible'), (L, V, 'ordinary'), 'step_s'):>13} "
                f"{ratio((L, V, 'reversible'), (L, V, 'ordinary'), 'il_med_s'):>15} "
                f"{ratio((L, V, 'reversible'), (L, V, 'ordinary'), 'il_min_s'):>15} "
                f"{ratio((L, V, 'reversible'), (L, V, 'ordinary'), 'il_cpu_s'):>15} "
                f"{ratio((L, V, 'checkpoint'), (L, V, 'ordinary'), 'il_med_s'):>16} "
                f"{ratio((L, V, 'reversible'), (L, V, 'checkpoint'), 'il_med_s'):>16}"
            )
    if "reversible_full_head" in args.modes and "reversible" in args.modes:
        full = "reversible_full_head"
        print(f"\nchunked vs full LM head, both reversible:\n{'L':>3} {'vocab':>6} {'full/chunked mem':>17} "
              f"{'time chunked/full: il med':>26} {'il min':>7} {'il cpu':>7}")
        for L in args.layers:
            for V in args.vocab:
                print(
                    f"{L:>3} {V:>6} {ratio((L, V, full), (L, V, 'reversible'), 'act_mb'):>17} "
                    f"{ratio((L, V, 'reversible'), (L, V, full), 'il_med_s'):>26} "
                    f"{ratio((L, V, 'reversible'), (L, V, full), 'il_min_s'):>7} "
                    f"{ratio((L, V, 'reversible'), (L, V, full), 'il_cpu_s'):>7}"
                )
    lo, hi = min(args.layers), max(args.layers)
    for V in args.vocab:
        for mode in args.modes:
            print(f"vocab {V}: {mode} activation memory at {hi} vs {lo} layers: "
                  f"{ratio((hi, V, mode), (lo, V, mode), 'act_mb')}x")
    small, large = min(args.vocab), max(args.vocab)
    if large != small:
        for L in args.layers:
            for mode in args.modes:
                print(f"{L} layers: {mode} activation memory at vocab {large} vs {small}: "
                      f"{ratio((L, large, mode), (L, small, mode), 'act_mb')}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(list(res.values()), f, indent=1)


if __name__ == "__main__":
    main()
