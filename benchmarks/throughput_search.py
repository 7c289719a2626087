#!/usr/bin/env python
"""Training throughput of the DARTS supernet vs the standard-genotype model of the same width and depth.

One train step = zero_grad, forward, backward, Adam step (the θ step of the search: Adam(0.9, 0.98) over
the weights, as ``make_weight_optimizer``; an α step costs the same forward+backward). Tokens/s counts
the real (non-padding) source + target tokens of a step.

Timing on a shared machine is noisy, so everything is measured in one run, *interleaved*: each source
tree (this checkout, and with ``--baseline REF`` that git commit of hf_revdarts, unpacked to a temporary
folder) runs in its own worker process that builds all of its variants once; the parent then asks the
workers in turn for one step of each variant, ``--repeats`` times, and reports medians. Ratios are
taken within the run (supernet vs the model of the same tree and memory mode). The matrix-product,
convolution and attention FLOPs of one step (``torch.utils.flop_counter``) are printed beside: the
supernet/model time ratio follows their ratio. With one torch thread
(the default) the step runs on the worker's main thread, so its CPU time (``thread_time``) is reported
too: on a machine shared with other jobs it is less inflated by waiting for a core than wall time, and
``--clock cpu`` uses it for tokens/s and the ratios.

Variants (``--variants``; each in the memory modes of ``--modes``):
    model         the standard self_attn/ffn genotype (the Transformer baseline)
    supernet      RevDartsSupernet as built by default
    pcK           this tree's supernet with partial channels K (PC-DARTS; an option that changes the search)
    settled       the supernet with the final α of a search (``--alphas``): costs what ``supernet`` costs
    pruned        the same, with the ops below ``--prune_below`` skipped (``search.py --prune_below``)
    single_path   the supernet's θ warm-up with one candidate per node drawn each step
                  (``search.py --warmup_sampling single_path``, as SPOS)
A baseline tree only knows ``model`` and ``supernet``.

    python benchmarks/throughput_search.py --baseline cb07a35            # before/after, reference size
    python benchmarks/throughput_search.py --variants model,supernet,pc4
    python benchmarks/throughput_search.py --profile supernet/reversible # torch.profiler table, this tree
    python benchmarks/throughput_search.py --per_op                      # CPU ms per candidate op of a node
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ worker (one source tree) -----------
def build(variant: str, reversible: bool, a: argparse.Namespace):
    import torch

    from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
    from hf_revdarts.search import RevDartsSupernet

    config = RevDartsConfig(
        vocab_size=a.vocab, d_model=a.d_model, num_heads=a.heads, encoder_layers=a.layers, decoder_layers=a.layers,
        dropout=a.dropout, max_position_embeddings=max(64, a.length + 1), reversible=reversible,
    )
    torch.manual_seed(0)
    if variant == "model":
        return RevDartsForConditionalGeneration(config)
    if variant in ("supernet", "single_path"):
        return RevDartsSupernet(config, tie_blocks=a.tie_blocks)
    if variant.startswith("pc") and variant[2:].isdigit():
        return RevDartsSupernet(config, tie_blocks=a.tie_blocks, partial_channels=int(variant[2:]))
    if variant in ("settled", "pruned"):  # α of a finished search (--alphas); pruned skips ops below --prune_below
        model = RevDartsSupernet(config, tie_blocks=a.tie_blocks)
        if not a.alphas:
            raise ValueError(f"variant {variant!r} needs --alphas (a search's arch_parameters.json)")
        saved = json.loads(Path(a.alphas).read_text())
        named = dict(model.named_arch_parameters())
        if set(saved) != set(named):
            raise ValueError(f"--alphas {a.alphas} has nodes {sorted(saved)}, this supernet {sorted(named)} "
                             "(match --layers and --tie_blocks to the search)")
        with torch.no_grad():
            for name, alpha in named.items():
                alpha.copy_(torch.tensor(saved[name]))
        if variant == "pruned":
            model.prune_ops(a.prune_below)
        return model
    raise ValueError(f"unknown variant {variant!r}: use model, supernet, pcK (e.g. pc4), settled or pruned")


def make_batch(a: argparse.Namespace, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, a.vocab, (a.batch, a.length), generator=g)
    labels = torch.randint(4, a.vocab, (a.batch, a.length), generator=g)
    mask = torch.ones_like(ids)
    # Every fourth sentence shorter, as in real batches (the padding masks are part of the work).
    for row in range(0, a.batch, 4):
        cut = a.length - 1 - row % (a.length // 2)
        ids[row, cut:], mask[row, cut:], labels[row, cut:] = 0, 0, -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class Runner:
    """One variant in one memory mode: its model, Adam over the weights θ, and a timed train step."""

    def __init__(self, variant: str, mode: str, a: argparse.Namespace) -> None:
        import torch

        self.name = f"{variant}/{mode}"
        self.model = build(variant, mode == "reversible", a)
        self.model.train()
        params = self.model.weight_parameters() if hasattr(self.model, "weight_parameters") else self.model.parameters()
        self.opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        self.single_path = variant == "single_path"
        self.steps = 0

    def step(self, data: dict) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this thread) of one train step."""
        import torch

        start, cpu = time.perf_counter(), time.thread_time()
        if self.single_path:  # a new path every step, as the search's warm-up draws them
            self.model.sample_single_path(torch.Generator().manual_seed(self.steps))
        self.steps += 1
        self.opt.zero_grad(set_to_none=True)
        self.model(**data).loss.backward()
        self.opt.step()
        return time.perf_counter() - start, time.thread_time() - cpu


def flop_counter():
    """A dispatch mode summing torch.utils.flop_counter's FLOPs (matrix products, convolutions, attention)
    of every op it sees. Not ``FlopCounterMode`` itself: its module tracker fails inside the reversible
    backward, which re-runs split functions under ``torch.autograd.grad``."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                self.total += count(*args, **kwargs, out_val=out)
            return out

    return Counter()


def worker(a: argparse.Namespace) -> None:
    """Build the variants, then answer each line on stdin with one step of each (times as JSON)."""
    import torch

    torch.set_num_threads(a.threads)
    data = make_batch(a)
    runners = [Runner(v, m, a) for v in a.variants.split(",") for m in a.modes.split(",")]
    flops = {}
    for r in runners:  # warm-up: lazy allocations, Adam state, kernel selection; and the step's FLOPs
        r.step(data)
        with flop_counter() as counter:
            r.step(data)
        flops[r.name] = counter.total
    print(json.dumps({"ready": [r.name for r in runners], "flops": flops}), flush=True)
    for _ in sys.stdin:
        print(json.dumps({r.name: r.step(data) for r in runners}), flush=True)


def profile(a: argparse.Namespace) -> None:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(a.threads)
    variant, _, mode = a.profile.partition("/")
    runner, data = Runner(variant, mode or "reversible", a), make_batch(a)
    runner.step(data)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            runner.step(data)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


def per_op(a: argparse.Namespace) -> None:
    """CPU ms of forward+backward of each wrapped candidate op at the encoder and decoder split widths of the
    configuration (train mode, padded batch), interleaved over repeats: where a supernet node's time goes."""
    import torch

    from hf_revdarts import RevDartsConfig
    from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS
    from hf_revdarts.model.ops import OpContext, WrappedOp

    torch.set_num_threads(a.threads)
    config = RevDartsConfig(vocab_size=a.vocab, d_model=a.d_model, num_heads=a.heads, dropout=a.dropout,
                            encoder_layers=1, decoder_layers=1)
    data = make_batch(a)
    pad = data["attention_mask"].bool()
    for causal, ops, splits in ((False, ENCODER_OPS, config.encoder_splits), (True, DECODER_OPS, config.decoder_splits)):
        width = a.d_model // splits
        torch.manual_seed(0)
        h = torch.randn(a.batch, a.length, width, requires_grad=True)
        side = torch.randn(a.batch, a.length, a.d_model)
        q = torch.arange(a.length)
        self_mask = (q[None, :] <= q[:, None])[None, None] & pad[:, None, None, :] if causal else pad[:, None, None, :]
        ctx = OpContext(pad_mask=pad, self_attn_mask=self_mask, cross_attn_mask=pad[:, None, None, :], causal=causal)
        modules = {n: WrappedOp(n, width, config, causal).train() for n in ops}
        times: dict[str, list[float]] = {n: [] for n in ops}
        for rep in range(a.repeats + 1):
            for n, m in modules.items():
                start = time.thread_time()
                out = m(h, ctx, side, None)
                if out.requires_grad:
                    out.sum().backward()
                if rep:  # the first round is a warm-up
                    times[n].append(time.thread_time() - start)
        med = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        total = sum(med.values())
        side_name = "decoder" if causal else "encoder"
        print(f"\n{side_name} node, split width {width}: forward+backward CPU ms per candidate op "
              f"(sum {total:.1f} ms)")
        for n in ops:
            print(f"  {n:11s} {med[n]:7.2f} ms {100 * med[n] / total:5.1f}%")


# ------------------------------------------------------------------ parent -----------------------------
def unpack(ref: str, dest: Path) -> Path:
    """hf_revdarts as of git ``ref``, unpacked under ``dest`` (a tree importable with PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "hf_revdarts"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def start_worker(tree: Path, variants: str, a: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", "--variants", variants]
    for key in ("d_model", "layers", "heads", "batch", "length", "vocab", "tie_blocks", "modes", "threads", "dropout",
                "prune_below"):
        cmd += [f"--{key}", str(getattr(a, key))]
    if a.alphas:
        cmd += ["--alphas", str(Path(a.alphas).resolve())]
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS=str(a.threads))
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tree)
    return proc


def ask(proc: subprocess.Popen, line: str | None) -> dict:
    if line is not None:
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    out = proc.stdout.readline()
    if not out:
        raise RuntimeError(f"a benchmark worker exited early (code {proc.wait()}); see its error above")
    return json.loads(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d_model", type=int, default=192)
    p.add_argument("--layers", type=int, default=4, help="layers per stack (encoder and decoder)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=32, help="source and target length")
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--tie_blocks", type=int, default=0, help="0 = untied α (the reference setting)")
    p.add_argument("--variants", default="model,supernet", help="variants of this tree")
    p.add_argument("--baseline", default=None, help="git ref whose model and supernet run alongside (e.g. cb07a35)")
    p.add_argument("--modes", default="reversible,ordinary")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu", help="time behind tokens/s and ratios")
    p.add_argument("--profile", default=None, help="profile VARIANT/MODE of this tree instead (e.g. supernet/reversible)")
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--per_op", action="store_true", help="time each candidate op of a node instead (this tree)")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    p.add_argument("--alphas", default=None, help="arch_parameters.json of a search (variants settled, pruned)")
    p.add_argument("--prune_below", type=float, default=0.01, help="threshold of the pruned variant")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if a.profile:
        return profile(a)
    if a.per_op:
        return per_op(a)

    tmp = Path(tempfile.mkdtemp(prefix="throughput_"))
    try:
        trees = [("", REPO, a.variants)]
        if a.baseline:
            trees.insert(0, (f"{a.baseline}:", unpack(a.baseline, tmp), "model,supernet"))
        procs = [(label, start_worker(tree, variants, a)) for label, tree, variants in trees]
        ready = [(label, ask(proc, None)) for label, proc in procs]
        names = [(label, r["ready"]) for label, r in ready]
        flops = {label + n: f for label, r in ready for n, f in r["flops"].items()}
        wall: dict[str, list[float]] = {label + n: [] for label, ns in names for n in ns}
        cpu: dict[str, list[float]] = {n: [] for n in wall}
        for rep in range(a.repeats):
            for label, proc in procs:
                for n, (w, c) in ask(proc, "step").items():
                    wall[label + n].append(w)
                    cpu[label + n].append(c)
            print(f"repeat {rep + 1}/{a.repeats}: " + ", ".join(f"{n} {v[-1]:.3f}s" for n, v in wall.items()), flush=True)
        for _, proc in procs:
            proc.stdin.close()
            proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    tokens = int(make_batch_tokens(a))
    times = cpu if a.clock == "cpu" else wall
    med = {n: statistics.median(v) for n, v in times.items()}
    print(f"\nd_model={a.d_model}, {a.layers}+{a.layers} layers, batch {a.batch}x{a.length} ({tokens} real tokens), "
          f"vocab {a.vocab}, tie_blocks={a.tie_blocks}, {a.threads} thread(s); median of {a.repeats} interleaved "
          f"train steps (forward+backward+Adam); tokens/s and ratios from {a.clock} time")
    print(f"{'variant':30s} {'wall s':>7s} {'min':>7s} {'cpu s':>7s} {'tokens/s':>9s} {'model/this':>10s} "
          f"{'GFLOP':>7s} {'this/model':>10s}")
    rows = {}
    for n in times:
        label, _, rest = n.rpartition(":")
        mode = rest.split("/")[1]
        base = med.get(f"{label}:model/{mode}" if label else f"model/{mode}")
        ratio = base / med[n] if base else float("nan")
        base_flops = flops.get(f"{label}:model/{mode}" if label else f"model/{mode}")
        print(f"{n:30s} {statistics.median(wall[n]):7.3f} {min(wall[n]):7.3f} {statistics.median(cpu[n]):7.3f} "
              f"{tokens / med[n]:9.0f} {ratio:10.3f} {flops[n] / 1e9:7.2f} {flops[n] / base_flops:10.2f}")
        rows[n] = {"wall_median_s": statistics.median(wall[n]), "wall_min_s": min(wall[n]),
                   "cpu_median_s": statistics.median(cpu[n]), "tokens_per_s": tokens / med[n],
                   "model_over_this": ratio, "gflop": flops[n] / 1e9, "wall_s": wall[n], "cpu_s": cpu[n]}
    if a.baseline:
        for mode in a.modes.split(","):
            before, after = med.get(f"{a.baseline}:supernet/{mode}"), med.get(f"supernet/{mode}")
            if before and after:
                print(f"supernet speed-up over {a.baseline}, {mode}: {before / after:.2f}x")
    if a.json:
        # paths of this machine (--json, --alphas) stay out of a file meant to be committed
        settings = {k: v for k, v in vars(a).items() if k not in ("json", "worker")}
        settings["alphas"] = Path(a.alphas).name if a.alphas else None
        Path(a.json).write_text(json.dumps({"settings": settings, "tokens_per_step": tokens, "rows": rows}, indent=1))


def make_batch_tokens(a: argparse.Namespace) -> int:
    data = make_batch(a)
    return int(data["attention_mask"].sum()) + int((data["labels"] != -100).sum())


if __name__ == "__main__":
    main()
