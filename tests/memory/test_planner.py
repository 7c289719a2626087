"""The memory planner: memory sizes as people write them, the fastest mode that fits a budget (hybrid keeping as
many layers as fit), what would fit when nothing does, and switching a model's stacks to a mode."""

from __future__ import annotations

import pytest
import torch

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration, estimate_memory
from hf_revdarts.memory import (
    MEMORY_MODES,
    apply_memory_mode,
    d_model_step,
    largest_batch,
    parse_memory_size,
    plan_memory,
    widest_d_model,
)
from hf_revdarts.model.reversible import ReversibleStack
from testing.builders import tiny_config


def test_parse_memory_size():
    assert parse_memory_size("16GB") == 16 * 10**9
    assert parse_memory_size("500MB") == 500 * 10**6
    assert parse_memory_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_memory_size(" 2 g ") == 2 * 10**9
    assert parse_memory_size("750kb") == 750_000
    assert parse_memory_size("2e9") == 2 * 10**9
    assert parse_memory_size(1024) == 1024
    for bad in ("16 gigs", "GB", "", "-1GB", "0", "16PB", True):
        with pytest.raises(ValueError, match="memory size"):
            parse_memory_size(bad)


def test_plan_picks_the_fastest_mode_that_fits():
    config = RevDartsConfig(vocab_size=1000, d_model=192, encoder_layers=6, decoder_layers=6)
    kw = {"batch_size": 32, "source_length": 48, "target_length": 48, "supernet": True}
    totals = {m: estimate_memory(config, mode=m, keep_layers=0, **kw).total_bytes for m in MEMORY_MODES if m != "hybrid"}
    assert plan_memory(config, max_memory=totals["ordinary"], **kw).mode == "ordinary"
    hybrid = plan_memory(config, max_memory=totals["ordinary"] - 1, **kw)
    assert hybrid.mode == "hybrid" and 1 <= hybrid.keep_layers <= 5
    assert hybrid.estimate.total_bytes <= totals["ordinary"] - 1
    more = estimate_memory(config, mode="hybrid", keep_layers=hybrid.keep_layers + 1, **kw)
    assert more.total_bytes > totals["ordinary"] - 1  # it keeps as many layers as fit
    assert hybrid.config_overrides() == {"reversible": True, "reversible_keep_layers": hybrid.keep_layers}
    assert plan_memory(config, max_memory=totals["checkpoint"], modes=("ordinary", "checkpoint", "reversible"),
                       **kw).mode == "checkpoint"
    assert plan_memory(config, max_memory=totals["reversible"], **kw).mode == "reversible"
    assert "fits" in plan_memory(config, max_memory="1TB", **kw).message()


def test_plan_says_what_fits_when_nothing_does():
    config = RevDartsConfig(vocab_size=1000, d_model=480, encoder_layers=6, decoder_layers=6)
    kw = {"batch_size": 64, "source_length": 64, "target_length": 64, "supernet": True}
    budget = estimate_memory(config, mode="reversible", **kw).total_bytes - 1
    plan = plan_memory(config, max_memory=budget, **kw)
    assert not plan.fits and plan.mode is None
    d, b = plan.widest_d_model, plan.largest_batch
    assert d is not None and d < 480 and d % d_model_step(config) == 0
    assert b is not None and b < 64
    assert f"d_model <= {d}" in plan.message() and f"batch size <= {b}" in plan.message()
    with pytest.raises(ValueError, match="no memory mode fits"):
        plan.config_overrides()
    # the bisections are exact: the next step up does not fit
    assert widest_d_model(config, 64, 64, 64, budget, supernet=True) == d
    wider = RevDartsConfig(vocab_size=1000, d_model=d + d_model_step(config), encoder_layers=6, decoder_layers=6)
    assert estimate_memory(wider, mode="reversible", **kw).total_bytes > budget
    assert largest_batch(config, 64, 64, budget, supernet=True) == b
    assert estimate_memory(config, mode="reversible", **{**kw, "batch_size": b + 1}).total_bytes > budget
    assert "raise the budget" in plan_memory(config, max_memory="1MB", **kw).message()


def test_apply_memory_mode_switches_every_stack():
    model = RevDartsForConditionalGeneration(tiny_config(layers=3))
    stacks = [m for m in model.modules() if isinstance(m, ReversibleStack)]
    for mode, (rev, keep, ckpt) in {"ordinary": (False, 0, False), "hybrid": (True, 2, False),
                                    "checkpoint": (False, 0, True), "reversible": (True, 0, False)}.items():
        apply_memory_mode(model, mode, keep_layers=2)
        assert all((s.reversible, s.keep_layers, s.gradient_checkpointing) == (rev, keep, ckpt) for s in stacks)
        assert (model.config.reversible, model.config.reversible_keep_layers) == (rev, keep)
    with pytest.raises(ValueError, match="unknown memory mode"):
        apply_memory_mode(model, "fast")
    with pytest.raises(ValueError, match="no reversible stacks"):
        apply_memory_mode(torch.nn.Linear(2, 2), "ordinary")
