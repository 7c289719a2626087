"""Gradient error of backpropagation-with-reconstruction against ordinary autograd, versus depth.

Method
------
For each depth L (``encoder_layers = decoder_layers = L``) one ``RevDartsForConditionalGeneration`` is built
with a genotype that cycles through every candidate op (layer i, split j gets ``ops[(2*i + j) % len(ops)]``;
encoder ops from ``ENCODER_OPS``, decoder ops from ``DECODER_OPS``), dropout = attention_dropout =
activation_dropout = 0.1, in train mode, on a right-padded batch (source and target). Its parameter
gradients are computed twice with the SAME weights and the SAME dropout seed:

* ``g_rev``: ``ReversibleStack.reversible = True`` (layer inputs rebuilt from outputs in backward),
* ``g_ord``: ``ReversibleStack.reversible = False`` (ordinary autograd, every activation kept),

in fp32, and under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (bf16 reversible against bf16 ordinary).
Reported:

* ``global``: ||g_rev - g_ord|| / ||g_ord|| over all parameters concatenated;
* ``bf16 floor`` (bf16 rows): the same global error of bf16 ordinary autograd against fp32 ordinary autograd,
  i.e. what bf16 itself costs, to put the reversible-vs-ordinary difference on scale;
* ``max per-param``: max over parameters of ||g_rev,p - g_ord,p|| / ||g_ord,p||, leaving out parameters whose
  ordinary gradient is ~0 (norm < 1e-6 x the largest parameter-gradient norm) and the attention key-projection
  biases (``k_proj.bias``: softmax is invariant to a constant shift of the scores, so their gradient is
  mathematically zero and only rounding noise remains); the worst parameter's name is printed.

The remedy ``config.reversible_exact_every = k`` (an exact copy of the stack input every k layers, so that
reconstruction error compounds over at most k layers) is then measured at the deepest L in fp32 for k = 0
(off), 4 and 8: its error, its extra memory (the anchors actually held by the autograd graph after the
forward, found by walking ``loss.grad_fn``, next to the estimate (ceil(L/k)-1) x batch x len x d_model x 4 bytes
per stack), and its step time (median of ``--repeats`` interleaved forward+backward steps).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS
from hf_revdarts.model.reversible import ReversibleStack


def cycling_genotype(layers: int) -> tuple[list[list[str]], list[list[str]]]:
    """Layer i, split j gets ops[(2i + j) % len(ops)]: every op appears once the stack is deep enough."""
    enc = [[ENCODER_OPS[(2 * i + j) % len(ENCODER_OPS)] for j in range(2)] for i in range(layers)]
    dec = [[DECODER_OPS[(2 * i + j) % len(DECODER_OPS)] for j in range(2)] for i in range(layers)]
    return enc, dec


def padded_batch(batch: int, src_len: int, tgt_len: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Right-padded source (pad id 0, attention_mask 0) and labels (-100 on padding); row 0 is full length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (batch, src_len), generator=g)
    labels = torch.randint(4, vocab, (batch, tgt_len), generator=g)
    s = torch.randint(max(1, src_len // 3), src_len + 1, (batch,), generator=g)
    t = torch.randint(max(1, tgt_len // 3), tgt_len + 1, (batch,), generator=g)
    s[0], t[0] = src_len, tgt_len
    mask = (torch.arange(src_len)[None] < s[:, None]).long()
    return {
        "input_ids": ids.masked_fill(mask == 0, 0),
        "attention_mask": mask,
        "labels": labels.masked_fill(torch.arange(tgt_len)[None] >= t[:, None], -100),
    }


def build(args: argparse.Namespace, layers: int, exact_every: int = 0) -> RevDartsForConditionalGeneration:
    enc, dec = cycling_genotype(layers)
    config = RevDartsConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        num_heads=args.heads,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_genotype=enc,
        decoder_genotype=dec,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.1,
        max_position_embeddings=max(64, args.src_len, args.tgt_len),
        reversible=True,
        reversible_exact_every=exact_every,
    )
    torch.manual_seed(args.seed)
    return RevDartsForConditionalGeneration(config).train()


def set_reversible(model: torch.nn.Module, reversible: bool) -> None:
    for m in model.modules():
        if isinstance(m, ReversibleStack):
            m.reversible = reversible


def precision(dtype: str) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


def grads(model: torch.nn.Module, batch: dict[str, torch.Tensor], dtype: str, seed: int) -> dict[str, torch.Tensor]:
    """fp32 parameter gradients of one training step with dropout seed ``seed`` (missing → zeros)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with precision(dtype):
        loss = model(**batch).loss
    loss.backward()
    return {
        n: (p.grad.detach().float().clone() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32))
        for n, p in model.named_parameters()
    }


def compare(g_rev: dict[str, torch.Tensor], g_ord: dict[str, torch.Tensor]) -> dict[str, Any]:
    names = list(g_ord)
    diff = torch.cat([(g_rev[n] - g_ord[n]).flatten() for n in names])
    ref = torch.cat([g_ord[n].flatten() for n in names])
    norms = {n: g_ord[n].norm().item() for n in names}
    floor = 1e-6 * max(norms.values())
    per = {
        n: ((g_rev[n] - g_ord[n]).norm() / norms[n]).item()
        for n in names
        if norms[n] > floor and not n.endswith("k_proj.bias")
    }
    worst = max(per, key=per.__getitem__)
    return {"global": (diff.norm() / ref.norm()).item(), "max_param": per[worst], "worst": worst, "n_params": len(per)}


def error_at(args: argparse.Namespace, layers: int, dtype: str, exact_every: int = 0) -> dict[str, Any]:
    model = build(args, layers, exact_every)
    batch = padded_batch(args.batch, args.src_len, args.tgt_len, args.vocab, args.seed)
    set_reversible(model, True)
    g_rev = grads(model, batch, dtype, args.seed + 1)
    set_reversible(model, False)
    g_ord = grads(model, batch, dtype, args.seed + 1)
    out = compare(g_rev, g_ord)
    if dtype == "bf16":  # the noise floor: bf16 ordinary autograd against fp32 ordinary autograd
        out["bf16_vs_fp32"] = compare(g_ord, grads(model, batch, "fp32", args.seed + 1))["global"]
    return out


def graph_nodes(root: Any) -> Iterator[Any]:
    seen, todo = set(), [root]
    while todo:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        todo.extend(fn for fn, _ in getattr(node, "next_functions", ()))


def anchor_bytes(loss: torch.Tensor) -> int:
    """Bytes of the exact anchors (``ctx.anchor``) the reversible layer Functions in ``loss``'s graph hold."""
    storages: dict[int, int] = {}
    for node in graph_nodes(loss.grad_fn):
        t = getattr(node, "anchor", None)
        if isinstance(t, torch.Tensor):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def remedy(args: argparse.Namespace, layers: int, ks: list[int]) -> list[dict[str, Any]]:
    batch = padded_batch(args.batch, args.src_len, args.tgt_len, args.vocab, args.seed)
    models = {k: build(args, layers, k) for k in ks}
    rows = []
    ref_model = build(args, layers, 0)
    set_reversible(ref_model, False)
    g_ord = grads(ref_model, batch, "fp32", args.seed + 1)
    times: dict[int, list[float]] = {k: [] for k in ks}
    for rep in range(args.repeats + 1):  # interleaved; round 0 is a warm-up
        for k, model in models.items():
            model.zero_grad(set_to_none=True)
            torch.manual_seed(args.seed + 1)
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            if rep:
                times[k].append(time.perf_counter() - t0)
    t_off = statistics.median(times[ks[0]])
    tokens = args.batch * (args.src_len + args.tgt_len)  # encoder anchors: src_len, decoder: tgt_len
    for k, model in models.items():
        err = compare(grads(model, batch, "fp32", args.seed + 1), g_ord)
        torch.manual_seed(args.seed + 1)
        loss = model(**batch).loss
        held = anchor_bytes(loss)
        del loss
        # anchors at layers k, 2k, ... (layer 0's input is never needed again)
        est = (math.ceil(layers / k) - 1) * tokens * args.d_model * 4 if k else 0
        t = statistics.median(times[k])
        rows.append({"k": k, **err, "held_mb": held / 1e6, "est_mb": est / 1e6, "step_s": t, "rel_time": t / t_off})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d_model", type=int, default=96, help="must be a multiple of 2*heads and 3*heads")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 4, 7, 12, 16, 24])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--src_len", type=int, default=20)
    p.add_argument("--tgt_len", type=int, default=18)
    p.add_argument("--vocab", type=int, default=200)
    p.add_argument("--exact_every", type=int, nargs="+", default=[4, 8], help="remedy settings k to measure")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per remedy setting")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()

    print(
        f"Gradient relative error, reversible vs ordinary autograd (same weights, same dropout seed); d_model="
        f"{args.d_model} heads={args.heads} batch={args.batch} src_len={args.src_len} tgt_len={args.tgt_len} "
        f"(right-padded) vocab={args.vocab}, dropout=attention_dropout=activation_dropout=0.1, train mode, "
        "genotype cycling through every op"
    )
    hdr = f"{'L':>3} {'dtype':<5} {'global':>10} {'max per-param':>14} {'bf16 floor':>11}  worst parameter"
    print(hdr)
    print("-" * (len(hdr) + 30))
    for L in args.layers:
        for dtype in ("fp32", "bf16"):
            r = error_at(args, L, dtype)
            floor = f"{r['bf16_vs_fp32']:.2e}" if "bf16_vs_fp32" in r else "-"
            print(
                f"{L:>3} {dtype:<5} {r['global']:>10.2e} {r['max_param']:>14.2e} {floor:>11}  {r['worst']}",
                flush=True,
            )
    print(
        "global / max per-param: reversible vs ordinary in the same precision; bf16 floor: global error of bf16 "
        "ORDINARY autograd against fp32 ordinary autograd (the precision's own error, for scale)"
    )

    L = max(args.layers)
    ks = [0] + [k for k in args.exact_every if k > 0]
    print(f"\nRemedy reversible_exact_every=k at L={L}, fp32 (k=0: off)")
    hdr = f"{'k':>3} {'global':>10} {'max per-param':>14} {'anchors MB':>11} {'estimate MB':>12} {'step s':>8} {'time/off':>9}"
    print(hdr)
    print("-" * len(hdr))
    for r in remedy(args, L, ks):
        print(
            f"{r['k']:>3} {r['global']:>10.2e} {r['max_param']:>14.2e} {r['held_mb']:>11.3f} {r['est_mb']:>12.3f} "
            f"{r['step_s']:>8.3f} {r['rel_time']:>9.2f}"
        )
    print(
        "anchors MB: exact copies held by the graph after forward (1 MB = 1e6 B); estimate: (ceil(L/k)-1) x batch x "
        "(src_len + tgt_len) x d_model x 4 B (both stacks)"
    )
    print(f"total wall time {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
