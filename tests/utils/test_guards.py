"""The non-finite guards: an unguarded divergence writes NaN into the weights; the guard skips such steps, counts
them, decides as the other ranks do, and stops naming the step, the loss and the last good checkpoint; JSON and
state checks name the non-finite key or tensor."""

from __future__ import annotations

import json

import pytest
import torch

from hf_revdarts import RevDartsForConditionalGeneration
from hf_revdarts.utils.guards import (
    NonFiniteError,
    NonFiniteGuard,
    assert_finite_state,
    finite_json_dumps,
    is_finite_model,
)
from testing.builders import padded_batch, small_model


def diverging_run(
    guard: NonFiniteGuard | None, steps: int = 12, model: RevDartsForConditionalGeneration | None = None
) -> tuple[RevDartsForConditionalGeneration, list]:
    """SGD with lr=1000: the loss is huge at step 1 and NaN from step 3 (checked below)."""
    model = model if model is not None else small_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e3)
    batch = padded_batch(60)
    losses = []
    for step in range(steps):
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        if guard is None or guard.check(step, loss, parameters=model.parameters()):
            opt.step()
        opt.zero_grad()
        if guard is not None and step == 1:
            guard.last_good_checkpoint = "out/checkpoint-000002"
    return model, losses


def test_unguarded_divergence_writes_nan_into_the_weights():
    model, losses = diverging_run(None)
    assert any(l != l for l in losses)  # the scenario is real: NaN losses
    assert not is_finite_model(model)
    with pytest.raises(NonFiniteError, match=r"refusing to save the best model: \d+ of its \d+ tensors hold NaN/inf"):
        assert_finite_state(model, "best model")


def test_guard_skips_counts_and_stops_naming_step_loss_and_checkpoint():
    guard = NonFiniteGuard(max_skipped=3)
    model = small_model()
    with pytest.raises(NonFiniteError) as err:
        diverging_run(guard, model=model)
    message = str(err.value)
    assert guard.skipped == 4 and len(guard.skipped_steps) == 4
    last = guard.skipped_steps[-1]
    assert f"at step {last}" in message and "loss=nan" in message
    assert "out/checkpoint-000002" in message and "max_skipped=3" in message
    # every skipped step left the weights alone: what a checkpoint would save is still finite
    assert is_finite_model(model)


def test_guard_keeps_weights_finite_and_state_round_trips():
    guard = NonFiniteGuard(max_skipped=100)
    model, losses = diverging_run(guard, steps=8)
    assert is_finite_model(model)
    assert guard.skipped == sum(1 for l in losses if l != l) > 0
    again = NonFiniteGuard(max_skipped=100)
    again.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert again.state_dict() == guard.state_dict()


def test_guard_decides_like_the_other_ranks_and_checks_its_arguments():
    other_rank_bad = torch.tensor([1.0, 0.0])  # another process saw a NaN loss
    guard = NonFiniteGuard(max_skipped=5, sync=lambda t: t + other_rank_bad)
    assert guard.check(0, torch.tensor(2.0), grad_norm=torch.tensor(1.0)) is False
    assert NonFiniteGuard(max_skipped=5).check(0, torch.tensor(2.0), grad_norm=torch.tensor(1.0)) is True
    assert NonFiniteGuard(max_skipped=5).check(0, 2.0, grad_norm=float("inf")) is False
    with pytest.raises(NonFiniteError, match="no checkpoint was saved"):
        NonFiniteGuard(max_skipped=0).check(7, float("nan"), grad_norm=1.0)
    with pytest.raises(ValueError, match="max_skipped"):
        NonFiniteGuard(max_skipped=-1)


def test_finite_json_refuses_nan_naming_the_key_path():
    good = {"history": [{"step": 1, "loss": 2.5}], "best": {"bleu": 30.0}}
    assert json.loads(finite_json_dumps(good, indent=1)) == good
    bad = {"history": [{"loss": 2.5}, {"loss": float("nan")}], "best": {"val_loss": float("inf")}}
    with pytest.raises(ValueError, match=r"history\[1\]\.loss = nan.*best\.val_loss = inf"):
        finite_json_dumps(bad, where="train_summary.json")
    state = {"w": torch.ones(2), "b": torch.tensor([0.0, float("nan")]), "n": torch.tensor([3])}
    with pytest.raises(NonFiniteError, match=r"1 of its 2 tensors hold NaN/inf \(b\)"):
        assert_finite_state(state)
