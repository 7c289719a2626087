"""Random genotypes: uniform over the derivation's space (zero excluded), seeded, valid for RevDartsConfig."""

from __future__ import annotations

from collections import Counter

import pytest

from hf_revdarts import RevDartsConfig
from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS, Genotype

SIZES = {"encoder_layers": 4, "decoder_layers": 4}


def test_seeded_deterministic_and_valid():
    a = Genotype.random(SIZES, seed=3)
    assert a == Genotype.random(SIZES, seed=3)
    assert a != Genotype.random(SIZES, seed=4)
    assert [len(x) for x in a.encoder] == [2] * 4 and [len(x) for x in a.decoder] == [2] * 4
    config = RevDartsConfig(vocab_size=50, d_model=48, num_heads=2, encoder_layers=4, decoder_layers=4,
                            encoder_genotype=a.encoder, decoder_genotype=a.decoder)
    assert config.get_genotype() == a  # and the config accepts it
    # sizes can come from a config too
    assert Genotype.random(config, seed=3) == a


def test_uniform_over_the_space_without_zero():
    enc, dec = Counter(), Counter()
    for seed in range(400):
        g = Genotype.random({"encoder_layers": 1, "decoder_layers": 1}, seed=seed)
        enc.update(g.encoder[0])
        dec.update(g.decoder[0])
    assert "zero" not in enc and "zero" not in dec
    assert set(enc) == set(ENCODER_OPS) - {"zero"}  # 12 ops, each ~67 of 800 draws
    assert set(dec) == set(DECODER_OPS) - {"zero"}  # cross_attn is a candidate of the decoder's searched splits
    assert min(enc.values()) > 30 and max(enc.values()) < 110
    with_zero = Counter()
    for seed in range(200):
        with_zero.update(Genotype.random({"encoder_layers": 2, "decoder_layers": 1}, seed=seed, exclude=()).encoder[0])
    assert with_zero["zero"] > 0


def test_tied_blocks_and_custom_space():
    g = Genotype.random(SIZES, encoder_ops=["conv_3", "glu", "zero"], decoder_ops=["ffn", "self_attn"], seed=1,
                        tie_blocks=2)
    assert g.encoder[0:2] == g.encoder[2:4] and g.decoder[0:2] == g.decoder[2:4]
    assert {op for layer in g.encoder for op in layer} <= {"conv_3", "glu"}
    assert {op for layer in g.decoder for op in layer} <= {"ffn", "self_attn"}


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown encoder op"):
        Genotype.random(SIZES, encoder_ops=["cross_attn"])
    with pytest.raises(ValueError, match="empty once"):
        Genotype.random(SIZES, encoder_ops=["zero"])
    with pytest.raises(ValueError, match="encoder_layers"):
        Genotype.random({"decoder_layers": 2})
    with pytest.raises(ValueError, match="tie_blocks"):
        Genotype.random(SIZES, tie_blocks=-1)
