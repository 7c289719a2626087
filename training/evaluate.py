#!/usr/bin/env python
"""Translate a test split with beam search and score it with sacreBLEU (BLEU and chrF).

    python training/evaluate.py --model runs/train/best --split test --output runs/train/eval.json

``--model`` is a saved model folder (weights, config, tokenizer), loaded with
``AutoModelForSeq2SeqLM``/``AutoTokenizer`` exactly as a user would. Prints the scores with their
sacreBLEU signatures and writes them, with the hypotheses, as JSON (atomically).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SAMPLE_DATA, atomic_write_json, bleu_and_chrf, translate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="saved model folder (with its tokenizer)")
    p.add_argument("--dataset", default=str(SAMPLE_DATA), help="local {split}.{lang}[.gz] folder or Hub dataset id")
    p.add_argument("--dataset_config", default=None)
    p.add_argument("--src_lang", default="en")
    p.add_argument("--tgt_lang", default="de")
    p.add_argument("--split", default="test")
    p.add_argument("--max_examples", type=int, default=None)
    p.add_argument("--num_beams", type=int, default=4)
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--output", default=None, help="JSON results file (default: <model>/eval_<split>.json)")
    p.add_argument("--num_threads", type=int, default=0)
    return p.parse_args(argv)


def load_model_folder(folder: str | Path) -> tuple[torch.nn.Module, object]:
    """Model and tokenizer of a saved folder, with errors that say what is missing or broken."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    import hf_revdarts  # noqa: F401  (registers the revdarts model type)

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: no config.json")
    if not (folder / "model.safetensors").is_file() and not list(folder.glob("model-*.safetensors")):
        raise FileNotFoundError(f"{folder} has no weights (model.safetensors)")
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer (tokenizer.json); save the tokenizer beside the model")
    try:
        from safetensors import safe_open

        for shard in [folder / "model.safetensors"] if (folder / "model.safetensors").is_file() else folder.glob("model-*.safetensors"):
            with safe_open(str(shard), framework="pt") as f:
                list(f.keys())
    except Exception as e:  # safetensors raises its own error types for truncated/garbled headers
        raise ValueError(f"{folder}: the weights file is corrupt or truncated ({e})") from e
    model = AutoModelForSeq2SeqLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}; they were not saved together"
        )
    return model.eval(), tokenizer


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from hf_revdarts.data import load_parallel_text

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    src, ref = load_parallel_text(
        args.dataset, args.src_lang, args.tgt_lang, args.split, args.dataset_config, args.max_examples
    )
    model, tokenizer = load_model_folder(args.model)
    start = time.time()
    hyps = translate(
        model, tokenizer, src, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, progress=True,
    )
    seconds = time.time() - start
    scores = bleu_and_chrf(hyps, ref)
    results = {
        "model": str(args.model),
        "dataset": str(args.dataset),
        "dataset_config": args.dataset_config,
        "split": args.split,
        "src_lang": args.src_lang,
        "tgt_lang": args.tgt_lang,
        "num_beams": args.num_beams,
        "translate_seconds": round(seconds, 1),
        **scores,
        "hypotheses": hyps,
    }
    output = Path(args.output) if args.output else Path(args.model) / f"eval_{args.split}.json"
    atomic_write_json(output, results)
    print(f"BLEU = {scores['bleu']:.2f}  ({scores['bleu_signature']})")
    print(f"chrF = {scores['chrf']:.2f}  ({scores['chrf_signature']})")
    print(json.dumps({k: results[k] for k in ("split", "sentences", "bleu", "chrf", "translate_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
