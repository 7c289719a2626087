"""Length settings of RevDarts generation: the decoder's position limit as the default, checked before decoding.

The decoder embeds positions 0..max_position_embeddings-1 and every output token but the last, so an output
may hold up to ``max_position_embeddings + 1`` tokens. Where that default lives depends on the transformers
major:

* 5.x logs "Both `max_new_tokens` and `max_length` seem to have been set" on every
  ``generate(max_new_tokens=...)`` when the model's generation config stores ``max_length``; so it is left
  unset there and ``generate`` passes the limit when the caller gives no length. Folders saved earlier store
  ``max_length = max_position_embeddings``, which is dropped on load.
* 4.57 warns only when ``max_length`` is in the call itself, and its built-in translation pipeline replaces an
  unset (default 20) ``max_length`` by ``max_new_tokens=256``; so the limit is stored there as before.

This file is copied next to saved models (``trust_remote_code``); it imports only torch and transformers.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from transformers import GenerationConfig

TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5
# What generation_config.max_length holds when nobody set it: None on transformers 5, 20 on 4.x.
UNSET_MAX_LENGTH = GenerationConfig().max_length


def normalize_max_length(generation_config: GenerationConfig | None, limit: int) -> None:
    """Bring a model's generation config to this major's convention (see the module docstring)."""
    if generation_config is None:
        return
    if TRANSFORMERS_V5:
        if generation_config.max_length == limit:
            generation_config.max_length = None
    elif generation_config.max_length is None or generation_config.max_length == UNSET_MAX_LENGTH:
        generation_config.max_length = limit


def checked_length_kwargs(
    limit: int,
    model_generation_config: GenerationConfig | None,
    generation_config: GenerationConfig | None,
    inputs: torch.Tensor | None,
    kwargs: dict[str, Any],
    special_ids: set[int] | None = None,
) -> dict[str, Any]:
    """``generate``'s kwargs with ``max_length=limit`` added when no length is given anywhere; raises a
    ``ValueError`` naming the setting when ``max_new_tokens``/``max_length`` would run the decoder past
    ``limit`` positions, ``num_beams`` is below 1, the input is empty or longer than ``limit``, or a row holds
    nothing but ``special_ids`` (an empty text: the decoder would write a sentence that is in no input). Looks
    where ``generate`` does: the call's kwargs, then the ``generation_config`` passed, then the model's."""

    def setting(name: str) -> Any:
        if kwargs.get(name) is not None:
            return kwargs[name]
        for gen in (generation_config, model_generation_config):
            value = getattr(gen, name, None) if gen is not None else None
            if value is not None and not (name == "max_length" and value == UNSET_MAX_LENGTH):
                return value
        return None

    ids = inputs if inputs is not None else kwargs.get("input_ids")
    if isinstance(ids, torch.Tensor) and ids.dim() == 2 and 0 in ids.shape:
        raise ValueError(
            f"input_ids has shape {tuple(ids.shape)}: nothing to translate (the tokenizer gives at least </s> for "
            "each text)"
        )
    if isinstance(ids, torch.Tensor) and ids.dim() == 2:
        if ids.shape[1] > limit:
            raise ValueError(
                f"input_ids has {ids.shape[1]} positions, more than the encoder reads (max_position_embeddings="
                f"{limit}): split the text into sentences, or truncate it (tokenizer truncation=True, max_length="
                f"{limit}) knowing the rest is dropped"
            )
        if special_ids:
            content = ~torch.isin(ids, torch.tensor(sorted(special_ids), device=ids.device))
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
                content &= mask.bool()
            empty = (~content.any(dim=1)).nonzero().flatten().tolist()
            if empty:
                raise ValueError(
                    f"input row(s) {empty[:10]} hold only special tokens, no text: nothing to translate, and the "
                    "decoder would write a sentence that is in no input. Leave empty texts out (their translation "
                    "is ''; the translation pipeline returns that)"
                )
    num_beams = setting("num_beams")
    if num_beams is not None and (not isinstance(num_beams, int) or num_beams < 1):
        raise ValueError(f"num_beams={num_beams!r} must be an integer >= 1 (1 = greedy or sampling)")
    prefix = kwargs.get("decoder_input_ids")
    start = prefix.shape[-1] if isinstance(prefix, torch.Tensor) else 1
    max_new, max_length = setting("max_new_tokens"), setting("max_length")
    if max_new is not None:  # transformers gives max_new_tokens precedence over max_length
        if isinstance(max_new, int) and start + max_new - 1 > limit:
            raise ValueError(
                f"max_new_tokens={max_new} would run the decoder past its position limit (max_position_embeddings="
                f"{limit}): with {start} start token(s) it can produce at most max_new_tokens={limit + 1 - start}"
            )
    elif max_length is not None:
        if isinstance(max_length, int) and max_length - 1 > limit:
            raise ValueError(
                f"max_length={max_length} would run the decoder past its position limit (max_position_embeddings="
                f"{limit}): use max_length <= {limit + 1}, or max_new_tokens"
            )
    else:
        kwargs = {**kwargs, "max_length": limit}
    return kwargs
