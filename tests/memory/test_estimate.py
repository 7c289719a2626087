"""The memory estimate: each op's saved bytes equal what autograd keeps, byte for byte; whole steps are predicted
within 15% in every memory mode; activations grow with depth in ordinary mode and stay flat when reversible; the
estimate's fields and argument checks."""

from __future__ import annotations

import pytest
import torch

from hf_revdarts import RevDartsConfig, RevDartsForConditionalGeneration, estimate_memory
from hf_revdarts.memory import MEMORY_MODES, LiveTensorBytes, apply_memory_mode, op_cost
from hf_revdarts.memory.estimate import _Side
from hf_revdarts.model.genotype import DECODER_OPS, ENCODER_OPS
from hf_revdarts.model.ops import OpContext, SplitFunction
from hf_revdarts.search import RevDartsSupernet
from testing.builders import ONE_OP_PER_KIND, tiny_config


def _traced_saved_bytes(fn: torch.nn.Module, inputs: list, ctx: OpContext, side: torch.Tensor | None) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for backward of ``fn``'s forward."""
    params = {p.untyped_storage().data_ptr() for p in fn.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(inputs, ctx, side, None)
    return sum(seen.values())


DROPOUTS = [(0.1, 0.1, 0.1), (0.1, 0.0, 0.0), (0.0, 0.0, 0.0)]  # dropout, attention (kernel choice), activation


@pytest.mark.parametrize("dropouts", DROPOUTS)
@pytest.mark.parametrize("causal", [False, True])
def test_per_op_saved_bytes_match_what_autograd_saves(dropouts, causal):
    """The planner's table of saved bytes equals, byte for byte, what each op of ops.py keeps for backward.
    When an op changes what it saves, this names it: update ``memory/estimate.py:op_cost`` with it."""
    drop, attn, act = dropouts
    B, T, S, d = 3, 11, 7, 96
    config = tiny_config(d_model=d, num_heads=2, dropout=drop, attention_dropout=attn, activation_dropout=act)
    w = d // (3 if causal else 2)
    pad = torch.ones(B, S if not causal else T, dtype=torch.bool)
    pad[1, 4:] = False
    src_pad = torch.ones(B, S, dtype=torch.bool)
    src_pad[2, 3:] = False
    if causal:  # as RevDartsDecoder builds it (no decoder_attention_mask in training)
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None]
        ctx = OpContext(None, mask, src_pad[:, None, None, :], causal=True)
        length = T
    else:
        ctx = OpContext(pad, pad[:, None, None, :])
        length = S
    side = torch.randn(B, S, d, requires_grad=True)
    shape = _Side(B, length, w, d, S, causal, not causal, 4, True)
    torch.manual_seed(0)
    for name in DECODER_OPS if causal else ENCODER_OPS:
        fn = SplitFunction(name, w, config, causal).train()
        h = torch.randn(B, length, w, requires_grad=True)
        traced = _traced_saved_bytes(fn, [h], ctx, side)
        cost = op_cost(name, shape, config)
        predicted = cost.saved + (h.numel() * 4 if cost.saves_input else 0)
        predicted += side.numel() * 4 if name == "cross_attn" else 0  # the encoder output: counted once per model
        assert predicted == traced, (name, dropouts, causal, predicted, traced)
        assert cost.params == sum(p.numel() for p in fn.parameters()), name


def _measured_activation(model: torch.nn.Module, batch: dict) -> int:
    def step() -> None:
        model.zero_grad(set_to_none=False)
        out = model(**batch)
        out.loss.backward()

    step()  # gradient buffers exist: the baseline, as in the planner's definition
    meter = LiveTensorBytes()
    with meter:
        step()
    assert meter.live == 0  # everything the step allocated was freed again
    return meter.peak


def _batch(B: int, S: int, T: int, vocab: int) -> dict:
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(4, vocab, (B, S), generator=g), torch.randint(4, vocab, (B, T), generator=g)
    mask = torch.ones_like(ids)
    mask[0, S // 2 :] = 0
    labels[-1, T // 2 :] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("supernet", [False, True])
def test_prediction_within_15_percent_of_measured_step_in_every_mode(supernet):
    B, S, T, layers = 4, 14, 10, 2 if supernet else 3
    config = tiny_config(layers=layers, d_model=48, vocab_size=120, activation_dropout=0.0)
    torch.manual_seed(0)
    space = ONE_OP_PER_KIND if supernet else {}
    model = (RevDartsSupernet(config, **space) if supernet else RevDartsForConditionalGeneration(config)).train()
    batch = _batch(B, S, T, config.vocab_size)
    measured, predicted = {}, {}
    for mode in MEMORY_MODES:
        apply_memory_mode(model, mode, keep_layers=1)
        measured[mode] = _measured_activation(model, batch)
        est = estimate_memory(config, batch_size=B, source_length=S, target_length=T, mode=mode, supernet=supernet,
                              keep_layers=1, **space)
        predicted[mode] = est.activation_bytes
        assert est.parameter_bytes == 4 * sum(p.numel() for p in model.parameters())
    for mode in MEMORY_MODES:
        assert abs(predicted[mode] / measured[mode] - 1) <= 0.15, (mode, predicted, measured)
    # ... a tolerance that a wrong model fails: the modes differ by far more than 15%
    assert measured["ordinary"] > 1.5 * measured["reversible"]
    assert abs(predicted["reversible"] / measured["ordinary"] - 1) > 0.15


def test_activation_grows_with_depth_in_ordinary_mode_and_is_flat_when_reversible():
    def act(layers: int, mode: str, supernet: bool = False) -> int:
        config = RevDartsConfig(vocab_size=1000, d_model=192, encoder_layers=layers, decoder_layers=layers)
        return estimate_memory(config, batch_size=16, source_length=32, target_length=32, mode=mode,
                               supernet=supernet).activation_bytes

    for supernet in (False, True):
        ordinary = [act(L, "ordinary", supernet) for L in (2, 4, 8, 12)]
        checkpoint = [act(L, "checkpoint", supernet) for L in (2, 4, 8, 12)]
        reversible = [act(L, "reversible", supernet) for L in (2, 4, 8, 12)]
        assert ordinary == sorted(ordinary) and ordinary[-1] > 3 * ordinary[0]
        assert checkpoint == sorted(checkpoint) and checkpoint[-1] < ordinary[-1]
        assert len(set(reversible)) == 1  # flat in depth
        assert reversible[-1] < checkpoint[-1]
    hybrid = [estimate_memory(RevDartsConfig(vocab_size=1000, d_model=192, encoder_layers=8, decoder_layers=8),
                              16, 32, 32, mode="hybrid", keep_layers=k).activation_bytes for k in range(9)]
    assert hybrid == sorted(hybrid) and hybrid[0] == act(8, "reversible") and hybrid[8] == act(8, "ordinary")


def test_estimate_fields_and_dict_contract():
    est = estimate_memory(tiny_config(), batch_size=2, source_length=5, target_length=4, mode="reversible")
    d = est.as_dict()
    assert [k for k in d if "activation" in k] and all(isinstance(d[k], int) for k in d if k.endswith("_bytes"))
    assert d["optimizer_bytes"] == 2 * d["parameter_bytes"] and d["gradient_bytes"] == d["parameter_bytes"]
    assert d["total_bytes"] >= d["parameter_bytes"] + d["gradient_bytes"] + d["optimizer_bytes"] + d["activation_bytes"]
    assert "reversible" in est.summary()


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"mode": "revesible"}, "unknown memory mode 'revesible'"),
        ({"mode": "hybrid", "keep_layers": -1}, "keep_layers=-1"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"optimizer": "lamb"}, "optimizer='lamb'"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"supernet": True, "encoder_ops": ["conv_4"]}, "unknown op 'conv_4'"),
    ],
)
def test_bad_estimate_arguments_are_clear_errors(kwargs, needle):
    args = {"batch_size": 2, "source_length": 5, "target_length": 4, **kwargs}
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        estimate_memory(tiny_config(), **args)
