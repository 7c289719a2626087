"""Paired bootstrap (sacreBLEU's implementation) on small hand-made systems."""

from __future__ import annotations

import random

import pytest
import sacrebleu

from hf_revdarts.evaluation.significance import paired_bootstrap

REFS = [f"The {w} dog runs across the green field number {i}." for i, w in
        enumerate(["black", "brown", "small", "large", "happy", "old", "young", "white"] * 25)]


def _degrade(refs, rate, seed):
    """Drop each word of the references with probability ``rate`` (a worse system as rate grows)."""
    rng = random.Random(seed)
    return [" ".join(w for w in r.split() if rng.random() >= rate) or "a" for r in refs]


def test_paired_bootstrap_separates_a_clear_difference_and_not_noise():
    good, bad = _degrade(REFS, 0.05, 1), _degrade(REFS, 0.4, 2)
    res = paired_bootstrap(good, bad, REFS, n_samples=300)
    assert res.delta > 10 and res.p_value < 0.05
    assert res.bleu_a == pytest.approx(sacrebleu.corpus_bleu(good, [REFS]).score)
    assert abs(res.mean_a - res.bleu_a) < 3 and res.ci_a > 0
    assert "bs:300" in res.signature
    # near-identical systems: not significant
    close = paired_bootstrap(_degrade(REFS, 0.1, 3), _degrade(REFS, 0.1, 4), REFS, n_samples=300)
    assert close.p_value > 0.05
    # deterministic for a fixed seed
    again = paired_bootstrap(good, bad, REFS, n_samples=300)
    assert again.to_dict() == res.to_dict()
    with pytest.raises(ValueError, match="hypotheses of B"):
        paired_bootstrap(good, bad[:-1], REFS)
