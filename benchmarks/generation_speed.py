"""Generation speed: RevDarts cached vs uncached decoding, and RevDarts vs MarianMTModel of the same sizes.

Two tables, random weights, every sequence forced to exactly ``--new-tokens`` new tokens
(``min_new_tokens = max_new_tokens``), so that all rows do the same number of decoding steps:

1. cached vs uncached ``generate`` (greedy) of a RevDarts model — the standard ``self_attn``/``ffn``
   genotype and a genotype using every decoder op — with the speed-up of the cache (target >= 3x at 64).
2. tokens/s of a standard-genotype RevDarts model next to ``MarianMTModel`` with the same vocabulary,
   width, depth and heads (Marian's FFN is 4·d wide, as RevDarts' ``ffn`` is 4× its split width), both
   cached, greedy and beam 4, batch 1 and 32 (target >= 1.0x Marian). Those sizes give RevDarts about a
   quarter of Marian's parameters (its ops act on d/n-wide splits), so a third table compares a RevDarts
   of about Marian's parameter count (``--matched-d-model``, default 768).

Each cell is the best of ``--repeats`` timed runs after one warm-up, the two models measured alternately.
tokens/s counts generated tokens of the returned sequences: batch × new tokens.

    python benchmarks/generation_speed.py               # about 2-4 minutes on 2 idle CPU cores
    python benchmarks/generation_speed.py --quick       # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import transformers
from transformers import MarianConfig, MarianMTModel

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
from hf_revdarts.model.genotype import DECODER_OPS


def revdarts(args, genotype: str, d_model: int | None = None) -> RevDartsForConditionalGeneration:
    kw = {}
    if genotype == "every-op":
        ops = list(DECODER_OPS)
        dec = [ops[2 * i : 2 * i + 2] for i in range(len(ops) // 2)]  # 7 layers, each decoder op once
        kw = dict(decoder_layers=len(dec), decoder_genotype=dec)
    cfg = RevDartsConfig(
        vocab_size=args.vocab,
        d_model=d_model or args.d_model,
        num_heads=args.heads,
        encoder_layers=args.layers,
        decoder_layers=kw.pop("decoder_layers", args.layers),
        max_position_embeddings=args.src_len + args.new_tokens + 8,
        **kw,
    )
    torch.manual_seed(0)
    return RevDartsForConditionalGeneration(cfg).eval()


def marian(args) -> MarianMTModel:
    cfg = MarianConfig(
        vocab_size=args.vocab,
        decoder_vocab_size=args.vocab,
        d_model=args.d_model,
        encoder_layers=args.layers,
        decoder_layers=args.layers,
        encoder_attention_heads=args.heads,
        decoder_attention_heads=args.heads,
        encoder_ffn_dim=4 * args.d_model,
        decoder_ffn_dim=4 * args.d_model,
        max_position_embeddings=args.src_len + args.new_tokens + 8,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=1,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        dropout=0.1,
    )
    torch.manual_seed(0)
    model = MarianMTModel(cfg).eval()
    model.generation_config.bad_words_ids = None
    model.generation_config.forced_eos_token_id = None
    return model


def inputs(args, batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(4, args.vocab, (batch, args.src_len), generator=g)
    ids[:, -1] = 2
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def timed(model, batch: dict, **kw) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, **kw)
    return time.perf_counter() - start, out


def gen_kwargs(args, beams: int, cache: bool = True) -> dict:
    return dict(
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        num_beams=beams,
        do_sample=False,
        use_cache=cache,
        early_stopping=False,
    )


def best_of(args, runs: dict[str, tuple], repeats: int) -> dict[str, float]:
    """Time several (model, batch, kwargs) alternately; the best time of each after a warm-up."""
    best = {name: float("inf") for name in runs}
    for name, (model, batch, kw) in runs.items():
        timed(model, batch, **kw)  # warm-up
    for _ in range(repeats):
        for name, (model, batch, kw) in runs.items():
            seconds, out = timed(model, batch, **kw)
            assert out.shape[1] - 1 == args.new_tokens, (name, out.shape)
            best[name] = min(best[name], seconds)
    return best


def params(model) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--src-len", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--cache-batch", type=int, default=8, help="batch of the cached-vs-uncached table")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--matched-d-model",
        type=int,
        default=768,
        help="also compare a RevDarts of this width (about Marian's parameter count at the default sizes); 0: skip",
    )
    parser.add_argument("--quick", action="store_true", help="d_model 192, 3 layers, 16 new tokens")
    args = parser.parse_args()
    if args.quick:
        args.d_model, args.layers, args.new_tokens, args.batches, args.repeats = 192, 3, 16, [1, 8], 1
        args.matched_d_model = 0
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.1f} on {os.cpu_count()} CPUs (other jobs skew multi-thread timings)")
    print(
        f"sizes: vocab {args.vocab}, d_model {args.d_model}, {args.layers}+{args.layers} layers, {args.heads} heads, "
        f"source length {args.src_len}, {args.new_tokens} new tokens per sequence"
    )

    # 1. cached vs uncached
    print(f"\n## cached vs uncached RevDarts, greedy, batch {args.cache_batch}")
    print("| genotype | params (M) | uncached s | cached s | speed-up |")
    print("|---|---|---|---|---|")
    batch = inputs(args, args.cache_batch)
    for genotype in ("standard", "every-op"):
        model = revdarts(args, genotype)
        t = best_of(
            args,
            {
                "uncached": (model, batch, gen_kwargs(args, 1, cache=False)),
                "cached": (model, batch, gen_kwargs(args, 1, cache=True)),
            },
            max(1, args.repeats - 1),
        )
        _, a = timed(model, batch, **gen_kwargs(args, 1, cache=False))
        _, b = timed(model, batch, **gen_kwargs(args, 1, cache=True))
        same = "" if torch.equal(a, b) else " (TOKENS DIFFER)"
        print(
            f"| {genotype} | {params(model):.1f} | {t['uncached']:.2f} | {t['cached']:.2f} | "
            f"{t['uncached'] / t['cached']:.1f}x{same} |"
        )

    # 2. RevDarts (standard genotype) vs Marian, both cached
    mm = marian(args)
    rd = revdarts(args, "standard")
    compare(args, rd, mm, f"same sizes (d_model {args.d_model})")
    if args.matched_d_model:
        # The same sizes give RevDarts far fewer parameters (its ops act on d/n-wide splits): also compare
        # with a RevDarts about as large as the Marian model.
        compare(args, revdarts(args, "standard", args.matched_d_model), mm, f"RevDarts d_model {args.matched_d_model}")
    if hasattr(os, "getloadavg"):
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


def compare(args, rd, mm, title: str) -> None:
    print(
        f"\n## tokens/s, cached, {title}: RevDarts standard genotype ({params(rd):.1f}M params) vs MarianMTModel "
        f"d_model {mm.config.d_model} ({params(mm):.1f}M params)"
    )
    print("| decoding | batch | RevDarts tok/s | Marian tok/s | RevDarts / Marian |")
    print("|---|---|---|---|---|")
    for beams in args.beams:
        for size in args.batches:
            batch = inputs(args, size)
            kw = gen_kwargs(args, beams)
            t = best_of(args, {"revdarts": (rd, batch, kw), "marian": (mm, batch, kw)}, args.repeats)
            tokens = size * args.new_tokens
            r, m = tokens / t["revdarts"], tokens / t["marian"]
            name = "greedy" if beams == 1 else f"beam {beams}"
            print(f"| {name} | {size} | {r:.0f} | {m:.0f} | {r / m:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
