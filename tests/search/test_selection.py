"""Deriving the genotype: argmax never takes zero unless it is alone, and perturbation selection (DARTS-PT) picks the
op whose removal hurts the held-out loss most, with every reported increase equal to a plain masked forward."""

from __future__ import annotations

import functools

import pytest
import torch

from hf_revdarts import Genotype
from hf_revdarts.model.modeling_revdarts import shift_tokens_right
from hf_revdarts.search import RevDartsSupernet, select_genotype
from hf_revdarts.search.selection import (
    fixed_genotype,
    genotype_log_prob,
    heldout_nll,
    removed_op,
    sample_genotypes,
    score_genotypes,
)
from testing.builders import padded_batch, set_alpha, tiny_search_config

VOCAB = 200


tiny = functools.partial(tiny_search_config, vocab_size=VOCAB)


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


def _one_hot_alpha(model: RevDartsSupernet, genotype: Genotype) -> None:
    """α of every node pushed onto the genotype's op: softmax gives it weight 1, the others exactly 0."""
    with torch.no_grad():
        for side, position, split in model.node_keys():
            alpha = model.alpha_for(side, position, split)
            alpha.fill_(-1e4)
            alpha[model.op_names(side).index(genotype[side][position][split])] = 0.0


def test_fixed_genotype_is_the_supernet_with_only_that_genotypes_ops() -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(layers=2, dropout=0.0)).eval()
    genotype = sample_genotypes(model, 1, torch.Generator().manual_seed(3))[0]
    batch = padded_batch(VOCAB)
    with torch.no_grad():
        mixed = model(**batch).logits
        with fixed_genotype(model, genotype):
            fixed = model(**batch).logits
        assert all(m.op_mask is None for m in model.modules() if hasattr(m, "op_mask"))  # restored
        _one_hot_alpha(model, genotype)
        one_hot = model(**batch).logits
    assert not torch.allclose(mixed, fixed, atol=1e-3)
    torch.testing.assert_close(fixed, one_hot, rtol=0, atol=1e-5)
    # the supernet's estimate is that forward's held-out loss
    assert score_genotypes(model, [genotype], [batch])[0] == pytest.approx(heldout_nll(model, [batch]), abs=1e-6)


def test_fixed_genotype_refuses_what_the_supernet_cannot_compute() -> None:
    tied = RevDartsSupernet(tiny(layers=2), tie_blocks=1, encoder_ops=["zero", "conv_3", "glu"],
                            decoder_ops=["conv_3", "conv_11"])
    good = {"encoder": [["glu", "conv_3"]] * 2, "decoder": [["conv_3", "conv_11"]] * 2}
    with fixed_genotype(tied, good):
        pass
    untied = {**good, "encoder": [["glu", "conv_3"], ["conv_3", "conv_3"]]}
    with pytest.raises(ValueError, match=r"encoder\.p0\.s0 is tied across blocks of 1 layers.*'glu'.*'conv_3'"):
        with fixed_genotype(tied, untied):
            pass
    with pytest.raises(ValueError, match=r"'conv_7' is not a candidate of the supernet"):
        with fixed_genotype(tied, {**good, "encoder": [["conv_7", "conv_3"]] * 2}):
            pass
    with pytest.raises(ValueError, match="3 layers"):
        with fixed_genotype(tied, {**good, "encoder": [["glu", "conv_3"]] * 3}):
            pass
    assert all(m.op_mask is None for m in tied.modules() if hasattr(m, "op_mask"))


def test_sample_genotypes_are_distinct_reproducible_and_never_zero() -> None:
    model = RevDartsSupernet(tiny(layers=2), tie_blocks=1, encoder_ops=["zero", "conv_3", "glu"],
                             decoder_ops=["conv_3", "conv_11"])
    drawn = sample_genotypes(model, 50, torch.Generator().manual_seed(0))
    assert len(drawn) == 16 == len({g.to_json() for g in drawn})  # 2 candidates at each of 4 nodes: all of them
    assert all(op != "zero" for g in drawn for *_, op in g.nodes())
    assert all(g.encoder[0] == g.encoder[1] for g in drawn)  # the supernet's tying kept
    first = sample_genotypes(model, 5, torch.Generator().manual_seed(7))
    assert first == sample_genotypes(model, 5, torch.Generator().manual_seed(7))


def test_sampled_selection_keeps_the_lowest_supernet_estimate() -> None:
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(layers=2, dropout=0.0), tie_blocks=1)
    batches = [padded_batch(VOCAB, seed=s) for s in range(2)]
    sel = select_genotype(model, "sampled", batches, samples=12, seed=1)
    assert model.training and all(m.op_mask is None for m in model.modules() if hasattr(m, "op_mask"))
    losses = [s["loss"] for s in sel.scored]
    assert len(sel.scored) == 13 and losses == sorted(losses)  # 12 draws and the argmax genotype
    assert sel.genotype == Genotype.from_dict(sel.scored[0]["genotype"])
    argmax = model.genotype()
    assert sel.base_loss == pytest.approx(next(s["loss"] for s in sel.scored if s["genotype"] == argmax), abs=0)
    assert sel.base_loss >= losses[0]
    assert score_genotypes(model, [sel.genotype], batches)[0] == pytest.approx(losses[0], abs=1e-6)
    assert select_genotype(model, "sampled", batches, samples=12, seed=1).to_dict() == sel.to_dict()
    with pytest.raises(ValueError, match="batches"):
        select_genotype(model, "sampled")


def test_alpha_scores_a_genotype_by_the_log_probability_argmax_maximises() -> None:
    """α as a ranking of any genotype: the argmax genotype scores highest, a tied node counts once."""
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(layers=2, dropout=0.0), tie_blocks=1)
    set_alpha(model, "encoder.p0.s0", "glu", 3.0)
    argmax = model.genotype(exclude=())
    drawn = sample_genotypes(model, 10, torch.Generator().manual_seed(3), exclude=())
    assert all(genotype_log_prob(model, argmax) >= genotype_log_prob(model, g) for g in drawn)
    expected = sum(torch.log_softmax(a.detach(), -1)[model.op_names(k[0]).index(argmax[k[0]][k[1]][k[2]])]
                   for k, a in zip(model.node_keys(), model.arch_parameters()))
    assert genotype_log_prob(model, argmax) == pytest.approx(float(expected), abs=1e-5)
    assert genotype_log_prob(model, argmax.to_dict()) < 0  # a probability below one
