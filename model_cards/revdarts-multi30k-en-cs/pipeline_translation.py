"""A ``translation`` pipeline for encoder-decoder models: text in, ``[{"translation_text": ...}]`` out.

transformers 5 removed its translation (text2text) pipeline. This one is shipped inside saved RevDarts
folders as a custom pipeline (config.json ``custom_pipelines`` → ``pipeline_translation.TranslationPipeline``),
so that, on transformers 4.57 and 5.x alike::

    from transformers import pipeline
    translate = pipeline("translation", model="path/to/folder", trust_remote_code=True)
    translate("A man is riding a bike.", num_beams=4, max_length=64)
    # [{'translation_text': '...'}]
    translate(["one sentence", "another one"], batch_size=2)
    # [{'translation_text': '...'}, {'translation_text': '...'}]

Any ``generate`` argument (``max_length``, ``max_new_tokens``, ``num_beams``, ``do_sample``,
``num_return_sequences``, ...) passes through, at construction or per call. It can also be used directly:
``TranslationPipeline(model=model, tokenizer=tokenizer)``.

Nothing is invented and nothing is dropped without being asked for:

* an empty or blank text (``""``, ``"   "``) translates to ``""``: a decoder given nothing would still write a
  fluent sentence, which is in no input;
* a text longer than the model's position limit (``max_position_embeddings`` tokens, or ``max_source_length``)
  is a ``ValueError`` naming both lengths: split it (one sentence per list item: the model translates sentences)
  or pass ``truncation=True`` to translate only its first tokens, knowing the rest is dropped.

This file is copied next to saved models (``trust_remote_code``); it imports only torch and transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Pipeline

# Pipeline parameters that are not generate() arguments.
_PREPROCESS_KEYS = ("truncation", "max_source_length", "src_lang", "tgt_lang")
_POSTPROCESS_KEYS = ("return_tensors", "return_text", "clean_up_tokenization_spaces")


class TranslationPipeline(Pipeline):
    """Translate with ``model.generate``; returns ``[{"translation_text": str}]`` per input (one dict per
    returned sequence; ``translation_token_ids`` instead of text with ``return_tensors=True``)."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(self, **kwargs: Any):
        preprocess = {k: kwargs.pop(k) for k in _PREPROCESS_KEYS if k in kwargs}
        postprocess = {k: kwargs.pop(k) for k in _POSTPROCESS_KEYS if k in kwargs}
        # Whatever is left is for generate(): max_length, max_new_tokens, num_beams, do_sample, ...
        generate_kwargs = dict(kwargs.pop("generate_kwargs", None) or {})
        generate_kwargs.update(kwargs)
        return preprocess, {"generate_kwargs": generate_kwargs}, postprocess

    def __call__(self, inputs: str | list[str], **kwargs: Any):
        """Translate one text or a list of texts (``batch_size=`` batches them, padded)."""
        if isinstance(inputs, list) and not inputs:
            return []  # nothing to translate (transformers' Pipeline would fail with an IndexError)
        texts = inputs if isinstance(inputs, list) else [inputs]
        blank = [isinstance(t, str) and not t.strip() for t in texts]
        if not any(blank):
            result = super().__call__(inputs, **kwargs)
        else:
            # Blank texts never reach generate: their translation is "" (as many as sequences were asked for).
            copies = kwargs.get("num_return_sequences") or (kwargs.get("generate_kwargs") or {}).get(
                "num_return_sequences") or getattr(getattr(self.model, "generation_config", None),
                                                   "num_return_sequences", None) or 1
            nothing = [{"translation_text": ""} for _ in range(copies)]
            rest = [t for t, b in zip(texts, blank) if not b]
            done = iter(super().__call__(rest, **kwargs) if rest else [])
            result = [list(nothing) if b else next(done) for b in blank]
            if not isinstance(inputs, list):
                return result[0]
        # Like the old TranslationPipeline: a list of texts with one translation each gives a flat list.
        if isinstance(inputs, list) and all(isinstance(r, list) and len(r) == 1 for r in result):
            return [r[0] for r in result]
        return result

    def preprocess(self, text: str, truncation: bool = False, max_source_length: int | None = None, **_: Any):
        if not isinstance(text, str):
            raise ValueError(f"the translation pipeline takes str inputs (or a list of str), got {type(text).__name__}")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        max_len = max_source_length if max_source_length is not None else limit
        if max_source_length is not None:
            if isinstance(max_source_length, bool) or not isinstance(max_source_length, int) or max_source_length < 1:
                raise ValueError(f"max_source_length={max_source_length!r} must be a positive integer")
            if limit is not None and max_source_length > limit:
                raise ValueError(
                    f"max_source_length={max_source_length} exceeds the model's max_position_embeddings={limit}: "
                    "longer inputs cannot be encoded"
                )
        encoded = self.tokenizer(
            text,
            return_tensors="pt",
            truncation=bool(truncation) and max_len is not None,
            max_length=max_len if truncation else None,
            return_token_type_ids=False,
            verbose=False,
        )
        length = encoded["input_ids"].shape[-1]
        if max_len is not None and length > max_len:
            which = "max_source_length" if max_source_length is not None else "max_position_embeddings"
            raise ValueError(
                f"the text {text[:40]!r}... is {length} tokens long, more than the model reads ({which}={max_len}): "
                "split it into sentences and pass them as a list, or pass truncation=True to translate only its "
                f"first {max_len} tokens (the rest is then dropped)"
            )
        return encoded

    def _forward(self, model_inputs: dict[str, torch.Tensor], generate_kwargs: dict[str, Any] | None = None):
        generate_kwargs = dict(generate_kwargs or {})
        inputs = {k: v for k, v in model_inputs.items() if k in ("input_ids", "attention_mask")}
        batch = inputs["input_ids"].shape[0]
        output_ids = self.model.generate(**inputs, **generate_kwargs)
        if not isinstance(output_ids, torch.Tensor):  # return_dict_in_generate=True
            output_ids = output_ids.sequences
        # (batch, num_return_sequences, length): the pipeline's unbatching then yields one item per input.
        return {"output_ids": output_ids.reshape(batch, output_ids.shape[0] // batch, *output_ids.shape[1:])}

    def postprocess(
        self,
        model_outputs: dict[str, torch.Tensor],
        return_tensors: bool = False,
        return_text: bool = True,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[dict[str, Any]]:
        records = []
        for ids in model_outputs["output_ids"][0]:
            if return_tensors:
                records.append({"translation_token_ids": ids})
            elif return_text:
                text = self.tokenizer.decode(
                    ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
                )
                records.append({"translation_text": text})
        return records
