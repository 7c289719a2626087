#!/usr/bin/env python
"""Derive a genotype again from a finished search's saved supernet, by another method (e.g. DARTS-PT after an
argmax search), without searching again. Held-out batches: the first ``--eval_batches`` of the split the search
evaluated on, tokenised with the search's tokenizer and batched as the search batched them.

    python benchmarks/rederive.py runs/stability/seed0 --dataset ../shared/data/multi30k --selection perturbation

Writes ``<search>/selection_<method>.json`` (the genotype and, for perturbation, each node's loss increases).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hf_revdarts.search import RevDartsSupernet  # noqa: E402
from hf_revdarts.search.selection import METHODS, select_genotype  # noqa: E402
from hf_revdarts.training.data import BatchStream, load_parallel_text, tokenize_pairs  # noqa: E402
from hf_revdarts.training.tokenization import load_tokenizer  # noqa: E402
from hf_revdarts.utils.atomic import atomic_write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("search", type=Path, help="a search.py output folder (supernet/, tokenizer/)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--src_lang", default="en")
    p.add_argument("--tgt_lang", default="de")
    p.add_argument("--split", default="val", help="held-out split (the search's --eval_split)")
    p.add_argument("--selection", default="perturbation", choices=METHODS)
    p.add_argument("--sampled_genotypes", type=int, default=200, help="--selection sampled: genotypes drawn")
    p.add_argument("--seed", type=int, default=0, help="--selection sampled: the draw's seed (the search's --seed)")
    p.add_argument("--eval_batches", type=int, default=20)
    p.add_argument("--max_tokens", type=int, default=1500)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--num_threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.num_threads:
        torch.set_num_threads(a.num_threads)
    for needed in ("supernet/config.json", "tokenizer"):
        if not (a.search / needed).exists():
            raise SystemExit(f"{a.search} has no {needed}: not a finished search.py output folder")
    supernet = RevDartsSupernet.from_pretrained(a.search / "supernet").eval()
    tokenizer = load_tokenizer(a.search / "tokenizer")
    src, tgt = load_parallel_text(a.dataset, a.src_lang, a.tgt_lang, a.split)
    stream = BatchStream(tokenize_pairs(tokenizer, src, tgt, a.max_length), a.max_tokens, seed=0, shuffle=False,
                         pad_id=tokenizer.pad_token_id)
    batches = [stream.next() for _ in range(min(a.eval_batches, len(stream)))]
    selection = select_genotype(supernet, a.selection, batches=batches, progress=True, samples=a.sampled_genotypes,
                                seed=a.seed)
    out = a.search / f"selection_{a.selection}.json"
    atomic_write_json(out, selection.to_dict())
    print(selection.genotype.to_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
