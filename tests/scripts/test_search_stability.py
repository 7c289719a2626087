"""benchmarks/search_stability.py: agreement and rank correlation across seeds, on made-up search folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS
from testing import REPO


def _search(folder: Path, encoder_best: str, decoder_logits: list[float]) -> Path:
    folder.mkdir()
    enc = [0.0] * len(ENCODER_OPS)
    enc[ENCODER_OPS.index(encoder_best)] = 3.0
    enc[ENCODER_OPS.index("zero")] = 5.0  # the derivation never takes zero
    alphas = {"encoder.p0.s0": enc, "decoder.p0.s0": decoder_logits}
    (folder / "arch_parameters.json").write_text(json.dumps(alphas))
    (folder / "search_summary.json").write_text(json.dumps(
        {"genotype": {"encoder": [[encoder_best]]}, "seconds": 60.0, "steps": 10, "val_loss_last": 5.0}))
    return folder


def test_agreement_and_rank_correlation(tmp_path):
    ramp = [float(i) for i in range(len(DECODER_OPS))]
    a = _search(tmp_path / "seed0", "ffn", ramp)
    b = _search(tmp_path / "seed1", "ffn", ramp[::-1])  # the reverse ranking: rho = -1
    c = _search(tmp_path / "seed2", "glu", ramp)
    out = tmp_path / "stability"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "search_stability.py"), str(a), str(b), str(c),
                           "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    r = json.loads(out.with_suffix(".json").read_text())
    nodes = {n["node"]: n for n in r["nodes"]}
    assert nodes["encoder.p0.s0"]["derived"] == ["ffn", "ffn", "glu"] and not nodes["encoder.p0.s0"]["all_agree"]
    # decoder: ramp, reversed ramp, ramp -> pairs (0,1) -1, (0,2) +1, (1,2) -1
    assert nodes["decoder.p0.s0"]["spearman_mean"] == pytest.approx(-1 / 3)
    assert r["all_agree_fraction"] == 0.0
    assert r["pairwise_agree_fraction"] == pytest.approx(2 / 6)  # encoder: seeds 0,1; decoder: seeds 0,2
    assert str(tmp_path) not in out.with_suffix(".json").read_text()  # folders by name only
