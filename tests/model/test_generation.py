"""Generation and the translation pipeline on a small model: quiet by default, a plain call runs up to the position
limit, a length past it and malformed batches are refused naming the setting, and a folder whose generation config
stores ``max_length`` (as transformers 4.57 saves it) loads and generates quietly."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
import transformers

from testing.builders import save_model_folder, small_model


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _generate_quietly(model, **kw) -> tuple[torch.Tensor, list[str]]:
    handler = _Records()
    log = logging.getLogger("transformers")
    log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = model.generate(**kw)
    finally:
        log.removeHandler(handler)
    return out, handler.messages + [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def gen_model(small_tokenizer):
    return small_model(vocab_size=len(small_tokenizer), max_position_embeddings=12).eval()


def test_generation_is_quiet_and_plain_calls_reach_the_position_limit(gen_model, small_tokenizer):
    enc = dict(small_tokenizer(["a man rides a bike"], return_tensors="pt"))
    eos = gen_model.config.eos_token_id
    out, said = _generate_quietly(gen_model, **enc, max_new_tokens=4, suppress_tokens=[eos])
    assert out.shape[1] == 5 and not said, said
    out, said = _generate_quietly(gen_model, **enc, suppress_tokens=[eos])
    assert out.shape[1] == 12 and not said, said  # no length given: up to max_position_embeddings
    out, said = _generate_quietly(gen_model, **enc, max_new_tokens=12, suppress_tokens=[eos], num_beams=2)
    assert out.shape[1] == 13 and not said, said  # the exact limit: the last token is never embedded


def test_generation_past_the_position_limit_names_the_length_setting(gen_model, small_tokenizer):
    enc = dict(small_tokenizer(["a man rides a bike"], return_tensors="pt"))
    with pytest.raises(ValueError, match=r"max_new_tokens=20 .*max_position_embeddings=12.*at most max_new_tokens=12"):
        gen_model.generate(**enc, max_new_tokens=20)
    with pytest.raises(ValueError, match=r"max_length=40 .*max_position_embeddings=12"):
        gen_model.generate(**enc, max_length=40)
    with pytest.raises(ValueError, match="num_beams=0 must be an integer >= 1"):
        gen_model.generate(**enc, num_beams=0)
    with pytest.raises(ValueError, match=r"input_ids has shape \(1, 0\)"):
        gen_model.generate(input_ids=torch.zeros(1, 0, dtype=torch.long))


def test_folder_that_stores_max_length_loads_and_generates_quietly(gen_model, small_tokenizer, tmp_path):
    folder = save_model_folder(gen_model, small_tokenizer, tmp_path / "old")
    config = json.loads((folder / "generation_config.json").read_text())
    assert ("max_length" in config) == (int(transformers.__version__.split(".")[0]) < 5)  # 4.57 keeps storing the limit
    config["max_length"] = gen_model.config.max_position_embeddings  # as a folder saved under 4.57 holds it
    (folder / "generation_config.json").write_text(json.dumps(config))
    loaded = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    enc = dict(small_tokenizer(["two dogs play"], return_tensors="pt"))
    out, said = _generate_quietly(loaded, **enc, max_new_tokens=3, suppress_tokens=[2])
    assert out.shape[1] == 4 and not said, said
    out, said = _generate_quietly(loaded, **enc, suppress_tokens=[2])
    assert out.shape[1] == 12 and not said, said


def test_forward_refuses_mismatched_batches(gen_model):
    ids = torch.tensor([[5, 6, 2]])
    with pytest.raises(ValueError, match="decoder inputs .* have 2 rows but the encoder inputs 1"):
        gen_model(input_ids=ids, labels=torch.tensor([[5, 6, 2], [7, 8, 2]]))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 5\) but the input \(1, 3\)"):
        gen_model(input_ids=ids, attention_mask=torch.ones(1, 5, dtype=torch.long), labels=ids)


def test_pipeline_edge_inputs(gen_model, small_tokenizer):
    from hf_revdarts import TranslationPipeline

    translate = TranslationPipeline(model=gen_model, tokenizer=small_tokenizer)
    assert translate([]) == []
    assert len(translate(["a man", "a bike"], max_new_tokens=3)) == 2
    with pytest.raises(ValueError, match="max_source_length=0 must be a positive integer"):
        translate("a man", max_source_length=0)
    with pytest.raises(ValueError, match="max_source_length=100 exceeds the model's max_position_embeddings=12"):
        translate("a man", max_source_length=100)
