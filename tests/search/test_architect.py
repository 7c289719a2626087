"""The architect: the α step's size for a step budget and the temperature schedule, first- and second-order α
steps (θ left as it was), and the collapse guard (warnings on zero and identity, stops on derived identity and on
zero's mass)."""

from __future__ import annotations

import functools
import logging
import math

import pytest
import torch

from hf_revdarts.search import Architect, CollapseGuard, RevDartsSupernet, annealed_temperature, arch_lr_for_steps
from hf_revdarts.search.architect import make_arch_optimizer
from testing.builders import padded_batch, set_alpha, tiny_search_config

VOCAB = 200


tiny = functools.partial(tiny_search_config, vocab_size=VOCAB)


def test_arch_lr_rule_keeps_the_paper_value_for_its_budget() -> None:
    assert arch_lr_for_steps(30_000) == pytest.approx(3e-4)  # the paper's α lr for its ~30k α steps
    assert arch_lr_for_steps(100) == pytest.approx(0.09)
    assert arch_lr_for_steps(250, logit_range=5.0) == pytest.approx(0.02)
    with pytest.raises(ValueError, match="num_arch_steps"):
        arch_lr_for_steps(0)
    with pytest.raises(ValueError, match="logit_range"):
        arch_lr_for_steps(10, logit_range=0.0)


def test_annealed_temperature_is_geometric_between_its_ends() -> None:
    assert annealed_temperature(0, 11, 1.0, 0.1) == pytest.approx(1.0)
    assert annealed_temperature(5, 11, 1.0, 0.1) == pytest.approx(math.sqrt(0.1))
    assert annealed_temperature(10, 11, 1.0, 0.1) == pytest.approx(0.1)
    assert annealed_temperature(50, 11, 1.0, 0.1) == pytest.approx(0.1)  # past the end: stays at the end
    assert annealed_temperature(3, 11) == 1.0
    with pytest.raises(ValueError, match="temperatures"):
        annealed_temperature(0, 10, 1.0, 0.0)


def test_first_order_step_moves_only_alpha() -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(layers=1))
    arch = Architect(model, model, make_arch_optimizer(model, lr=1e-2))
    w_before = [p.detach().clone() for p in model.weight_parameters()]
    a_before = [a.detach().clone() for a in model.arch_parameters()]
    loss = arch.step([padded_batch(VOCAB, seed=1), padded_batch(VOCAB, seed=2)])
    assert loss > 0
    assert all(torch.equal(a, b) for a, b in zip(w_before, model.weight_parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(a_before, model.arch_parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_second_order_with_zero_xi_equals_first_order_and_restores_weights() -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(layers=1, dropout=0.0))
    val, train = [padded_batch(VOCAB, seed=1)], [padded_batch(VOCAB, seed=2)]
    w_before = [p.detach().clone() for p in model.weight_parameters()]
    got = {}
    for second in (False, True):
        opt = torch.optim.SGD(model.arch_parameters(), lr=0.0)  # lr 0: inspect the gradient, keep α
        captured = []
        opt.step = lambda: captured.append([a.grad.clone() for a in model.arch_parameters()])  # type: ignore
        Architect(model, model, opt, second_order=second).step(val, train, unrolled_lr=0.0)
        got[second] = captured[0]
    for a, b in zip(got[False], got[True]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-9)
    assert all(torch.equal(a, b) for a, b in zip(w_before, model.weight_parameters()))
    # with ξ > 0 the implicit term changes the gradient but it stays finite
    opt = make_arch_optimizer(model)
    Architect(model, model, opt, second_order=True).step(val, train, unrolled_lr=1e-2)
    assert all(a.isfinite().all() for a in model.arch_parameters())


def test_collapse_guard_stops_on_identity() -> None:
    model = RevDartsSupernet(tiny(layers=1))
    guard = CollapseGuard(warn_share=0.3, stop_share=0.6, stop_argmax_fraction=0.5)
    stats, stop = guard.check(model, 0)
    assert not stop and abs(stats["param_free_share"] - 2 / 13.5) < 0.02
    with torch.no_grad():
        for name, a in model.named_arch_parameters():
            a[model.op_names(name.split(".")[0]).index("identity")] = 10.0
    stats, stop = guard.check(model, 1)
    assert stop and stats["op_counts"] == {"identity": 4} and stats["param_free_share"] > 0.99
    with pytest.raises(ValueError, match="stop_share"):
        CollapseGuard(stop_share=2.0)


def test_collapse_guard_warns_on_zero_and_identity_and_stops_on_derived_identity(caplog) -> None:
    model = RevDartsSupernet(tiny(layers=1))
    guard = CollapseGuard(warn_share=0.3, stop_share=0.6, stop_argmax_fraction=0.5, warn_argmax_fraction=0.25)
    for name, _ in model.named_arch_parameters():  # uniform α led by zero by a hair: noise, no warning
        set_alpha(model, name, "zero", 1e-3)
    with caplog.at_level(logging.WARNING, logger="hf_revdarts.search.architect"):
        stats, stop = guard.check(model, 0)
    assert not stop and not caplog.records and stats["zero_led_nodes"] == []
    # α moved decisively onto real ops: quiet
    for name, _ in model.named_arch_parameters():
        set_alpha(model, name, "conv_5", 4.0)
    with caplog.at_level(logging.WARNING, logger="hf_revdarts.search.architect"):
        stats, stop = guard.check(model, 10)
    assert not stop and not caplog.records and stats["mean_top_weight"] > 0.8
    # zero leads one node: derivation skips it, the guard names it; zero+identity mass still watched
    set_alpha(model, "encoder.p0.s0", "zero", 6.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_revdarts.search.architect"):
        stats, stop = guard.check(model, 20)
    assert not stop and stats["zero_led_nodes"] == ["encoder.p0.s0"] and stats["op_counts"] == {"conv_5": 4}
    assert any("encoder.p0.s0" in r.getMessage() and "zero" in r.getMessage() for r in caplog.records)
    # one of four nodes derives identity: warning (25% < 50% stop limit) naming it, no stop
    set_alpha(model, "decoder.p0.s1", "identity", 8.0)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_revdarts.search.architect"):
        stats, stop = guard.check(model, 30)
    assert not stop and stats["param_free_nodes"] == ["decoder.p0.s1"]
    assert any("collapse" in r.getMessage() and "decoder.p0.s1" in r.getMessage() for r in caplog.records)
    # three of four derive identity: stop
    set_alpha(model, "encoder.p0.s1", "identity", 8.0)
    set_alpha(model, "decoder.p0.s0", "identity", 8.0)
    stats, stop = guard.check(model, 40)
    assert stop and stats["param_free_argmax_fraction"] == 0.75 and stats["op_counts"]["identity"] == 3


def test_collapse_guard_stops_on_zero_mass_even_though_zero_is_never_derived() -> None:
    model = RevDartsSupernet(tiny(layers=1))
    for name, _ in model.named_arch_parameters():
        set_alpha(model, name, "zero", 6.0)
        set_alpha(model, name, "conv_5", 1.0)  # the runner-up, so the derived op is a real one
    stats, stop = CollapseGuard().check(model, 0)
    assert stats["op_counts"] == {"conv_5": 4} and stats["param_free_argmax_fraction"] == 0.0
    assert stop and stats["zero_share"] > 0.9 and len(stats["zero_led_nodes"]) == 4
