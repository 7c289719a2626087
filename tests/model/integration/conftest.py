"""Fixtures of the transformers integration tests: a corpus (Multi30k when it lies beside the repository, else a
few built-in sentences), a tokenizer trained on it, a model whose decoder uses every op, with random weights large
enough for varied generations, a padded batch, and that model saved as a folder with its tokenizer.

The tests of this folder run on transformers 5.x (the main suite) and on 4.57.x (.ci/integration_457.sh runs this
folder in a second environment that has the model's dependencies only): keep them version-neutral, and import
only hf_revdarts's model and tokenizer here."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import torch

from hf_revdarts import RevDartsForConditionalGeneration
from hf_revdarts.training.tokenization import save_tokenizer, train_tokenizer
from testing import REPO
from testing.builders import every_op_config

DATA = Path(os.environ.get("HF_REVDARTS_DATA", REPO.parent / "shared" / "data" / "multi30k"))
FALLBACK_EN = [
    "A man is riding a bike.",
    "Two dogs play in the snow.",
    "A girl is reading a book in the park.",
    "People are walking down the street.",
]
FALLBACK_DE = [
    "Ein Mann fährt Fahrrad.",
    "Zwei Hunde spielen im Schnee.",
    "Ein Mädchen liest ein Buch im Park.",
    "Leute gehen die Straße entlang.",
]


def _lines(lang: str, n: int = 200) -> list[str]:
    path = DATA / f"train.{lang}.gz"
    if not path.exists():  # keep the tests self-contained without the shared data
        return (FALLBACK_EN if lang == "en" else FALLBACK_DE) * 10
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            out.append(line.strip())
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP waits make each
    # small op take milliseconds: run this module single-threaded, then restore.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    return _lines("en"), _lines("de")


@pytest.fixture(scope="module")
def tokenizer(corpus):
    en, de = corpus
    return train_tokenizer(en + de, vocab_size=300, min_frequency=1, model_max_length=64)


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights large enough that greedy/beam decoding does not repeat one token (untied head)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "lm_head" in name else 0.3))
    return model.eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return perturbed(RevDartsForConditionalGeneration(every_op_config(len(tokenizer))))


@pytest.fixture(scope="module")
def batch(tokenizer, corpus):
    en, _ = corpus
    # Different lengths: right-padded source, so the encoder/cross-attention masks matter.
    texts = [en[0], en[2][:18], en[5][:40]]
    return tokenizer(texts, padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model, tokenizer, batch):
    folder = tmp_path_factory.mktemp("saved") / "revdarts-every-op"
    model.save_pretrained(folder)
    save_tokenizer(tokenizer, folder)
    dec = torch.full((3, 4), 5)
    dec[:, 0] = 1
    inputs = {**batch, "decoder_input_ids": dec}
    torch.save(dict(inputs), folder / "_inputs.pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    ref = model.generate(**batch, max_new_tokens=8, num_beams=4)
    return folder, logits, ref
