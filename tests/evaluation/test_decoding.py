"""The rule that picks a decoding setting from its validation scores (hf_revdarts.evaluation.decoding)."""

import pytest

from hf_revdarts.evaluation.decoding import choose


def _g(beams, penalty, bleu):
    return {"num_beams": beams, "length_penalty": penalty, "bleu": bleu}


def test_the_highest_bleu_wins():
    assert choose([_g(4, 1.0, 30.0), _g(6, 1.2, 30.5), _g(4, 0.6, 29.0)]) == _g(6, 1.2, 30.5)


def test_a_tie_goes_to_fewer_beams_then_to_the_plainer_length_penalty():
    assert choose([_g(6, 1.0, 30.5), _g(4, 1.4, 30.495), _g(4, 1.2, 30.5)]) == _g(4, 1.2, 30.5)
    assert choose([_g(4, 0.8, 30.5), _g(4, 1.0, 30.495)]) == _g(4, 1.0, 30.495)
    assert choose([_g(4, 1.2, 30.5), _g(4, 0.8, 30.5)]) == _g(4, 0.8, 30.5)  # equally far from 1: the shorter


def test_an_empty_grid_is_refused():
    with pytest.raises(ValueError, match="grid is empty"):
        choose([])
