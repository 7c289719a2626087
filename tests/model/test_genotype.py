"""The Genotype type: its JSON form, checks that name the problem, stacking, the standard Transformer, node
agreement; random genotypes uniform over the derivation's space (zero excluded), seeded, valid for RevDartsConfig."""

from __future__ import annotations

import json
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


def test_a_genotype_is_its_json_form(tmp_path):
    data = {"encoder": [["conv_3", "glu"]], "decoder": [["dynconv_7", "cross_attn"]]}
    g = Genotype.from_dict(data)
    assert g == data and json.loads(json.dumps(g)) == data and g.to_dict() == data
    assert g.encoder == [["conv_3", "glu"]] and g["decoder"] == g.decoder
    (tmp_path / "genotype.json").write_text(g.to_json())
    assert Genotype.load(tmp_path / "genotype.json") == g
    assert Genotype.from_dict(g) is g
    copy = g.to_dict()
    copy["encoder"][0][0] = "ffn"
    assert g.encoder[0][0] == "conv_3", "to_dict returns a copy"


def test_bad_genotypes_are_named():
    cases = [
        ({"encoder": [["conv_3", "conv_4"]], "decoder": [["ffn", "ffn"]]}, "unknown op 'conv_4'"),
        ({"encoder": [["cross_attn", "ffn"]], "decoder": [["ffn", "ffn"]]}, "only exists in the decoder"),
        ({"encoder": [], "decoder": [["ffn", "ffn"]]}, "encoder_genotype is empty"),
        ({"encoder": ["ffn", "ffn"], "decoder": [["ffn", "ffn"]]}, r"encoder_genotype\[0\] must list"),
        ({"encoder": [["ffn", "ffn"], ["ffn"]], "decoder": [["ffn", "ffn"]]}, r"encoder_genotype\[1\] must list 2"),
        ({"encoder": [["ffn", "ffn"]]}, "must hold"),
        ([["ffn"]], "must hold"),
    ]
    for data, message in cases:
        with pytest.raises(ValueError, match=message):
            Genotype.from_dict(data)


def test_load_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON"):
        Genotype.load(tmp_path / "bad.json")
    (tmp_path / "unknown.json").write_text(json.dumps({"encoder": [["x", "ffn"]], "decoder": [["ffn", "ffn"]]}))
    with pytest.raises(ValueError, match=r"unknown\.json: .*unknown op 'x'"):
        Genotype.load(tmp_path / "unknown.json")


def test_stack_standard_validate_and_agreement():
    block = Genotype.from_dict({"encoder": [["conv_3", "glu"], ["ffn", "ffn"]], "decoder": [["ffn", "glu"]]})
    stacked = block.stack(4, 3)
    assert stacked.encoder == [["conv_3", "glu"], ["ffn", "ffn"]] * 2 and stacked.decoder == [["ffn", "glu"]] * 3
    assert block.stack() == block
    with pytest.raises(ValueError, match="encoder_layers=3 is not a multiple of the genotype's 2"):
        block.stack(3, 3)
    standard = Genotype.standard(2, 3)
    assert standard == {"encoder": [["self_attn", "ffn"]] * 2, "decoder": [["self_attn", "ffn"]] * 3}
    assert Genotype.standard(1, 1, decoder_splits=2).decoder == [["self_attn"]]
    standard.validate(2, 3)
    with pytest.raises(ValueError, match="encoder_genotype has 2 layers but encoder_layers=4"):
        standard.validate(4, 3)
    other = Genotype.from_dict({"encoder": [["self_attn", "glu"]] * 2, "decoder": [["self_attn", "ffn"]] * 3})
    assert standard.agreement(other) == pytest.approx(8 / 10)
    assert len(standard.nodes()) == 10 and standard.nodes()[0] == ("encoder", 0, 0, "self_attn")
    with pytest.raises(ValueError, match="different shapes"):
        standard.agreement(Genotype.standard(1, 3))
