"""The search decides: on a synthetic task that only one candidate op can solve, first-order DARTS moves α onto that
op and derives it (perturbation selection too), while a search with α frozen does not."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
from hf_revdarts.search import Architect, RevDartsSupernet, arch_lr_for_steps, select_genotype
from hf_revdarts.search.architect import make_arch_optimizer, make_weight_optimizer

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
