"""The α figures: normalised entropy, the heatmap and the decisiveness plot written from a history, with no
temporaries left behind."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_alpha_figures_from_a_history(tmp_path: Path) -> None:
    from hf_revdarts.search.visualize import normalised_entropy, plot_decisiveness, plot_heatmap

    assert normalised_entropy([0.25] * 4) == pytest.approx(1.0)
    assert normalised_entropy([1.0, 0.0, 0.0]) == pytest.approx(0.0, abs=1e-9)
    ops = {"encoder": ("ffn", "glu", "zero"), "decoder": ("ffn", "cross_attn")}
    history = [
        {"step": 0, "softmax": {"encoder.p0.s0": [1 / 3] * 3, "decoder.p0.s0": [0.5, 0.5]}},
        {"step": 5, "softmax": {"encoder.p0.s0": [0.6, 0.3, 0.1], "decoder.p0.s0": [0.9, 0.1]}},
    ]
    plot_heatmap(history, ops, tmp_path / "heatmap.png")
    plot_decisiveness(history, tmp_path / "entropy.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 1000 and (tmp_path / "entropy.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entropy.png", "heatmap.png"], "no temporaries left"
