"""BLEU two ways and paired bootstrap (sacreBLEU's implementation) on small hand-made systems."""

from __future__ import annotations

import random

import pytest
import sacrebleu

from hf_revdarts.evaluation.significance import bleu_two_ways, paired_bootstrap

REFS = [f"The {w} dog runs across the green field number {i}." for i, w in
        enumerate(["black", "brown", "small", "large", "happy", "old", "young", "white"] * 25)]


def _degrade(refs, rate, seed):
    """Drop each word of the references with probability ``rate`` (a worse system as rate grows)."""
    rng = random.Random(seed)
    return [" ".join(w for w in r.split() if rng.random() >= rate) or "a" for r in refs]


def test_bleu_two_ways_cased_and_lowercased():
    hyps = [r.upper() if i % 2 else r for i, r in enumerate(REFS)]  # case errors only
    out = bleu_two_ways(hyps, REFS)
    assert out["bleu_lowercase"] == 100.0
    assert out["bleu"] < 60
    assert out["bleu"] == round(sacrebleu.corpus_bleu(hyps, [REFS]).score, 2)  # primary = sacreBLEU default
    assert "case:mixed" in out["bleu_signature"] and "tok:13a" in out["bleu_signature"]
    assert "case:lc" in out["bleu_lowercase_signature"]
    with pytest.raises(ValueError, match="must align"):
        bleu_two_ways(hyps[:-1], REFS)


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
