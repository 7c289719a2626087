"""Memory planning for RevDarts training: predict a step's memory in each mode, pick the mode that fits a budget,
measure what a step really used.

    from hf_revdarts.memory import estimate_memory, plan_memory, apply_memory_mode, StepMemoryMeter

    est = estimate_memory(config, batch_size=32, source_length=64, target_length=64, mode="reversible", supernet=True)
    plan = plan_memory(config, 32, 64, 64, max_memory="16GB", supernet=True)   # plan.mode, plan.keep_layers
    apply_memory_mode(model, plan.mode, plan.keep_layers)
    with StepMemoryMeter(device) as meter:
        <first training step>
    logger.info(meter.report(plan.estimate))
"""

from .estimate import MEMORY_MODES, MemoryEstimate, estimate_memory, format_bytes, op_cost
from .meter import LiveTensorBytes, StepMemoryMeter
from .planner import (
    MemoryPlan,
    apply_memory_mode,
    d_model_step,
    largest_batch,
    parse_memory_size,
    plan_memory,
    widest_d_model,
)

__all__ = [
    "MEMORY_MODES",
    "LiveTensorBytes",
    "MemoryEstimate",
    "MemoryPlan",
    "StepMemoryMeter",
    "apply_memory_mode",
    "d_model_step",
    "estimate_memory",
    "format_bytes",
    "largest_batch",
    "op_cost",
    "parse_memory_size",
    "plan_memory",
    "widest_d_model",
]
