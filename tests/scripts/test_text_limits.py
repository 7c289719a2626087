"""Nothing invented, nothing dropped: blank text translates to nothing, text past the position limit is refused
unless truncation is asked for, and evaluation's translate keeps every sentence and says what it cut."""

from __future__ import annotations

import logging

import pytest
import torch

from hf_revdarts.evaluation.translation import load_model_folder, translate


@pytest.fixture(scope="module")
def loaded(script_trained):
    return load_model_folder(script_trained / "best")


def test_pipeline_translates_blank_text_to_nothing(loaded, monkeypatch):
    from hf_revdarts import TranslationPipeline

    model, tokenizer = loaded
    translate_ = TranslationPipeline(model=model, tokenizer=tokenizer)
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw["input_ids"].shape) or generate(**kw))
    assert translate_("") == [{"translation_text": ""}]
    assert translate_("  \n ") == [{"translation_text": ""}]
    assert not calls, "blank text never reaches generate"
    out = translate_(["", "The man sees the ball.", " ", "A dog runs."], batch_size=2, max_new_tokens=4)
    assert [r["translation_text"] == "" for r in out] == [True, False, True, False] and len(calls) == 1
    assert out[1] == translate_("The man sees the ball.", max_new_tokens=4)[0]
    several = translate_(["", "A dog runs."], num_beams=2, num_return_sequences=2, max_new_tokens=4)
    assert several[0] == [{"translation_text": ""}] * 2 and len(several[1]) == 2
    with pytest.raises(ValueError, match="takes str inputs .*got NoneType"):
        translate_(["A dog runs.", None])
    with pytest.raises(ValueError, match="num_return_sequences"):  # transformers' own message names the setting
        translate_("A dog runs.", num_return_sequences=2, max_new_tokens=4)


def test_pipeline_refuses_text_past_the_position_limit_unless_asked_to_truncate(loaded):
    from hf_revdarts import TranslationPipeline

    model, tokenizer = loaded
    translate_ = TranslationPipeline(model=model, tokenizer=tokenizer)
    text = " ".join(["the man sees the ball ."] * 400)
    limit = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=rf"is \d+ tokens long, more than the model reads \(max_position_embeddings="
                                         rf"{limit}\): split it into sentences .* or pass truncation=True"):
        translate_(text, max_new_tokens=4)
    with pytest.raises(ValueError, match=r"more than the model reads \(max_source_length=8\)"):
        translate_("the man sees the ball in the park .", max_source_length=8)
    assert len(translate_(text, truncation=True, max_new_tokens=4)) == 1  # asked for: the first tokens only


def test_generate_refuses_rows_without_text_and_inputs_past_the_limit(loaded):
    model, tokenizer = loaded
    eos = model.config.eos_token_id
    with pytest.raises(ValueError, match=r"input row\(s\) \[0\] hold only special tokens, no text"):
        model.generate(input_ids=torch.tensor([[eos]]), max_new_tokens=3)
    batch = tokenizer(["A dog runs.", ""], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match=r"input row\(s\) \[1\] hold only special tokens"):
        model.generate(**batch, max_new_tokens=3)
    with pytest.raises(ValueError, match=r"input row\(s\) \[0\]"):
        model.generate(input_ids=torch.tensor([[5, 6, eos]]), attention_mask=torch.zeros(1, 3, dtype=torch.long),
                       max_new_tokens=3)
    limit = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=rf"input_ids has {limit + 1} positions, more than the encoder reads"):
        model.generate(input_ids=torch.full((1, limit + 1), 7), max_new_tokens=3)


def test_translate_keeps_every_sentence_and_reports_what_it_cut(loaded, caplog):
    model, tokenizer = loaded
    long = " ".join(["the man sees the ball ."] * 40)
    report: dict = {}
    with caplog.at_level(logging.WARNING, logger="hf_revdarts.evaluation.translation"):
        out = translate(model, tokenizer, ["", "A dog runs.", long, "  "], num_beams=1, max_new_tokens=4,
                        max_source_length=16, report=report)
    assert out[0] == out[3] == "" and len(out) == 4
    assert report == {"empty_sources": [0, 3], "truncated_sources": [2]}
    assert "1 of 4 source sentences are longer than 16 tokens" in caplog.text
