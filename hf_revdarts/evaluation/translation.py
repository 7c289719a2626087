"""Load a saved model folder, translate with ``generate`` and score with sacreBLEU (BLEU and chrF).

Scores come from the ``sacrebleu`` library itself, with their signatures, so that they are comparable
with published figures and need no download. They are computed in one place, the ``evaluate`` module
``sacrebleu_chrf.py`` (through ``metric.bleu_and_chrf``): BLEU cased detokenised (primary) and lowercased 13a
(to compare with papers), and chrF.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .metric import bleu_and_chrf

logger = logging.getLogger(__name__)


def load_model_folder(folder: str | os.PathLike) -> tuple[torch.nn.Module, Any]:
    """Model (in eval mode) and tokenizer of a saved folder, loaded with ``AutoModelForSeq2SeqLM`` /
    ``AutoTokenizer`` as a user would, with errors that say what is missing or broken."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    import hf_revdarts.model  # noqa: F401  (registers the revdarts model type)

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: no config.json")
    single = folder / "model.safetensors"
    shards = [single] if single.is_file() else sorted(folder.glob("model-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{folder} has no weights (model.safetensors)")
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer (tokenizer.json); save the tokenizer beside the model")
    try:
        for shard in shards:
            with safe_open(str(shard), framework="pt") as f:
                list(f.keys())
    except Exception as e:  # safetensors raises its own error types for truncated/garbled headers
        raise ValueError(f"{folder}: the weights file is corrupt or truncated ({e})") from e
    # transformers names neither file when a value is wrong, and silently falls back to defaults when
    # generation_config.json is unreadable: both are checked here so that the message names the file.
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        try:
            if path.is_file():
                json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is not valid JSON ({e}): the file is damaged or truncated") from e
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{folder / 'config.json'}: {e}") from e
    if "RevDartsSupernet" in (getattr(config, "architectures", None) or []):
        raise ValueError(
            f"{folder} is a search's supernet (RevDartsSupernet), not a translation model: train the genotype the "
            "search derived (training/train.py --genotype <search folder>) and give its best/ or averaged/ folder"
        )
    model, info = AutoModelForSeq2SeqLM.from_pretrained(folder, config=config, output_loading_info=True)
    # transformers initialises missing weights at random and says so only in its log: a model that is partly
    # random must not be translated, scored or published.
    tied = set(getattr(model, "_tied_weights_keys", None) or ())  # saved once, tied again on load
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in info.get(kind, ()) if not (kind == "missing_keys" and k in tied))
        if keys:
            raise ValueError(
                f"{folder / 'model.safetensors'} does not fit its config.json: {len(keys)} {kind.replace('_', ' ')} "
                f"({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}); the weights belong to another model"
            )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}; they were not saved together"
        )
    return model.eval(), tokenizer


def translation_batches(sentences: Sequence[str], batch_size: int) -> list[list[int]]:
    """The batches ``translate`` makes, as sentence indices: blank sentences left out, the others sorted by length
    in characters (ties in order) so that padding stays small, cut into ``batch_size``. A batch's translations
    depend on what is padded together, so a check that repeats some of them repeats these batches."""
    order = sorted((i for i, s in enumerate(sentences) if s.strip()), key=lambda i: len(sentences[i]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


@torch.no_grad()
def translate(
    model: Any,
    tokenizer: Any,
    sentences: list[str],
    num_beams: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    max_source_length: int | None = None,
    progress: bool = False,
    length_penalty: float = 1.0,
    report: dict[str, Any] | None = None,
) -> list[str]:
    """Translate with ``generate`` (cached decoding), batches sorted by length so padding stays small.
    ``length_penalty`` is the beam score's length exponent (>1 favours longer output; beam search only).

    A score must cover every sentence, so none is left out: a blank source translates to "" (generate would
    invent a sentence for it), and one longer than ``max_source_length`` (default: the model's position limit)
    is translated from its first tokens, with a warning. ``report``, when given, receives their indices
    (``empty_sources``, ``truncated_sources``)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = max_source_length or model.config.max_position_embeddings
    lengths = [len(ids) for ids in tokenizer(list(sentences), verbose=False)["input_ids"]] if sentences else []
    truncated = [i for i, n in enumerate(lengths) if n > limit]
    empty = [i for i, s in enumerate(sentences) if not s.strip()]
    if truncated:
        logger.warning("%d of %d source sentences are longer than %d tokens and are translated from their first %d "
                       "tokens only (sentences %s)", len(truncated), len(sentences), limit, limit, truncated[:10])
    if report is not None:
        report.update(empty_sources=empty, truncated_sources=truncated)
    out: list[str] = [""] * len(sentences)
    # generate warns about a beam-only setting under greedy decoding, so it is passed with beams only.
    beam_settings = {"length_penalty": length_penalty} if num_beams > 1 else {}
    for idx in tqdm(translation_batches(sentences, batch_size), desc="translate", disable=not progress):
        enc = tokenizer(
            [sentences[i] for i in idx], return_tensors="pt", padding=True, truncation=True, max_length=limit,
        ).to(device)
        gen = model.generate(**enc, num_beams=num_beams, max_new_tokens=max_new_tokens, **beam_settings)
        for i, text in zip(idx, tokenizer.batch_decode(gen, skip_special_tokens=True)):
            out[i] = text.strip()
    model.train(was_training)
    return out


def evaluate_translation(
    model: Any,
    tokenizer: Any,
    sources: list[str],
    references: list[str],
    num_beams: int = 4,
    max_new_tokens: int = 64,
    batch_size: int = 32,
    progress: bool = False,
    length_penalty: float = 1.0,
) -> dict[str, Any]:
    """Translate ``sources`` and score against ``references``: the scores of ``bleu_and_chrf`` plus the
    decoding settings, ``translate_seconds`` and the ``hypotheses``."""
    start = time.time()
    report: dict[str, Any] = {}
    hypotheses = translate(
        model, tokenizer, sources, num_beams=num_beams, max_new_tokens=max_new_tokens, batch_size=batch_size,
        progress=progress, length_penalty=length_penalty, report=report,
    )
    seconds = time.time() - start
    return {
        "num_beams": num_beams,
        "length_penalty": length_penalty,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "translate_seconds": round(seconds, 1),
        **bleu_and_chrf(hypotheses, references),
        # how many sources were not translated whole (blank ones get "", long ones their first tokens' translation)
        "empty_sources": len(report["empty_sources"]),
        "truncated_sources": len(report["truncated_sources"]),
        "hypotheses": hypotheses,
    }
