"""The search decides: α step size for a given budget, DARTS derivation (no zero), perturbation selection
(DARTS-PT), the collapse guard once α moves, and a known-answer search on a synthetic task."""

from __future__ import annotations

import functools
import logging
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _helpers import grad_errors, padded_batch, set_reversible, tiny_search_config  # noqa: E402
from hf_revdarts import Genotype, RevDartsConfig, RevDartsForConditionalGeneration  # noqa: E402
from hf_revdarts.model.modeling_revdarts import shift_tokens_right  # noqa: E402
from hf_revdarts.search import (  # noqa: E402
    Architect,
    CollapseGuard,
    RevDartsSupernet,
    annealed_temperature,
    arch_lr_for_steps,
    select_genotype,
)
from hf_revdarts.search.architect import make_arch_optimizer, make_weight_optimizer  # noqa: E402
from hf_revdarts.search.selection import heldout_nll, removed_op  # noqa: E402
from hf_revdarts.search.supernet import mixing_weights  # noqa: E402

VOCAB = 200


@pytest.fixture(autouse=True)
def one_thread():
    """These small models run fastest on one thread, and far slower when threads fight over shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


tiny = functools.partial(tiny_search_config, vocab_size=VOCAB)


def set_alpha(model: RevDartsSupernet, node: str, op: str, value: float) -> None:
    with torch.no_grad():
        dict(model.named_arch_parameters())[node][model.op_names(node.split(".")[0]).index(op)] = value


# ---------------------------------------------------------------- α step size and temperature ---------
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


def test_mixing_weights_temperature_and_mask() -> None:
    alpha = torch.tensor([0.5, -1.0, 2.0, 0.0])
    torch.testing.assert_close(mixing_weights(alpha), torch.softmax(alpha, -1))
    torch.testing.assert_close(mixing_weights(alpha, 0.25), torch.softmax(alpha / 0.25, -1))
    mask = torch.tensor([True, True, False, True])
    w = mixing_weights(alpha, 1.0, mask)
    assert w[2] == 0.0  # removed exactly, not just down-weighted
    torch.testing.assert_close(w[mask], torch.softmax(alpha[mask], -1))  # the rest renormalised
    model = RevDartsSupernet(tiny(layers=1))
    model.set_temperature(0.5)
    assert model.temperature == 0.5
    assert all(m.temperature == 0.5 for m in model.modules() if hasattr(m, "op_mask"))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            model.set_temperature(bad)


def test_temperature_and_mask_keep_reversible_gradients_exact() -> None:
    """The weights line changed (T, mask): α/θ gradients through reconstruction still equal autograd's."""
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(), tie_blocks=1, encoder_ops=["identity", "zero", "conv_3", "glu", "self_attn"],
                             decoder_ops=["identity", "conv_3", "dynconv_3", "self_attn"])
    model.set_temperature(0.3)
    for m in model.mixed_splits("encoder", 0, 1):  # a tied node: both layers
        m.op_mask = torch.tensor([True, True, False, True, True])
    batch = padded_batch(VOCAB)
    grads = {}
    for rev in (True, False):
        set_reversible(model, rev)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        model(**batch).loss.backward()
        grads[rev] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert all(a.grad is not None for a in model.arch_parameters())
    total, worst = grad_errors(grads[True], grads[False])
    assert total <= 1e-5 and worst <= 1e-5, (total, worst)


# ---------------------------------------------------------------- derivation ---------------------------
def test_genotype_never_derives_zero_unless_it_is_alone() -> None:
    model = RevDartsSupernet(tiny(layers=2, dropout=0.0))
    set_alpha(model, "encoder.p0.s0", "zero", 5.0)
    set_alpha(model, "encoder.p0.s0", "glu", 1.0)
    set_alpha(model, "decoder.p1.s1", "zero", 5.0)
    set_alpha(model, "decoder.p1.s1", "conv_7", 0.5)
    geno = model.genotype()
    assert geno.encoder[0][0] == "glu" and geno.decoder[1][1] == "conv_7"
    assert all(op != "zero" for *_, op in geno.nodes())
    raw = model.genotype(exclude=())
    assert raw.encoder[0][0] == "zero" and raw.decoder[1][1] == "zero"
    assert model.derive_config().get_genotype() == geno
    assert model.derive_config(genotype=raw).get_genotype() == raw
    assert select_genotype(model).genotype == geno
    set_alpha(model, "encoder.p1.s1", "identity", 4.0)
    assert model.genotype(exclude=("zero", "identity")).encoder[1][1] != "identity"
    # a space with nothing but zero can only derive zero
    only = RevDartsSupernet(tiny(layers=1), encoder_ops=["zero"], decoder_ops=["zero"])
    assert only.genotype() == Genotype.from_dict({"encoder": [["zero", "zero"]], "decoder": [["zero", "zero"]]})


def test_perturbation_selection_picks_the_op_whose_removal_hurts() -> None:
    """Constructed supernet: in each decoder node one op is loud (LayerNorm gain ×30), the others are
    silent (gain and bias 0: they output zeros), and the labels are the supernet's own greedy predictions.
    Removing the loud op changes the predictions (loss up); removing a silent one only scales the loud
    one up. Argmax on α, set to favour another op, disagrees. Every reported increase, encoder nodes
    included, equals a plain masked forward (decoder nodes reuse cached encoder outputs)."""
    torch.manual_seed(0)
    enc_ops, dec_ops = ["zero", "conv_3", "glu"], ["conv_3", "conv_11", "dynconv_3"]
    model = RevDartsSupernet(tiny(layers=2, dropout=0.0, embedding_dim=24), tie_blocks=1, encoder_ops=enc_ops,
                             decoder_ops=dec_ops)
    loud = {0: "conv_11", 1: "dynconv_3"}
    with torch.no_grad():
        for split, name in loud.items():
            for mixed in model.mixed_splits("decoder", 0, split):  # both tied layers
                for op in mixed.ops:
                    op.norm.weight.mul_(30.0) if op.name == name else op.norm.weight.zero_()
                    op.norm.bias.zero_()
        model.output_proj.weight.mul_(30.0)  # confident predictions (the factorised head is not tied)
    for name, _ in model.named_arch_parameters():
        set_alpha(model, name, "conv_3", 0.3)
    batches = [padded_batch(VOCAB, seed=s) for s in range(2)]
    model.eval()
    with torch.no_grad():
        for b in batches:  # decoder inputs fixed, labels = what the supernet predicts from them
            b["decoder_input_ids"] = shift_tokens_right(b["labels"], model.config.pad_token_id, 1)
            b["labels"] = model(**b).logits.argmax(-1).masked_fill(b["labels"] == -100, -100)
    model.train()
    sel = select_genotype(model, "perturbation", batches)
    assert model.training and all(m.op_mask is None for m in model.modules() if hasattr(m, "op_mask"))
    assert sel.method == "perturbation" and sel.base_loss > 0
    assert sel.genotype["decoder"] == [["conv_11", "dynconv_3"]] * 2, sel.loss_increase
    assert select_genotype(model, "argmax").genotype["decoder"] == [["conv_3", "conv_3"]] * 2
    for split, name in loud.items():
        inc = sel.loss_increase[f"decoder.p0.s{split}"]
        assert inc[name] > 0.1 and all(v < 0.25 * inc[name] for k, v in inc.items() if k != name), inc
    assert all("zero" not in inc for inc in sel.loss_increase.values())  # zero is never a candidate
    # the random encoder barely reaches these logits: increases within the tie tolerance, α decides
    enc = [sel.loss_increase[f"encoder.p0.s{k}"] for k in range(2)]
    assert all(abs(v) < 1e-4 for inc in enc for v in inc.values()), enc
    assert sel.genotype["encoder"] == [["conv_3", "conv_3"]] * 2
    model.eval()
    for node, inc in sel.loss_increase.items():
        side, position, split = node.split(".")
        ops = model.op_names(side)
        for op, got in inc.items():
            with removed_op(model, side, int(position[1:]), int(split[1:]), ops.index(op)):
                want = heldout_nll(model, batches) - sel.base_loss
            assert got == pytest.approx(want, abs=1e-6), (node, op)
    again = select_genotype(model, "perturbation", batches)  # eval mode: deterministic
    assert again.loss_increase == sel.loss_increase
    with pytest.raises(ValueError, match="batches"):
        select_genotype(model, "perturbation")
    with pytest.raises(ValueError, match="unknown selection method"):
        select_genotype(model, "random")


def test_removed_op_masks_every_tied_layer() -> None:
    model = RevDartsSupernet(tiny(layers=2), tie_blocks=1)
    tied = model.mixed_splits("decoder", 0, 1)
    assert len(tied) == 2 and tied[0] is not tied[1] and tied[0].alpha is tied[1].alpha
    with removed_op(model, "decoder", 0, 1, 3):
        assert all(m.op_mask is not None and not bool(m.op_mask[3]) and int(m.op_mask.sum()) == 13 for m in tied)
        assert all(m.op_mask is None for m in model.mixed_splits("decoder", 0, 0))
    assert all(m.op_mask is None for m in tied)


# ---------------------------------------------------------------- collapse guard -----------------------
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


# ---------------------------------------------------------------- known answer -------------------------
# A synthetic task that only a long convolution solves. The source is a constant two-token sentence, so
# the decoder's fixed cross-attention has nothing to read; the target is a random motif of PERIOD tokens
# repeated: y_t = y_{t-PERIOD}. Under teacher forcing position t sees y_{t-1}, so predicting y_t needs the
# input PERIOD-1 = 5 positions back: a causal conv_11 reaches 10 back, conv_3 only 2, identity 0, and the
# motif is uniform noise, so without that reach the best possible loss is chance (log of the 12 tokens).
# One decoder layer with decoder_splits=2 has exactly one searched node: the node that matters.
PERIOD, LENGTH, FIRST, TOKENS = 6, 18, 4, 12
KA_VOCAB = FIRST + TOKENS
KA_OPS = ["identity", "conv_3", "conv_11"]
SOLVES = {"conv_11"}  # verified by test_known_answer_task_needs_the_long_convolution


def ka_config(**kw) -> RevDartsConfig:
    return RevDartsConfig(
        vocab_size=KA_VOCAB, d_model=32, num_heads=2, encoder_layers=1, decoder_layers=1, decoder_splits=2,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, label_smoothing=0.0,
        max_position_embeddings=32, **kw,
    )


def ka_batch(g: torch.Generator, n: int = 32) -> dict[str, torch.Tensor]:
    motif = torch.randint(FIRST, KA_VOCAB, (n, PERIOD), generator=g)
    labels = motif.repeat(1, LENGTH // PERIOD + 1)[:, :LENGTH]
    src = torch.tensor([[3, 2]]).expand(n, 2).contiguous()
    return {"input_ids": src, "attention_mask": torch.ones_like(src), "labels": labels}


def ka_heldout() -> list[dict[str, torch.Tensor]]:
    return [ka_batch(torch.Generator().manual_seed(1000 + i)) for i in range(4)]


@torch.no_grad()
def rule_loss(model: torch.nn.Module) -> float:
    """NLL per token on the positions the rule determines (after the first motif), eval mode."""
    model.eval()
    losses = []
    for b in ka_heldout():
        logits = model(**b).logits[:, PERIOD:]
        losses.append(float(F.cross_entropy(logits.reshape(-1, KA_VOCAB), b["labels"][:, PERIOD:].reshape(-1))))
    return sum(losses) / len(losses)


def ka_search(freeze_alpha: bool, steps: int = 150, seed: int = 0) -> RevDartsSupernet:
    """Seeded first-order DARTS: an α step on a held-out batch, then a θ step on a training batch."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = RevDartsSupernet(ka_config(), encoder_ops=["identity"], decoder_ops=KA_OPS)
    w_opt = make_weight_optimizer(net, lr=3e-3)
    architect = Architect(net, net, make_arch_optimizer(net, lr=arch_lr_for_steps(steps)))
    net.train()
    for _ in range(steps):
        if not freeze_alpha:
            architect.step([ka_batch(g)])
        net(**ka_batch(g)).loss.backward()
        w_opt.step()
        net.zero_grad(set_to_none=True)
    return net


def search_decided(net: RevDartsSupernet) -> bool:
    """The derived op of the node that matters can solve the task, and α clearly prefers it: at least
    0.5 of the softmax mass (uniform over the 3 ops is 0.33), so a lucky argmax of untrained α fails."""
    op = net.genotype().decoder[0][0]
    weight = net.arch_weights()["decoder.p0.s0"][KA_OPS.index(op)]
    return op in SOLVES and weight >= 0.5


def test_known_answer_task_needs_the_long_convolution() -> None:
    """Train the derived model with each op: only conv_11 learns the rule, the others stay at chance."""
    chance = math.log(TOKENS)
    got = {}
    for op in KA_OPS:
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        model = RevDartsForConditionalGeneration(ka_config(encoder_genotype=[["identity", "identity"]],
                                                           decoder_genotype=[[op]]))
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(150):
            model(**ka_batch(g)).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        got[op] = rule_loss(model)
    assert got["conv_11"] < 0.3 * chance, got
    assert got["identity"] > 0.9 * chance and got["conv_3"] > 0.9 * chance, got


@pytest.mark.parametrize("freeze_alpha", [False, True], ids=["search", "alpha-frozen"])
def test_search_finds_the_op_that_solves_the_task(freeze_alpha: bool) -> None:
    net = ka_search(freeze_alpha)
    weights = net.arch_weights()["decoder.p0.s0"]
    assert search_decided(net) is (not freeze_alpha), (net.genotype(), weights)
    if not freeze_alpha:
        assert rule_loss(net) < 0.3 * math.log(TOKENS)  # the supernet itself learned the rule
        sel = select_genotype(net, "perturbation", ka_heldout())
        assert sel.genotype["decoder"][0][0] in SOLVES, sel.loss_increase
    else:
        assert max(weights) < 0.34  # α never left uniform
