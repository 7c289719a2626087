"""The memory meters: live tensor bytes counted from new storages until freed, and the step meter's report against
a prediction."""

from __future__ import annotations

import torch

from hf_revdarts import RevDartsForConditionalGeneration, estimate_memory
from hf_revdarts.memory import LiveTensorBytes, StepMemoryMeter
from testing.builders import padded_batch, tiny_config


def test_live_tensor_bytes_counts_new_storages_until_freed():
    x = torch.zeros(1000)
    with LiveTensorBytes() as meter:
        a = torch.ones(250)  # 1000 bytes
        v = a.view(25, 10)  # a view: no new storage
        x.add_(1)  # in place on a storage from before: not new
        b = a * 2
        assert meter.live == 2000
        del a, v, b
        assert meter.live == 0
    assert meter.peak == 2000


def test_step_memory_meter_report():
    config = tiny_config()
    model = RevDartsForConditionalGeneration(config).train()
    batch = padded_batch(config.vocab_size)
    with StepMemoryMeter("cpu") as meter:
        model(**batch).loss.backward()  # no .grad yet: the step allocates the gradients
    params = 4 * sum(p.numel() for p in model.parameters())
    assert meter.retained_bytes == params and meter.peak_bytes > params
    est = estimate_memory(config, batch_size=3, source_length=9, target_length=8)
    text = meter.report(est)
    assert "predicted" in text and "measured" in text and "live tensor bytes" in text
