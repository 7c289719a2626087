#!/usr/bin/env python
"""Choose the beam size and length penalty of a model on a validation split, never on a test split.

    python training/tune_decoding.py --model runs/train/averaged --dataset ../shared/data/multi30k \
        --src_lang en --tgt_lang de --split val --num_beams 4 6 --length_penalty 0.6 0.8 1.0 1.2 1.4 \
        --output runs/train/decoding.json
    python training/evaluate.py --model runs/train/averaged --split test_2016_flickr --decoding runs/train/decoding.json

Translates ``--split`` once per setting of the grid (``--num_beams`` × ``--length_penalty``) and keeps the one
with the highest cased sacreBLEU; a tie (within 0.01 BLEU) goes to the fewer beams, then to the length penalty
closer to 1.0 (the cheaper, plainer setting). Writes the grid's scores and the choice as JSON (atomically), with
the fingerprint of the model they were measured on; ``evaluate.py --decoding`` then scores another split with
the chosen setting and records that it was tuned, and on what.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hf_revdarts.evaluation.decoding import TIE, check_translation_settings, choose, is_result_file
from hf_revdarts.evaluation.translation import evaluate_translation, load_model_folder
from hf_revdarts.training.arguments import DatasetArguments, parse_args
from hf_revdarts.training.cli import run_script
from hf_revdarts.training.model_health import check_model_health
from hf_revdarts.training.training_utils import atomic_write_json, load_split
from hf_revdarts.utils.integrity import fingerprint_model_folder

logger = logging.getLogger("revdarts.tune_decoding")


@dataclass
class TuneArguments:
    model: str = field(metadata={"help": "saved model folder (with its tokenizer)"})
    output: str = field(metadata={"help": "JSON file for the grid's scores and the chosen setting"})
    split: str = field(default="val", metadata={"help": "the split the setting is chosen on (not a test split)"})
    num_beams: list[int] = field(default_factory=lambda: [4, 6], metadata={"help": "beam sizes to try"})
    length_penalty: list[float] = field(
        default_factory=lambda: [0.6, 0.8, 1.0, 1.2, 1.4], metadata={"help": "length penalties to try"}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "longest translation in tokens"})
    batch_size: int = field(default=32, metadata={"help": "sentences per generate call"})
    max_examples: int | None = field(default=None, metadata={"help": "first N pairs of the split (default: all)"})
    num_threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})

    def __post_init__(self) -> None:
        if self.split.startswith("test"):
            raise ValueError(
                f"--split {self.split}: decoding chosen on a test split makes that split's score a tuned one; "
                "choose on the validation split (--split val) and score the test split once with the choice"
            )
        if not self.num_beams or any(b < 1 for b in self.num_beams):
            raise ValueError(f"--num_beams must list beam sizes >= 1, got {self.num_beams}")
        if not self.length_penalty or not all(math.isfinite(p) for p in self.length_penalty):
            raise ValueError(f"--length_penalty must list finite numbers, got {self.length_penalty}")
        check_translation_settings(self.model, self.max_new_tokens, self.batch_size, self.max_examples,
                                   self.num_threads, self.output)
        if Path(self.output).is_file() and not is_result_file(self.output, "chosen"):
            raise FileExistsError(f"--output {self.output} exists and is not a result of tune_decoding.py (no chosen "
                                  "setting in it): refusing to overwrite it; give another --output")

    def grid(self) -> list[tuple[int, float]]:
        """(beams, length penalty) pairs; greedy search has no length penalty, so beam 1 is tried once."""
        settings = [(b, p) for b in sorted(set(self.num_beams)) for p in sorted(set(self.length_penalty)) if b > 1]
        return ([(1, 1.0)] if 1 in self.num_beams else []) + settings


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data, args = parse_args((DatasetArguments, TuneArguments), argv, description=__doc__)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    sources, references = load_split(data, args.split, args.max_examples)
    model, tokenizer = load_model_folder(args.model)
    check_model_health(model, tokenizer, sources, references, "model to tune")
    fingerprint = fingerprint_model_folder(args.model)
    grid = []
    for beams, penalty in args.grid():
        scores = evaluate_translation(model, tokenizer, sources, references, num_beams=beams, batch_size=args.batch_size,
                                      max_new_tokens=args.max_new_tokens, length_penalty=penalty)
        grid.append({"num_beams": beams, "length_penalty": penalty, "bleu": scores["bleu"], "chrf": scores["chrf"],
                     "translate_seconds": scores["translate_seconds"]})
        logger.info("beams %d, length penalty %.2f: BLEU %.2f, chrF %.2f on %s", beams, penalty, scores["bleu"],
                    scores["chrf"], args.split)
    chosen = choose(grid)
    result = {"model": str(args.model), "fingerprint": fingerprint, "dataset": str(data.dataset),
              "dataset_config": data.dataset_config, "split": args.split, "src_lang": data.src_lang,
              "tgt_lang": data.tgt_lang, "sentences": len(sources), "max_new_tokens": args.max_new_tokens,
              "batch_size": args.batch_size, "bleu_signature": scores["bleu_signature"],
              "chosen_by": f"highest cased BLEU on {args.split}; ties within {TIE} to fewer beams, then length penalty nearer 1.0",
              "chosen": {k: chosen[k] for k in ("num_beams", "length_penalty", "bleu")}, "grid": grid}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.output), result)
    print(json.dumps({"split": args.split, "chosen": result["chosen"]}))
    return 0


if __name__ == "__main__":
    run_script(main)
