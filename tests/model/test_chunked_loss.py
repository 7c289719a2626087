"""The chunked LM head loss: the full head's loss and gradients without its batch x length x vocab tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import Seq2SeqLMOutput

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration, estimate_memory, plan_memory
from hf_revdarts.memory import LiveTensorBytes, format_bytes
from hf_revdarts.model.modeling_revdarts import (
    _chunked_lm_head_loss,
    _DeferredHeadWeightGradient,
    _HeadGradientState,
    loss_tile,
)
from hf_revdarts.search import RevDartsSupernet
from testing.builders import padded_batch, tiny_config, tiny_search_config


def _relative(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


@pytest.mark.parametrize("chunk_size", [16, 100, 1 << 20])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_loss_and_gradients_equal_cross_entropy_over_the_full_logits(chunk_size, smoothing):
    torch.manual_seed(0)
    vocab, tokens = 97, 33
    hidden = torch.randn(tokens, 16, requires_grad=True)
    weight = (0.5 * torch.randn(vocab, 16)).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,))
    labels[::4] = -100
    ref = F.cross_entropy(F.linear(hidden, weight), labels, ignore_index=-100, label_smoothing=smoothing)
    ref_grads = torch.autograd.grad(1.7 * ref, (hidden, weight))

    state = _HeadGradientState(weight, smoothing, chunk_size)
    got = _chunked_lm_head_loss(hidden, _DeferredHeadWeightGradient.apply(weight, state), labels, state)
    got_grads = torch.autograd.grad(1.7 * got, (hidden, weight))

    rows, cols = loss_tile(int((labels != -100).sum()), vocab, chunk_size)
    assert rows * cols <= chunk_size or cols == 1
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    for g, r in zip(got_grads, ref_grads):
        assert _relative(g, r) <= 1e-6
    assert got_grads[0][::4].abs().max() == 0  # ignored positions get no gradient


def test_closer_to_float64_than_the_full_head():
    """The two heads differ by more than 1e-6 at a large vocabulary because the full head's float32 rounding grows
    with it: against a float64 reference the chunked head's loss and gradients stay within 5e-7."""
    torch.manual_seed(0)
    vocab, tokens, width = 4000, 600, 64
    hidden, weight = torch.randn(tokens, width), 0.1 * torch.randn(vocab, width)
    labels = torch.randint(0, vocab, (tokens,))
    labels[::4] = -100

    def full(dtype: torch.dtype) -> list[torch.Tensor]:
        h, w = hidden.to(dtype).requires_grad_(), weight.to(dtype).requires_grad_()
        loss = F.cross_entropy(F.linear(h, w), labels, ignore_index=-100, label_smoothing=0.1)
        return [loss.detach(), *torch.autograd.grad(loss, (h, w))]

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    state = _HeadGradientState(w, 0.1, 1 << 16)
    loss = _chunked_lm_head_loss(h, _DeferredHeadWeightGradient.apply(w, state), labels, state)
    chunked = [loss.detach(), *torch.autograd.grad(loss, (h, w))]
    exact, rounded = full(torch.float64), full(torch.float32)
    errors = [_relative(c.double(), e) for c, e in zip(chunked, exact)]
    assert max(errors) <= 5e-7, errors
    assert errors[1] <= _relative(rounded[1].double(), exact[1])  # dL/dhidden


def _step(model, batch, chunked: bool, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.config.chunked_loss = chunked
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks in both steps
    out = model(**batch, **kwargs)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


MODELS = {
    "tied": lambda: RevDartsForConditionalGeneration(tiny_config(label_smoothing=0.1, loss_chunk_size=64)),
    "factorised": lambda: RevDartsForConditionalGeneration(
        tiny_config(label_smoothing=0.1, loss_chunk_size=64, embedding_dim=24)
    ),
    "untied": lambda: RevDartsForConditionalGeneration(
        tiny_config(label_smoothing=0.1, loss_chunk_size=64, tie_word_embeddings=False)
    ),
    "supernet": lambda: RevDartsSupernet(tiny_search_config(label_smoothing=0.1, loss_chunk_size=64)),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_training_step_equals_the_full_head_with_dropout_and_label_smoothing(kind):
    torch.manual_seed(0)
    model = MODELS[kind]().train()
    assert model.config.dropout > 0 and model.config.label_smoothing > 0
    batch = padded_batch(model.config.vocab_size)
    loss_full, grads_full = _step(model, batch, chunked=False)
    loss, grads = _step(model, batch, chunked=True)

    torch.testing.assert_close(loss, loss_full, rtol=1e-6, atol=0)  # the same value to a float32 ulp
    assert grads.keys() == grads_full.keys()
    total = sum(float(g.norm()) ** 2 for g in grads_full.values()) ** 0.5
    difference = sum(float((grads[n] - g).norm()) ** 2 for n, g in grads_full.items()) ** 0.5
    assert difference / total <= 1e-6
    # per parameter too, but for those whose exact gradient is zero (a key projection's bias: softmax is
    # invariant to it), whose computed one is rounding noise
    worst = max(_relative(grads[n], g) for n, g in grads_full.items() if float(g.norm()) > 1e-6 * total)
    assert worst <= 1e-5
    shared = model.get_input_embeddings().weight
    assert shared.grad.layout == torch.strided and not shared.grad.is_sparse


def test_gradient_of_the_tied_embedding_alone_and_of_the_body_alone():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(dropout=0.0, attention_dropout=0.0, loss_chunk_size=64))
    batch = padded_batch(model.config.vocab_size)
    shared, norm = model.model.shared.weight, model.model.encoder.norm.weight
    expected = {}
    for chunked in (False, True):
        model.config.chunked_loss = chunked
        expected[chunked] = torch.autograd.grad(model.train()(**batch).loss, [shared, norm])
        # the embedding's gradient is not wanted: the deferred one never runs, the body's is still right
        only_norm = torch.autograd.grad(model(**batch).loss, [norm])[0]
        torch.testing.assert_close(only_norm, expected[chunked][1], rtol=0, atol=0)
    for got, ref in zip(expected[True], expected[False]):
        assert _relative(got, ref) <= 1e-6


def test_logits_of_a_training_step_are_computed_when_asked_for():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0))
    batch = padded_batch(model.config.vocab_size)
    model.config.chunked_loss = False
    full = model.train()(**batch)
    model.config.chunked_loss = True

    out = model(**batch)
    assert isinstance(out, Seq2SeqLMOutput) and "logits" not in out.keys()  # a loop reading .loss holds none
    assert torch.equal(out.logits, full.logits) and out.logits.requires_grad
    assert list(out.keys()) == list(full.keys()) == ["loss", "logits", "encoder_last_hidden_state"]
    for asked in (model(**batch)["logits"], model(**batch)[1], model(**batch).to_tuple()[1],
                  model(**batch, return_dict=False)[1]):
        assert torch.equal(asked, full.logits)
    # evaluation and generation-style calls return them as before
    model.eval()
    assert type(model(**batch)) is Seq2SeqLMOutput and torch.equal(model(**batch).logits, full.logits)
    with torch.no_grad():
        assert type(model.train()(**batch)) is Seq2SeqLMOutput

    out = model.train()(**batch)
    out.loss.backward()
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # an optimizer step before the logits were read
    with pytest.raises(RuntimeError, match="chunked_loss"):
        out.logits


def test_labels_outside_the_vocabulary_and_all_ignored():
    model = RevDartsForConditionalGeneration(tiny_config()).train()
    batch = padded_batch(model.config.vocab_size)
    batch["labels"][0, 0] = model.config.vocab_size
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(**batch)
    batch["labels"][:] = -100
    for chunked in (False, True):  # as F.cross_entropy: a nan loss and zero gradients
        model.config.chunked_loss = chunked
        model.zero_grad(set_to_none=True)
        loss = model(**batch).loss
        loss.backward()
        assert loss.isnan() and float(model.model.shared.weight.grad.abs().max()) == 0.0


def test_bf16_autocast_follows_the_full_head():
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(
        tiny_config(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, loss_chunk_size=64)
    ).train()
    batch = padded_batch(model.config.vocab_size)
    results = {}
    for chunked in (False, True):
        model.config.chunked_loss = chunked
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        results[chunked] = loss.detach(), model.model.shared.weight.grad.clone()
    assert abs(float(results[True][0] / results[False][0]) - 1) < 1e-2
    assert _relative(results[True][1], results[False][1]) < 3e-2


def test_a_step_holds_no_logits_and_the_planner_predicts_it():
    """At a vocabulary large against the model the full head's tensors dominate a reversible step; the chunked
    step stays far below, and the planner's prediction is within 15% of the measurement either way."""
    B, S, T = 4, 14, 10
    config = tiny_config(layers=1, vocab_size=3000, activation_dropout=0.0, loss_chunk_size=4096)
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(config).train()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(4, 3000, (B, S), generator=g),
             "labels": torch.randint(4, 3000, (B, T), generator=g)}
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    measured, predicted = {}, {}
    for chunked in (False, True):
        model.config.chunked_loss = chunked
        for _ in range(2):  # the first step allocates the gradient buffers, the second is measured
            model.zero_grad(set_to_none=False)
            meter = LiveTensorBytes()
            with meter:
                out = model(**batch)  # held through backward, as training loops do
                out.loss.backward()
                del out
        measured[chunked] = meter.peak
        predicted[chunked] = estimate_memory(config, batch_size=B, source_length=S, target_length=T,
                                             mode="reversible", chunked_loss=chunked).activation_bytes
    logits = B * T * config.vocab_size * 4
    assert measured[False] > 3 * logits and measured[True] < measured[False] / 3, {
        k: format_bytes(v) for k, v in measured.items()}
    for chunked in (False, True):
        assert abs(predicted[chunked] / measured[chunked] - 1) <= 0.15, (chunked, predicted, measured)


def test_planner_and_config_switch():
    config = RevDartsConfig(vocab_size=32000, d_model=192, encoder_layers=6, decoder_layers=6)
    assert config.chunked_loss is True
    shape = dict(batch_size=32, source_length=64, target_length=64)
    chunked = estimate_memory(config, mode="ordinary", **shape)
    full = estimate_memory(config, mode="ordinary", chunked_loss=False, **shape)
    assert chunked.activation_bytes < full.activation_bytes - 3 * 32 * 64 * 32000 * 4
    # a budget between the two: the planner, reading config.chunked_loss, takes ordinary autograd only with it
    budget = (chunked.total_bytes + full.total_bytes) // 2
    assert plan_memory(config, max_memory=budget, **shape).mode == "ordinary"
    config.chunked_loss = False
    assert plan_memory(config, max_memory=budget, **shape).mode != "ordinary"
    for bad in ({"chunked_loss": "yes"}, {"loss_chunk_size": 0}, {"loss_chunk_size": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RevDartsConfig(**bad)
    with pytest.raises(ValueError, match="chunked_loss"):
        estimate_memory(config, mode="ordinary", chunked_loss="yes", **shape)
