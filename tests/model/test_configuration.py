"""RevDartsConfig refuses, naming the setting, what cannot build a model: unknown ops, genotypes of the wrong shape,
sizes that do not divide or are not positive, token ids outside the vocabulary."""

from __future__ import annotations

import pytest

from testing.builders import tiny_config


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"encoder_genotype": [["conv_3", "conv_4"]] * 2}, "unknown op 'conv_4'"),
        ({"encoder_genotype": [["conv_3", "ffn"]] * 3}, "encoder_genotype has 3 layers"),
        ({"decoder_genotype": [["conv_3", "ffn", "glu"]] * 2}, "decoder_genotype[0] must list 2 op names"),
        ({"encoder_genotype": [["cross_attn", "ffn"]] * 2}, "only exists in the decoder"),
        ({"d_model": 52}, "d_model=52 is not divisible by decoder_splits=3"),
        ({"d_model": 42}, "not divisible by num_heads=2"),
        ({"pooling": "min"}, "pooling='min'"),
    ],
)
def test_bad_config_is_a_clear_value_error(kwargs, needle):
    with pytest.raises(ValueError) as err:
        tiny_config(layers=2, **kwargs)
    assert needle in str(err.value)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(encoder_genotype=[]), "encoder_genotype is empty"),
        (dict(encoder_layers=0, encoder_genotype=[]), "encoder_layers=0 must be a positive integer"),
        (dict(num_heads=0), "num_heads=0 must be a positive integer"),
        (dict(d_model=0), "d_model=0"),
        (dict(dropout=1.5), r"dropout=1.5 must be a probability in \[0, 1\)"),
        (dict(ffn_multiplier=0), "ffn_multiplier=0"),
        (dict(embedding_dim=0), "embedding_dim=0"),
        (dict(pad_token_id=60), r"pad_token_id=60 is not a token id of the vocabulary \(0..59\)"),
    ],
)
def test_bad_sizes_and_empty_genotype_are_value_errors(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        tiny_config(**kwargs)
