"""The translation pipeline: loaded from a saved folder through transformers' pipeline() (remote code), one text and
a padded batch give what generate() gives; on 4.57 transformers' built-in TranslationPipeline agrees with it."""

from __future__ import annotations

import pytest
import transformers

MAJOR = int(transformers.__version__.split(".")[0])


def test_translation_pipeline(saved, model, tokenizer, corpus):
    from transformers import pipeline

    folder, _, _ = saved
    en, _ = corpus
    translate = pipeline("translation", model=str(folder), trust_remote_code=True)
    assert type(translate).__name__ == "TranslationPipeline"
    one = translate(en[0], max_length=12, num_beams=2)
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"translation_text"}
    ids = model.generate(**tokenizer(en[0], return_tensors="pt"), max_length=12, num_beams=2)
    assert one[0]["translation_text"] == tokenizer.decode(ids[0], skip_special_tokens=True)
    assert one[0]["translation_text"].strip()

    texts = [en[1], en[3][:20], en[4]]
    many = translate(texts, batch_size=2, max_new_tokens=6)
    assert len(many) == 3 and all(set(r) == {"translation_text"} for r in many)
    singles = [translate(t, max_new_tokens=6)[0] for t in texts]
    assert many == singles  # batching (padding) does not change a translation

    several = translate(en[0], max_new_tokens=5, num_beams=3, num_return_sequences=2)
    assert len(several) == 2


@pytest.mark.skipif(MAJOR >= 5, reason="transformers 5 removed its built-in translation pipeline")
def test_builtin_translation_pipeline_on_v4(model, tokenizer, corpus):
    """On 4.57 the built-in TranslationPipeline works with the model too, and agrees with ours."""
    from transformers import TranslationPipeline as Builtin

    from hf_revdarts.model.pipeline_translation import TranslationPipeline

    en, _ = corpus
    builtin = Builtin(model=model, tokenizer=tokenizer)
    ours = TranslationPipeline(model=model, tokenizer=tokenizer)
    texts = [en[0], en[7]]
    assert builtin(texts, max_length=10, num_beams=2) == ours(texts, max_length=10, num_beams=2)
