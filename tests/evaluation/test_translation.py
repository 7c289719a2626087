"""Translating with a model folder from training/train.py: beam-only settings reach beam search only, and a folder without its
tokenizer or weights, with corrupt weights or with another tokenizer is refused naming what is wrong."""

from __future__ import annotations

import shutil

import pytest

from hf_revdarts.evaluation.translation import load_model_folder
from testing import REPO


def test_translate_passes_length_penalty_to_beam_search(recipe_trained):
    from hf_revdarts.evaluation.translation import translate

    model, tok = load_model_folder(recipe_trained / "best")
    seen = []
    generate = model.generate
    model.generate = lambda **kw: seen.append(kw) or generate(**kw)
    translate(model, tok, ["The man sees the ball."], num_beams=3, max_new_tokens=4, length_penalty=0.6)
    translate(model, tok, ["The man sees the ball."], num_beams=1, max_new_tokens=4, length_penalty=0.6)
    assert seen[0]["num_beams"] == 3 and seen[0]["length_penalty"] == 0.6
    assert "length_penalty" not in seen[1], "a beam-only setting is not passed to greedy decoding"


def test_bad_model_folders_are_clear_errors(recipe_trained, tmp_path):
    best = recipe_trained / "best"
    no_tok = tmp_path / "no_tok"
    shutil.copytree(best, no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_model_folder(no_tok)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(best, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        load_model_folder(no_weights)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(best, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_model_folder(corrupt)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(best, mismatch)
    from hf_revdarts.training.tokenization import save_tokenizer, train_tokenizer

    other = train_tokenizer((REPO / "samples" / "en-de" / "train.en").read_text().splitlines(), vocab_size=120)
    save_tokenizer(other, mismatch)
    with pytest.raises(ValueError, match="vocab_size"):
        load_model_folder(mismatch)
