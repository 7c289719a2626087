#!/usr/bin/env python
"""Re-score a published model folder (a zoo entry) on the split its card reports, with the card's settings.

    python training/rescore.py --model model_cards/revdarts-multi30k-en-de --dataset ../shared/data/multi30k

Reads the folder's ``eval_results.json`` (split, languages, beam size, length penalty, ``max_new_tokens``, batch
size, and the sha256 of the weights and tokenizer it was scored with), refuses a folder whose files are not the
ones scored, loads the model as a transformers user would (``AutoModelForSeq2SeqLM``/``AutoTokenizer``,
``trust_remote_code=True``: the folder's own code), translates the split as ``training/evaluate.py`` did and
prints the card's BLEU and chrF beside the new ones, with their sacreBLEU signatures. Exit status 1 when the BLEU
differs from the card's by more than ``--tolerance`` or a signature differs; the figures are not written anywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_revdarts.evaluation.translation import evaluate_translation
from hf_revdarts.training.arguments import parse_args
from hf_revdarts.training.cli import run_script
from hf_revdarts.training.data import load_parallel_text
from hf_revdarts.utils.atomic import read_json_object
from hf_revdarts.utils.integrity import check_fingerprint

logger = logging.getLogger("revdarts.rescore")
REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("split", "src_lang", "tgt_lang", "num_beams", "length_penalty", "max_new_tokens", "bleu", "bleu_signature")


@dataclass
class RescoreArguments:
    model: str = field(metadata={"help": "a published model folder with its eval_results.json (e.g. model_cards/...)"})
    dataset: str | None = field(default=None, metadata={
        "help": "the scored dataset: a folder of {split}.{lang}[.gz] files or a Hub id (default: ../shared/data/<the "
                "card's dataset> beside the repository)"})
    tolerance: float = field(default=0.1, metadata={"help": "largest BLEU difference from the card that passes"})
    num_threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})

    def __post_init__(self) -> None:
        if not (Path(self.model) / "eval_results.json").is_file():
            what = "does not exist" if not Path(self.model).exists() else "has no eval_results.json"
            raise FileNotFoundError(f"--model {self.model} {what}: give a folder written by training/publish.py")
        if not self.tolerance >= 0:
            raise ValueError(f"--tolerance must be >= 0, got {self.tolerance}")
        if self.num_threads < 0:
            raise ValueError(f"--num_threads must be >= 0, got {self.num_threads}")


def card_settings(folder: Path) -> dict[str, Any]:
    """The card's figures and the settings they were made with, from ``eval_results.json``."""
    card = read_json_object(folder / "eval_results.json", "the card's scores")
    missing = [k for k in SETTINGS if k not in card]
    if missing:
        raise ValueError(f"{folder / 'eval_results.json'} lacks {', '.join(missing)}: not written by training/publish.py")
    return card


def dataset_of(args: RescoreArguments, card: dict[str, Any]) -> str:
    if args.dataset is not None:
        return args.dataset
    beside = REPO.parent / "shared" / "data" / str(card.get("dataset"))
    if not beside.is_dir():
        raise FileNotFoundError(f"the card was scored on {card.get('dataset')!r}, which is not at {beside}: give --dataset")
    return str(beside)


def rescore(args: RescoreArguments) -> dict[str, Any]:
    """The card's and the new figures side by side, and whether they agree."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    folder = Path(args.model)
    card = card_settings(folder)
    check_fingerprint(folder, card.get("fingerprint"), what=f"the card's scores in {folder / 'eval_results.json'}")
    sources, references = load_parallel_text(dataset_of(args, card), card["src_lang"], card["tgt_lang"], card["split"],
                                             card.get("dataset_config"))
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    scores = evaluate_translation(model, tokenizer, sources, references, num_beams=card["num_beams"],
                                  max_new_tokens=card["max_new_tokens"], batch_size=card.get("batch_size", 32),
                                  length_penalty=card["length_penalty"], progress=True)
    same_signature = scores["bleu_signature"] == card["bleu_signature"]
    return {"model": str(folder), "split": card["split"], "sentences": len(sources),
            "card_bleu": card["bleu"], "bleu": scores["bleu"], "card_chrf": card.get("chrf"), "chrf": scores["chrf"],
            "bleu_signature": scores["bleu_signature"], "card_bleu_signature": card["bleu_signature"],
            "agrees": same_signature and abs(scores["bleu"] - card["bleu"]) <= args.tolerance}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    (args,) = parse_args((RescoreArguments,), argv, description=__doc__)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    result = rescore(args)
    print(f"card:       BLEU = {result['card_bleu']:.2f}  ({result['card_bleu_signature']})")
    print(f"re-scored:  BLEU = {result['bleu']:.2f}  ({result['bleu_signature']})  chrF = {result['chrf']:.2f}")
    print(json.dumps(result))
    if not result["agrees"]:
        logger.error("%s: the re-scored BLEU %.2f does not match the card's %.2f (tolerance %.2f, signatures %s)",
                     args.model, result["bleu"], result["card_bleu"], args.tolerance,
                     "equal" if result["bleu_signature"] == result["card_bleu_signature"] else "differ")
        return 1
    return 0


if __name__ == "__main__":
    run_script(main)
