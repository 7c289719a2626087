"""The project's BLEU/chrF as a local ``evaluate`` module: offline, sacreBLEU's numbers and signatures, usable
as a ``compute_metrics`` metric, and found by scripts whose folder holds an ``evaluate.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from hf_revdarts.evaluation.metric import METRIC_PATH, bleu_and_chrf, load_metric

REPO = Path(__file__).resolve().parents[2]
REFS = [f"The {w} dog runs across the green field number {i}." for i, w in
        enumerate(["black", "brown", "small", "large", "happy", "old", "young", "white"] * 25)]


def test_bleu_cased_lowercased_and_chrf_equal_sacrebleu():
    hyps = [r.upper() if i % 2 else r for i, r in enumerate(REFS)]  # case errors only
    out = bleu_and_chrf(hyps, REFS)
    assert out["bleu_lowercase"] == 100.0 and out["bleu"] < 60
    assert out["bleu"] == round(sacrebleu.corpus_bleu(hyps, [REFS]).score, 2)  # primary = sacreBLEU default
    assert out["chrf"] == round(sacrebleu.corpus_chrf(hyps, [REFS]).score, 2)
    assert "case:mixed" in out["bleu_signature"] and "tok:13a" in out["bleu_signature"]
    assert "case:lc" in out["bleu_lowercase_signature"] and "nc:6" in out["chrf_signature"]
    assert out["sentences"] == len(REFS)


def test_evaluate_load_by_path_offline_takes_nested_references_like_sacrebleu():
    import evaluate

    metric = evaluate.load(METRIC_PATH)
    hyps = REFS[:10]
    nested = metric.compute(predictions=hyps, references=[[r] for r in REFS[:10]])
    assert nested == load_metric().compute(predictions=hyps, references=REFS[:10])
    assert nested["bleu"] == 100.0


def test_misaligned_or_empty_input_is_refused():
    with pytest.raises(ValueError):
        bleu_and_chrf(REFS[:-1], REFS)
    with pytest.raises(ValueError, match="empty test set"):
        bleu_and_chrf([], [])
    with pytest.raises(ValueError, match="one reference"):
        load_metric().compute(predictions=["a", "b"], references=[["a", "x"], ["b", "y"]])


def test_a_script_beside_an_evaluate_py_still_gets_the_library(tmp_path):
    """training/ holds evaluate.py: a script run from there has that folder first on sys.path."""
    (tmp_path / "evaluate.py").write_text((REPO / "training" / "evaluate.py").read_text(encoding="utf-8"))
    script = tmp_path / "probe.py"
    script.write_text(
        "from hf_revdarts.evaluation.metric import bleu_and_chrf\n"
        "print(bleu_and_chrf(['a b c d'], ['a b c d'])['bleu'])\n", encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "100.0"
