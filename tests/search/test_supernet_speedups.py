"""The supernet's speed-ups keep its guarantees. Partial channels (PC-DARTS): exact reversible gradients, identity on
the bypassed channels, plain DARTS at 1, clear errors for sizes it cannot split. Pruning settled ops: the skipped
ops are never run, the output stays the mixture of the kept ones, and gradients stay exact. Single-path sampling
(the θ warm-up of SPOS): one drawn op per node, tied nodes alike, exact gradients."""

from __future__ import annotations

import functools

import pytest
import torch

from hf_revdarts.model.genotype import ENCODER_OPS
from hf_revdarts.model.ops import OpContext
from hf_revdarts.search import RevDartsSupernet
from hf_revdarts.search.supernet import MixedSplit
from testing.builders import (
    grad_errors,
    padded_batch,
    param_grads,
    set_reversible,
    supernet_grads_reversible_vs_ordinary,
    tiny_search_config,
)

VOCAB = 120


tiny = functools.partial(tiny_search_config, vocab_size=VOCAB)


@pytest.mark.parametrize("k", [2, 4])
def test_partial_channels_reversible_gradients_equal_ordinary(k: int) -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(d_model=96 if k == 4 else 48), partial_channels=k).train()
    batch = padded_batch(VOCAB)
    rev, ref, arch = supernet_grads_reversible_vs_ordinary(model, batch)
    total, worst = grad_errors(rev, ref)
    assert total <= 1e-5 and worst <= 1e-5, (total, worst)


def test_partial_channels_ops_see_one_block_and_the_rest_bypasses() -> None:
    cfg = tiny()
    alpha = torch.nn.Parameter(torch.zeros(len(ENCODER_OPS)))
    node = MixedSplit(ENCODER_OPS, 24, cfg, False, alpha, partial_channels=4, block=1).eval()
    assert all(op.norm.normalized_shape == (6,) for op in node.ops if op.norm is not None)  # ops at width 6
    h = torch.randn(2, 5, 24)
    out = node([h], OpContext(), None, None)
    keep = torch.ones(24, dtype=torch.bool)
    keep[6:12] = False
    assert torch.equal(out[..., keep], h[..., keep])  # bypassed channels: identity, exactly
    assert not torch.allclose(out[..., 6:12], h[..., 6:12])
    # The block moves with the layer and split: across a stack every channel block goes through the ops.
    model = RevDartsSupernet(tiny(encoder_layers=4), partial_channels=2)
    starts = {fn.channels.start for layer in model.model.encoder.stack.layers for fn in layer.functions}
    assert starts == {0, 12}


def test_partial_channels_one_is_plain_darts() -> None:
    torch.manual_seed(0)
    a = RevDartsSupernet(tiny())
    torch.manual_seed(0)
    b = RevDartsSupernet(tiny(), partial_channels=1)
    assert a.state_dict().keys() == b.state_dict().keys()
    batch = padded_batch(VOCAB)
    a.eval(), b.eval()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(**batch).loss, b(**batch).loss, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(partial_channels=0), "must be >= 1"),
        (dict(partial_channels=5), "positive divisor of the split width"),
        (dict(partial_channels=8), "not divisible by num_heads"),
    ],
)
def test_partial_channels_bad_values_are_clear_errors(kwargs, needle) -> None:
    with pytest.raises(ValueError, match=needle):
        RevDartsSupernet(tiny(), **kwargs)


def _settled(model: RevDartsSupernet, losers: int = 5) -> None:
    """α as after a search has settled: in every node the first ``losers`` non-zero ops far below the rest."""
    with torch.no_grad():
        for (side, _, _), alpha in zip(model.node_keys(), model.arch_parameters()):
            names = model.op_names(side)
            alpha.zero_()
            for i in [i for i, n in enumerate(names) if n != "zero"][:losers]:
                alpha[i] = -12.0


def test_pruning_skips_settled_ops_and_keeps_the_mixture() -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny()).eval()
    _settled(model)
    batch = padded_batch(VOCAB)
    with torch.no_grad():
        full = model(**batch).logits
    calls: dict[int, int] = {}
    for split in (m for m in model.modules() if isinstance(m, MixedSplit)):
        for op in split.ops:
            op.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
    skipped = model.prune_ops(0.001)
    assert skipped == 5 * len(model.arch_parameters())
    with torch.no_grad():
        pruned = model(**batch).logits
    # the skipped ops weighed e^-12 / (8 + ...) each: the output is the mixture of the kept ops
    torch.testing.assert_close(pruned, full, rtol=1e-4, atol=1e-4)
    for split in (m for m in model.modules() if isinstance(m, MixedSplit)):
        losers = [i for i, n in enumerate(split.op_names) if n != "zero"][:5]
        assert all(id(split.ops[i]) not in calls for i in losers)
        assert all(id(op) in calls for i, op in enumerate(split.ops) if i not in losers and split.op_names[i] != "zero")
    assert model.prune_ops(0.0) == 0 and all(m.op_mask is None for m in model.modules() if isinstance(m, MixedSplit))
    with pytest.raises(ValueError, match="threshold"):
        model.prune_ops(1.0)


def test_pruned_supernet_reversible_gradients_equal_ordinary() -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny()).train()
    _settled(model)
    model.prune_ops(0.001)
    rev, ref, arch = supernet_grads_reversible_vs_ordinary(model, padded_batch(VOCAB))
    total, worst = grad_errors(rev, ref)
    assert total <= 1e-5 and worst <= 1e-5, (total, worst)
    # the pruned ops' weights are exactly 0: their α and their parameters get no gradient
    for split in (m for m in model.modules() if isinstance(m, MixedSplit)):
        for i, op in enumerate(split.ops):
            if not split.op_mask[i]:
                assert all(p.grad is not None and not p.grad.any() for p in op.parameters())


def test_single_path_keeps_one_drawn_op_per_node_tied_nodes_alike() -> None:
    model = RevDartsSupernet(tiny(layers=2), tie_blocks=1).train()
    drawn = model.sample_single_path(torch.Generator().manual_seed(3))
    assert drawn == model.sample_single_path(torch.Generator().manual_seed(3)), "the draw is the generator's alone"
    assert set(drawn) == {name for name, _ in model.named_arch_parameters()}
    for name, op in drawn.items():
        side, position, split = name.split(".")
        tied = model.mixed_splits(side, int(position[1:]), int(split[1:]))
        assert len(tied) == 2 and all(int(m.op_mask.sum()) == 1 for m in tied)
        assert all(m.op_names[int(m.op_mask.nonzero())] == op for m in tied)
    draws = [model.sample_single_path(torch.Generator().manual_seed(s)) for s in range(60)]
    assert "zero" not in {op for d in draws for op in d.values()}  # as the derivation, zero is never drawn
    assert len({op for d in draws for op in d.values()}) > 8
    ran = []
    hooks = [op.register_forward_hook(lambda m, i, o: ran.append(m)) for m in model.modules()
             if isinstance(m, MixedSplit) for op in m.ops]
    model(**padded_batch(VOCAB)).loss.backward()  # reconstruction recomputes the same single op
    assert len(ran) == 2 * len(model.arch_parameters()) * 2  # one op per split: forward and reconstruction
    for h in hooks:
        h.remove()
    model.prune_ops(0.0)
    assert all(m.op_mask is None for m in model.modules() if isinstance(m, MixedSplit))


def test_single_path_reversible_gradients_equal_ordinary() -> None:
    """θ gradients through reconstruction equal autograd's on a sampled path (α gets none: one kept op's softmax
    weight is 1 whatever α is, which is why α does not move during the warm-up)."""
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny()).train()
    model.sample_single_path(torch.Generator().manual_seed(1))
    batch = padded_batch(VOCAB)
    grads = {}
    for reversible in (True, False):
        set_reversible(model, reversible)
        grads[reversible] = param_grads(model, batch)
    total, worst = grad_errors(grads[True], grads[False])
    assert total <= 1e-5 and worst <= 1e-5, (total, worst)
    assert all(float(a.grad.abs().sum()) == 0.0 for a in model.arch_parameters())
