#!/usr/bin/env python
"""The main job, end to end on the bundled English→German sample (minutes on 2 CPU cores, no network):

1. search   — reversible DARTS on a small supernet (training/search.py) → genotype.json, figures
2. train    — the derived model from that genotype (training/train.py) → best checkpoint by BLEU
3. evaluate — beam search on the test split, sacreBLEU (training/evaluate.py)
4. publish  — a self-contained model folder with model card (training/publish.py)
5. translate — ``pipeline("translation", model=<published folder>, trust_remote_code=True)``

    python training/main_job.py [--output_dir outputs/main_job] [--dataset samples/en-de]

Each step is the same script a user runs by hand (see the README for the real-scale recipe).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import SAMPLE_DATA  # noqa: E402


def run(step: str, args: list[str]) -> None:
    print(f"\n=== {step}: {' '.join(args)}", flush=True)
    start = time.time()
    subprocess.run([sys.executable, str(HERE / args[0]), *args[1:]], check=True)
    print(f"=== {step} done in {time.time() - start:.0f} s", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default="outputs/main_job")
    p.add_argument("--dataset", default=str(SAMPLE_DATA))
    p.add_argument("--src_lang", default="en")
    p.add_argument("--tgt_lang", default="de")
    p.add_argument("--search_steps", type=int, default=120)
    p.add_argument("--train_steps", type=int, default=1200)
    args = p.parse_args()
    out = Path(args.output_dir)
    data = ["--dataset", args.dataset, "--src_lang", args.src_lang, "--tgt_lang", args.tgt_lang]
    search_dir, train_dir, published = out / "search", out / "train", out / "published"

    run("search", ["search.py", *data, "--output_dir", str(search_dir), "--max_steps", str(args.search_steps),
                   "--d_model", "96", "--num_heads", "4", "--encoder_layers", "2", "--decoder_layers", "2",
                   "--tie_blocks", "0", "--vocab_size", "1000", "--max_tokens", "1024", "--eval_every", "20",
                   "--warmup_steps", "30", "--arch_start_step", "20", "--num_threads", "2"])
    run("train", ["train.py", *data, "--genotype", str(search_dir), "--output_dir", str(train_dir),
                  "--max_steps", str(args.train_steps), "--d_model", "96", "--num_heads", "4",
                  "--max_tokens", "1024", "--eval_every", "200", "--warmup_steps", "100", "--lr", "2e-3",
                  "--save_every", "400", "--num_threads", "2"])
    run("evaluate", ["evaluate.py", *data, "--model", str(train_dir / "best"), "--split", "test",
                     "--output", str(train_dir / "eval_test.json")])
    run("publish", ["publish.py", "--model", str(train_dir / "best"), "--eval_results",
                    str(train_dir / "eval_test.json"), "--search_dir", str(search_dir), "--output_dir",
                    str(published), "--overwrite", "--model_name", "revdarts-sample-en-de"])

    print("\n=== translate with pipeline('translation', model=published folder, trust_remote_code=True)")
    from transformers import pipeline

    translator = pipeline("translation", model=str(published), trust_remote_code=True)
    sentences = ["The woman sees a red ball.", "The dog sleeps in the park.", "The boy buys the old book."]
    for src, result in zip(sentences, translator(sentences, num_beams=4, max_length=48)):
        print(f"  {src}  →  {result['translation_text']}")
    scores = json.loads((train_dir / "eval_test.json").read_text())
    print(f"\ntest BLEU {scores['bleu']:.2f} ({scores['bleu_signature']}); genotype "
          f"{json.loads((search_dir / 'genotype.json').read_text())}; published folder: {published}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
