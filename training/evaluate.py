#!/usr/bin/env python
"""Translate a test split with beam search and score it with sacreBLEU (BLEU and chrF).

    python training/evaluate.py --model runs/train/averaged --split test --output runs/train/eval.json

``--model`` is a saved model folder (weights, config, tokenizer), loaded with
``AutoModelForSeq2SeqLM``/``AutoTokenizer`` exactly as a user would. BLEU comes two ways: ``bleu``, cased
detokenised sacreBLEU (the primary figure), and ``bleu_lowercase``, lowercased 13a (closer to what Multi30k
papers report). Prints the scores with their sacreBLEU signatures and writes them, with the decoding settings
and the hypotheses (one per source sentence, in order), as JSON (atomically).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_revdarts.evaluation.decoding import check_translation_settings, is_result_file, read_decoding
from hf_revdarts.evaluation.translation import evaluate_translation, load_model_folder
from hf_revdarts.training.arguments import DatasetArguments, parse_args
from hf_revdarts.training.cli import run_script
from hf_revdarts.training.model_health import check_model_health
from hf_revdarts.training.training_utils import atomic_write_json, load_split, remove_stale_temporaries
from hf_revdarts.utils.integrity import check_fingerprint, fingerprint_model_folder


@dataclass
class EvaluateArguments:
    model: str = field(metadata={"help": "saved model folder (with its tokenizer)"})
    split: str = field(default="test", metadata={"help": "split to translate"})
    max_examples: int | None = field(default=None, metadata={"help": "first N pairs (default: all)"})
    num_beams: int = field(default=4, metadata={"help": "beam size"})
    length_penalty: float = field(
        default=1.0, metadata={"help": "beam score = log-prob / length**length_penalty (>1 favours longer output)"}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "longest translation in tokens"})
    batch_size: int = field(default=32, metadata={"help": "sentences per generate call"})
    output: str | None = field(default=None, metadata={"help": "JSON results file (default: <model>/eval_<split>.json)"})
    num_threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    decoding: str | None = field(default=None, metadata={
        "help": "the beam size and length penalty chosen on another split by training/tune_decoding.py (its JSON); "
                "replaces --num_beams and --length_penalty"})

    # What --decoding chose, and on which split (recorded with the scores).
    tuned: dict[str, Any] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ValueError(f"--num_beams must be >= 1, got {self.num_beams}")
        check_translation_settings(self.model, self.max_new_tokens, self.batch_size, self.max_examples,
                                   self.num_threads, self.output)
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"--length_penalty must be a finite number, got {self.length_penalty}")
        if self.num_beams == 1 and self.length_penalty != 1.0:
            raise ValueError(
                f"--length_penalty {self.length_penalty:g} applies to beam search only, and --num_beams 1 is greedy: "
                "it would be recorded but not used. Give --num_beams 2 or more, or leave --length_penalty out"
            )
        output = Path(self.output) if self.output is not None else None
        if output is not None and output.is_file() and not _is_evaluation(output):
            raise FileExistsError(
                f"--output {output} exists and is not a result of evaluate.py (no bleu_signature in it): refusing "
                "to overwrite it; give another --output"
            )
        if self.decoding is not None:
            self._take_decoding()

    def _take_decoding(self) -> None:
        """The tuned setting, from a tuning of this very model on another split than the one scored."""
        if (self.num_beams, self.length_penalty) != (4, 1.0):
            raise ValueError(f"--decoding {self.decoding} gives the beam size and length penalty: leave out --num_beams "
                             f"{self.num_beams} and --length_penalty {self.length_penalty:g}")
        tuned = read_decoding(self.decoding)
        if tuned["split"] == self.split:
            raise ValueError(f"--decoding {self.decoding} was chosen on {self.split}, the split to score: a score on "
                             "the split the decoding was tuned on is not a held-out score; tune on val")
        check_fingerprint(self.model, tuned.get("fingerprint"), what=f"the decoding tuned in --decoding {self.decoding}")
        self.num_beams, self.length_penalty = tuned["chosen"]["num_beams"], tuned["chosen"]["length_penalty"]
        self.tuned = {"file": str(self.decoding), "split": tuned["split"], "chosen_by": tuned.get("chosen_by"),
                      "chosen": tuned["chosen"], "grid": tuned.get("grid")}


def check_direction(data: DatasetArguments, args: EvaluateArguments) -> None:
    """Refuse to score a model on the other direction (or other languages) than it was trained for, where its
    folder records them: training_state.json (train.py's best/ and averaged/) or eval_results.json (published)."""
    folder = Path(args.model)
    for name, read in (("training_state.json", lambda d: d.get("args", {})), ("eval_results.json", lambda d: d)):
        path = folder / name
        try:
            recorded = read(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else {}
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        pair = (recorded.get("src_lang"), recorded.get("tgt_lang"))
        if None not in pair and pair != (data.src_lang, data.tgt_lang):
            raise ValueError(
                f"--model {folder} translates {pair[0]}→{pair[1]} ({path}), but --src_lang {data.src_lang} --tgt_lang "
                f"{data.tgt_lang} would score it on {data.src_lang}→{data.tgt_lang}: give --src_lang {pair[0]} "
                f"--tgt_lang {pair[1]}"
            )
        if None not in pair:
            return


def _is_evaluation(path: Path) -> bool:
    """Whether ``path`` holds results this script wrote (and may replace)."""
    return is_result_file(path, "bleu_signature")


def write_results(
    data: DatasetArguments, args: EvaluateArguments, scores: dict[str, Any], fingerprint: dict[str, Any]
) -> None:
    """The scores with what was evaluated (model and its fingerprint, data, split), as JSON; a summary on stdout.
    The fingerprint (sha256 of weights and tokenizer, and the genotype) lets publish.py refuse these scores
    for any other model."""
    results = {
        "model": str(args.model),
        "fingerprint": fingerprint,
        "dataset": str(data.dataset),
        "dataset_config": data.dataset_config,
        "split": args.split,
        "src_lang": data.src_lang,
        "tgt_lang": data.tgt_lang,
        **scores,
        **({"decoding": args.tuned} if args.tuned else {}),
    }
    output = Path(args.output) if args.output else Path(args.model) / f"eval_{args.split}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output.parent, output.name)  # what an evaluation killed while writing left
    atomic_write_json(output, results)
    print(f"BLEU = {scores['bleu']:.2f}  ({scores['bleu_signature']})")
    print(f"BLEU lowercased = {scores['bleu_lowercase']:.2f}  ({scores['bleu_lowercase_signature']})")
    print(f"chrF = {scores['chrf']:.2f}  ({scores['chrf_signature']})")
    shown = ("split", "sentences", "bleu", "bleu_lowercase", "chrf", "translate_seconds")
    print(json.dumps({k: results[k] for k in shown}))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    data, args = parse_args((DatasetArguments, EvaluateArguments), argv, description=__doc__)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    check_direction(data, args)
    sources, references = load_split(data, args.split, args.max_examples)
    model, tokenizer = load_model_folder(args.model)
    check_model_health(model, tokenizer, sources, references, "evaluated model")  # a diverged model gets no score
    fingerprint = fingerprint_model_folder(args.model)  # before translating: what is evaluated, not what is there later
    scores = evaluate_translation(
        model, tokenizer, sources, references, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, progress=True, length_penalty=args.length_penalty,
    )
    write_results(data, args, scores, fingerprint)
    return 0


if __name__ == "__main__":
    run_script(main)
