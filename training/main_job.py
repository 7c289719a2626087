#!/usr/bin/env python
"""The main job, end to end on the bundled English→German sample (minutes on 2 CPU cores, no network):

1. search    — reversible DARTS on a small supernet (training/search.py) → genotype.json, figures
2. train     — the derived model from that genotype (training/train.py) → best checkpoint by BLEU
3. evaluate  — beam search on the test split, sacreBLEU (training/evaluate.py)
4. publish   — a self-contained model folder with model card (training/publish.py)
5. translate — ``pipeline("translation", model=<published folder>, trust_remote_code=True)``

    python training/main_job.py [--output_dir outputs/main_job] [--dataset samples/en-de]

Each step is the same script a user runs by hand; the search and the training read their settings from
configs/sample-en-de-search.yaml and configs/sample-en-de-train.yaml (see the README for other recipes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hf_revdarts.training.arguments import SAMPLE_DATA, parse_args
from hf_revdarts.training.cli import run_script
from hf_revdarts.training.run_folder import check_replaceable, probe_lock

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
EXAMPLES = ["The woman sees a red ball.", "The dog sleeps in the park.", "The boy buys the old book."]


@dataclass
class MainJobArguments:
    output_dir: str = field(default="outputs/main_job", metadata={"help": "folder of the four steps' outputs"})
    dataset: str = field(default=str(SAMPLE_DATA), metadata={"help": "local {split}.{lang}[.gz] folder or Hub id"})
    src_lang: str = field(default="en", metadata={"help": "source language code"})
    tgt_lang: str = field(default="de", metadata={"help": "target language code"})
    search_steps: int = field(default=120, metadata={"help": "steps of the search"})
    train_steps: int = field(default=1200, metadata={"help": "steps of the derived model's training"})

    def __post_init__(self) -> None:
        for name in ("search_steps", "train_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")


def run(step: str, script: str, *args: str) -> None:
    print(f"\n=== {step}: {script} {' '.join(args)}", flush=True)
    start = time.time()
    done = subprocess.run([sys.executable, str(HERE / script), *args])
    if done.returncode != 0:
        raise ChildProcessError(f"the {step} step ({script}) failed with exit status {done.returncode}: its error is "
                                "printed above; the later steps did not run")
    print(f"=== {step} done in {time.time() - start:.0f} s", flush=True)


def check_job(args: MainJobArguments, search_dir: Path, train_dir: Path, published: Path) -> None:
    """What would stop a step half-way through the job, refused before the first one starts: a step folder that
    holds anything its script does not write (each step clears its folder) or that another run holds, and a
    --search_steps the search recipe cannot use."""
    for folder, kind in ((search_dir, "search"), (train_dir, "train"), (published, "publish")):
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file: the main job's {kind} step writes a folder there; give "
                                     "another --output_dir")
        probe_lock(folder)
        check_replaceable(folder, kind, f"the main job starts its {kind} step afresh (--output_dir {args.output_dir})")
    recipe = yaml.safe_load((CONFIGS / "sample-en-de-search.yaml").read_text(encoding="utf-8"))
    start = int(recipe.get("arch_start_step", 0))
    if args.search_steps <= start:
        raise ValueError(
            f"--search_steps {args.search_steps} must be more than {start}, the weight-only warm-up "
            f"(arch_start_step) of configs/sample-en-de-search.yaml: α would never be updated. Give at least "
            f"{start + 1}"
        )


def translate_with_pipeline(published: Path) -> None:
    print("\n=== translate with pipeline('translation', model=published folder, trust_remote_code=True)")
    from transformers import pipeline

    translator = pipeline("translation", model=str(published), trust_remote_code=True)
    for src, result in zip(EXAMPLES, translator(EXAMPLES, num_beams=4, max_length=48)):
        print(f"  {src}  →  {result['translation_text']}")


def main(argv: list[str] | None = None) -> int:
    (args,) = parse_args((MainJobArguments,), argv, description=__doc__)
    out = Path(args.output_dir)
    search_dir, train_dir, published = out / "search", out / "train", out / "published"
    data = ["--dataset", args.dataset, "--src_lang", args.src_lang, "--tgt_lang", args.tgt_lang]
    check_job(args, search_dir, train_dir, published)
    # Each run of the main job starts its steps afresh (--overwrite_output_dir clears a previous run's folders, and
    # refuses any folder that holds something else).
    run("search", "search.py", str(CONFIGS / "sample-en-de-search.yaml"), *data, "--output_dir", str(search_dir),
        "--max_steps", str(args.search_steps), "--overwrite_output_dir")
    run("train", "train.py", str(CONFIGS / "sample-en-de-train.yaml"), *data, "--genotype", str(search_dir),
        "--output_dir", str(train_dir), "--max_steps", str(args.train_steps), "--overwrite_output_dir")
    run("evaluate", "evaluate.py", *data, "--model", str(train_dir / "best"), "--split", "test",
        "--output", str(train_dir / "eval_test.json"))
    run("publish", "publish.py", "--model", str(train_dir / "best"), "--eval_results", str(train_dir / "eval_test.json"),
        "--search_dir", str(search_dir), "--output_dir", str(published), "--overwrite", "--model_name",
        "revdarts-sample-en-de")
    translate_with_pipeline(published)
    scores = json.loads((train_dir / "eval_test.json").read_text())
    print(f"\ntest BLEU {scores['bleu']:.2f} ({scores['bleu_signature']}); genotype "
          f"{json.loads((search_dir / 'genotype.json').read_text())}; published folder: {published}")
    return 0


if __name__ == "__main__":
    run_script(main)
