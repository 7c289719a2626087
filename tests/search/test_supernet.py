"""The supernet: α and weight gradients through backprop with reconstruction equal ordinary autograd's (tied α, a
temperature and an op mask included), its parameter contract (α apart from the weights, in the state dict, the
derived genotype and config), custom search spaces, mixing weights, and round trips through its config and folder."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration
from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS
from hf_revdarts.model.reversible import _unique_params
from hf_revdarts.search import RevDartsSupernet
from hf_revdarts.search.supernet import mixing_weights
from testing.builders import (
    grad_errors,
    padded_batch,
    param_grads,
    set_reversible,
    supernet_grads_reversible_vs_ordinary,
    tiny_search_config,
)

VOCAB = 200


tiny = functools.partial(tiny_search_config, vocab_size=VOCAB)


@pytest.mark.parametrize("tie_blocks", [0, 1, 2])
def test_reversible_gradients_equal_ordinary_autograd(tie_blocks: int) -> None:
    """α and weight gradients through backprop-with-reconstruction equal ordinary autograd (dropout on).
    tie_blocks=1 with 2 layers shares each α across both layers: the tied case that breaks if α is not
    registered below the reversible stack."""
    torch.manual_seed(0)
    model = RevDartsSupernet(tiny(), tie_blocks=tie_blocks)
    model.train()
    batch = padded_batch(VOCAB)
    rev, ref, arch = supernet_grads_reversible_vs_ordinary(model, batch)
    total, worst = grad_errors(rev, ref)
    a_total, a_worst = grad_errors({n: rev[n] for n in arch}, {n: ref[n] for n in arch})
    assert total <= 1e-5 and worst <= 1e-5, (total, worst)
    assert a_total <= 1e-5 and a_worst <= 1e-5, (a_total, a_worst)


def test_tied_alpha_is_one_parameter_inside_each_stack() -> None:
    model = RevDartsSupernet(tiny(), tie_blocks=1)
    assert len(model.arch_parameters()) == 2 + 2  # (encoder 2 splits + decoder 2 searched) × 1 position
    for stack in (model.model.encoder.stack, model.model.decoder.stack):
        ids = [id(p) for p in _unique_params(stack)]
        assert len(ids) == len(set(ids))
        in_stack = [a for a in model.arch_parameters() if id(a) in set(ids)]
        assert len(in_stack) == 2  # the α the reversible Function returns gradients for
    # the tied layers really share the object
    enc = model.model.encoder.stack.layers
    assert enc[0].functions[0].alpha is enc[1].functions[0].alpha


def test_contract_parameters_genotype_derive_config(tmp_path: Path) -> None:
    model = RevDartsSupernet(tiny(layers=2, dropout=0.0))
    arch, weights = model.arch_parameters(), model.weight_parameters()
    assert len(arch) == 2 * 2 + 2 * 2
    assert all(isinstance(a, torch.nn.Parameter) and a.requires_grad for a in arch)
    assert {id(p) for p in arch}.isdisjoint({id(p) for p in weights})
    assert len(arch) + len(weights) == len(list(model.parameters()))
    assert all(a.shape == (len(ENCODER_OPS),) for a in arch[:4]) and all(a.shape == (len(DECODER_OPS),) for a in arch[4:])
    # α are in the state dict (checkpoints) and set argmax picks
    keys = [k for k in model.state_dict() if k.endswith(".alpha")]
    assert len(keys) == 8
    with torch.no_grad():
        model.alpha_for("encoder", 1, 0)[ENCODER_OPS.index("glu")] = 5.0
        model.alpha_for("decoder", 0, 1)[DECODER_OPS.index("cross_attn")] = 5.0
    geno = model.genotype()
    assert len(geno.encoder) == 2 and all(len(r) == 2 for r in geno.encoder)
    assert len(geno.decoder) == 2 and all(len(r) == 2 for r in geno.decoder)
    assert geno.encoder[1][0] == "glu" and geno.decoder[0][1] == "cross_attn"
    out = model(**padded_batch(VOCAB))
    assert out.loss.isfinite() and out.logits.shape[-1] == VOCAB
    cfg = model.derive_config()
    assert cfg.get_genotype() == geno and cfg.d_model == 48
    cfg.save_pretrained(tmp_path)
    derived = RevDartsForConditionalGeneration(RevDartsConfig.from_pretrained(tmp_path))
    assert derived(**padded_batch(VOCAB)).loss.isfinite()


def test_return_dict_false_gives_the_same_values_as_a_tuple() -> None:
    """forward honours return_dict (the argument, else config.return_dict), supernet and derived model alike."""
    batch = padded_batch(VOCAB)
    for model in (RevDartsSupernet(tiny(layers=1, dropout=0.0)), RevDartsForConditionalGeneration(tiny(dropout=0.0))):
        out = model(**batch)
        as_tuple = model(**batch, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.loss) and torch.equal(as_tuple[1], out.logits)
        model.config.return_dict = False
        assert isinstance(model(**batch), tuple) and not isinstance(model(**batch, return_dict=True), tuple)


def test_custom_search_space_and_errors() -> None:
    model = RevDartsSupernet(tiny(layers=1), encoder_ops=["ffn", "identity"], decoder_ops=["self_attn", "zero"])
    assert [tuple(a.shape) for a in model.arch_parameters()] == [(2,), (2,), (2,), (2,)]
    assert model.genotype().encoder[0][0] in ("ffn", "identity")
    with pytest.raises(ValueError, match="conv_4"):
        RevDartsSupernet(tiny(layers=1), encoder_ops=["ffn", "conv_4"])
    with pytest.raises(ValueError, match="cross_attn"):
        RevDartsSupernet(tiny(layers=1), encoder_ops=["cross_attn"])
    with pytest.raises(ValueError, match="empty"):
        RevDartsSupernet(tiny(layers=1), decoder_ops=[])


@pytest.mark.parametrize("tie_blocks", [0, 2])
def test_supernet_from_config_alone_round_trips_as_a_folder(tmp_path: Path, tie_blocks: int) -> None:
    """The search settings live in the config: RevDartsSupernet(config) rebuilds the same search space, and
    save_pretrained/from_pretrained keep every weight and α (a tied α is one tensor in several modules)."""
    config = tiny(layers=4, search_encoder_ops=["ffn", "glu", "zero"], tie_blocks=tie_blocks, alpha_init_std=0.5)
    torch.manual_seed(0)
    model = RevDartsSupernet(config)
    assert model.op_names("encoder") == ("ffn", "glu", "zero") and model.op_names("decoder") == DECODER_OPS
    assert len(model.arch_parameters()) == 2 * (2 * (tie_blocks or 4)), "one α per block position and split"
    assert max(float(a.detach().abs().max()) for a in model.arch_parameters()) > 0.1, "alpha_init_std is read"
    model.save_pretrained(tmp_path)
    loaded = RevDartsSupernet.from_pretrained(tmp_path)
    assert loaded.config.tie_blocks == tie_blocks and loaded.config.search_encoder_ops == ["ffn", "glu", "zero"]
    for (name, a), (name2, b) in zip(model.named_arch_parameters(), loaded.named_arch_parameters()):
        assert name == name2 and torch.equal(a, b)
    registered = {id(p) for p in loaded.parameters()}
    assert all(id(a) in registered for a in loaded.arch_parameters()), "α must be the loaded, trained tensors"
    if tie_blocks:
        layers = loaded.model.encoder.stack.layers
        assert layers[0].functions[0].alpha is layers[tie_blocks].functions[0].alpha
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert loaded.genotype() == model.genotype()


def test_keyword_overrides_are_written_into_a_copy_of_the_config() -> None:
    config = tiny(layers=2)
    model = RevDartsSupernet(config, tie_blocks=1, encoder_ops=["ffn", "identity"], alpha_init_std=0.0)
    assert model.config.tie_blocks == 1 and model.config.search_encoder_ops == ["ffn", "identity"]
    assert config.tie_blocks == 0 and config.search_encoder_ops is None, "the caller's config is left alone"
    assert all(torch.equal(a, torch.zeros_like(a)) for a in model.arch_parameters())
    with pytest.raises(ValueError, match="tie_blocks"):
        RevDartsSupernet(config, tie_blocks=-1)
    with pytest.raises(ValueError, match="search_decoder_ops"):
        tiny(search_decoder_ops=["conv_4"])


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
    """With a temperature and an op mask in the mixing weights, α/θ gradients through reconstruction still equal
    autograd's."""
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
        grads[rev] = param_grads(model, batch)
    assert all(a.grad is not None for a in model.arch_parameters())
    total, worst = grad_errors(grads[True], grads[False])
    assert total <= 1e-5 and worst <= 1e-5, (total, worst)
