"""A joint source/target BPE tokenizer for RevDarts translation models, loadable by transformers 4.57 and 5.x.

``train_tokenizer(texts, vocab_size)`` trains a BPE model with the ``tokenizers`` library on the text of
both languages (one joint vocabulary, as the shared embedding and tied LM head need) and wraps it as a
``PreTrainedTokenizerFast`` whose special tokens match ``RevDartsConfig``'s defaults:

    id 0 ``<pad>`` (pad_token_id), 1 ``<s>`` (bos / decoder_start_token_id), 2 ``</s>`` (eos_token_id), 3 ``<unk>``

Every encoded sequence, source or target, ends with ``</s>`` (a ``TemplateProcessing`` post-processor):
the encoder sees where the sentence ends and the labels teach the decoder to stop. Targets go through
``text_target=``::

    tok = train_tokenizer(src_lines + tgt_lines, vocab_size=8000)
    batch = tok(src, text_target=tgt, truncation=True, max_length=128, padding=True, return_tensors="pt")
    # batch["input_ids"], batch["attention_mask"], batch["labels"] (pad positions: set them to -100 for the loss)

``save_tokenizer(tok, folder)`` saves it beside a model so that ``AutoTokenizer.from_pretrained(folder)``
works on both transformers majors (v5 writes ``"tokenizer_class": "TokenizersBackend"``, which 4.57 cannot
load; ``model_input_names`` must omit ``token_type_ids`` or 4.57's ``generate`` rejects them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0..3, the RevDartsConfig defaults
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]


def _batches(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _checked_texts(texts: Iterable[str]) -> Iterator[str]:
    """``texts``, failing on a non-string and, at the end, when there was no text at all (a vocabulary of only
    the special tokens would turn every word into <unk> without a word of warning)."""
    seen = False
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"tokenizer training text {i} is {type(text).__name__} ({text!r}), not str")
        seen = seen or bool(text.strip())
        yield text
    if not seen:
        raise ValueError("no text to train the tokenizer on: every training sentence is empty")


def build_backend(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = False,
) -> Tokenizer:
    """The raw ``tokenizers.Tokenizer``: NFKC (+ lowercase), Metaspace pre-tokenizer, BPE, ``</s>`` appended."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")
    texts = _checked_texts(texts)
    backend = Tokenizer(models.BPE(unk_token=UNK))
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    backend.normalizer = normalizers.Sequence(norms)
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    backend.train_from_iterator(_batches(texts), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(token) != i:
            raise RuntimeError(f"special token {token!r} got id {backend.token_to_id(token)}, expected {i}")
    eos_id = backend.token_to_id(EOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}",
        pair=f"$A {EOS} $B:1 {EOS}:1",
        special_tokens=[(EOS, eos_id)],
    )
    return backend


def wrap_backend(backend: Tokenizer, model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` around ``backend`` with the RevDarts special tokens and input names."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
        truncation_side="right",
        model_input_names=list(MODEL_INPUT_NAMES),
        clean_up_tokenization_spaces=False,
    )
    tok.model_input_names = list(MODEL_INPUT_NAMES)
    return tok


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = False,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a joint BPE vocabulary on ``texts`` (source and target lines together) and wrap it.

    The vocabulary may come out smaller than ``vocab_size`` on little text; use ``len(tokenizer)`` as the
    model's ``vocab_size``.
    """
    tokenizer = wrap_backend(build_backend(texts, vocab_size, min_frequency, lowercase), model_max_length)
    if len(tokenizer) > vocab_size:
        logger.warning("vocab_size=%d is below what the text needs: the tokenizer keeps every character of it and has "
                       "%d tokens (the model is built for %d)", vocab_size, len(tokenizer), len(tokenizer))
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | os.PathLike) -> list[str]:
    """``tokenizer.save_pretrained(folder)``, then make tokenizer_config.json loadable by transformers 4.57+."""
    files = list(tokenizer.save_pretrained(str(folder)))
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # v5 writes "TokenizersBackend"
    config["model_input_names"] = list(MODEL_INPUT_NAMES)
    config.setdefault("model_max_length", tokenizer.model_max_length)
    for name in ("pad_token", "bos_token", "eos_token", "unk_token"):
        config[name] = str(getattr(tokenizer, name))
    config["padding_side"] = tokenizer.padding_side
    config["clean_up_tokenization_spaces"] = False
    config.pop("auto_map", None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return files


def load_tokenizer(folder: str | os.PathLike) -> PreTrainedTokenizerFast:
    """``PreTrainedTokenizerFast.from_pretrained(folder)`` with errors that name the folder or the broken file
    (transformers reports a damaged tokenizer.json as a bare ``JSONDecodeError``)."""
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer (tokenizer.json); save the tokenizer beside the model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path} is not valid JSON ({e}): the tokenizer file is damaged or truncated") from e
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(folder))
    except Exception as e:  # noqa: BLE001 - tokenizers raises bare Exception subclasses for bad models
        raise ValueError(f"the tokenizer in {folder} cannot be loaded: {type(e).__name__}: {e}") from e


def encode_pairs(
    tokenizer: PreTrainedTokenizerFast,
    sources: list[str],
    targets: list[str] | None = None,
    max_length: int = 128,
    padding: bool | str = True,
    return_tensors: str | None = "pt",
):
    """Tokenize a batch of sentence pairs for training/evaluation: ``input_ids``, ``attention_mask`` and,
    with ``targets``, ``labels`` (each ending with ``</s>``) whose padding is -100 (ignored by the loss)."""
    if targets is not None and len(targets) != len(sources):
        raise ValueError(f"{len(sources)} source sentences but {len(targets)} targets: pairs must be aligned")
    batch = tokenizer(
        sources,
        text_target=targets,
        truncation=True,
        max_length=max_length,
        padding=padding,
        return_tensors=return_tensors,
    )
    if targets is not None and padding:
        labels = batch["labels"]
        pad = tokenizer.pad_token_id
        if return_tensors == "pt":
            batch["labels"] = labels.masked_fill(labels == pad, -100)
        else:
            batch["labels"] = [[-100 if t == pad else t for t in row] for row in labels]
    return batch
