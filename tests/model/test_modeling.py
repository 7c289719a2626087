"""RevDartsForConditionalGeneration: padding never reaches real positions, a save/load round trip keeps the outputs
and the tied head, and inputs the model cannot take are refused."""

from __future__ import annotations

import pytest
import torch

from hf_revdarts import RevDartsForConditionalGeneration
from testing.builders import padded_batch, tiny_config


def test_padding_never_changes_real_positions():
    config = tiny_config(layers=2)
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(config).eval()
    src = torch.randint(4, config.vocab_size, (1, 6))
    tgt = torch.randint(4, config.vocab_size, (1, 5))
    padded_src = torch.cat([src, torch.full((1, 4), 7)], dim=1)  # junk behind the mask, not pad ids
    src_mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    padded_tgt = torch.cat([tgt, torch.full((1, 3), 9)], dim=1)
    with torch.no_grad():
        ref = model(input_ids=src, decoder_input_ids=tgt).logits
        got = model(input_ids=padded_src, attention_mask=src_mask, decoder_input_ids=padded_tgt).logits
    torch.testing.assert_close(got[:, :5], ref, rtol=1e-5, atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(layers=2, embedding_dim=32)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = RevDartsForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.encoder_genotype == model.config.encoder_genotype
    assert loaded.lm_head.weight.data_ptr() == loaded.model.shared.weight.data_ptr()  # tied after loading
    batch = padded_batch(model.config.vocab_size)
    with torch.no_grad():
        for m in (model, loaded):
            m.out = m(**batch).logits
    assert torch.equal(model.out, loaded.out)


def test_too_long_input_and_foreign_token_ids_are_rejected():
    model = RevDartsForConditionalGeneration(tiny_config(max_position_embeddings=8)).eval()
    with pytest.raises(ValueError, match="max_position_embeddings=8"):
        model(input_ids=torch.ones(1, 9, dtype=torch.long), decoder_input_ids=torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(input_ids=torch.full((1, 3), 999), decoder_input_ids=torch.ones(1, 2, dtype=torch.long))
