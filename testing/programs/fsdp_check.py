"""FSDP check, run by tests/model/test_distributed.py with 2 processes: the derived model and the supernet
(reversible) under FSDP give the gradients and, after Adam steps, the weights and α that DDP gives (the mean of the
ranks' shard gradients). Run from the repository root with it on PYTHONPATH (``testing.launch.env``):

    python -m torch.distributed.run --nproc_per_node 2 testing/programs/fsdp_check.py OUT.json --fsdp 1|2  # CPU
    accelerate launch --use_fsdp --fsdp_auto_wrap_policy NO_WRAP --fsdp_use_orig_params true \
        --num_processes 2 testing/programs/fsdp_check.py OUT.json --accelerate                     # 2 GPUs

``--fsdp 1``: ``FullyShardedDataParallel(use_orig_params=True)``; ``--fsdp 2``: ``fully_shard``; both with the
whole network as one unit. Per-layer units do not work with reversible layers (the reconstruction runs a layer
again inside backward, outside FSDP's hooks, so its parameters are still sharded there); ReversibleStack raises a
clear error for them. ``--accelerate``: accelerate's FSDP plugin; accelerate 1.15 refuses it without an
accelerator ("no available devices": FSDP v1) or silently prepares DDP instead (v2), so on CPU the script exits
with code 3 and the reason rather than check DDP under the name of FSDP.

Rank 0 recomputes everything without FSDP (same weights and dropout seeds) and writes the worst relative errors
of gradients and final parameters/α, and the largest α difference across ranks, to OUT.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

from hf_revdarts import RevDartsForConditionalGeneration
from hf_revdarts.search import RevDartsSupernet
from testing.builders import grad_errors, padded_batch, tiny_config

STEPS, LR = 2, 1e-2


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_config(layers=2, reversible=True)
    return (RevDartsSupernet(config) if kind == "supernet" else RevDartsForConditionalGeneration(config)).train()


def shard(batch: dict, rank: int) -> dict:
    return {k: v[rank : rank + 2] for k, v in batch.items()}  # overlapping shards with padding


def clean(name: str) -> str:
    return name.replace("_fsdp_wrapped_module.", "").replace("module.", "", 1 if name.startswith("module.") else 0)


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def full_state(model: torch.nn.Module, version: int, grads: bool) -> dict[str, torch.Tensor]:
    """Unsharded gradients (or parameters) by their plain names."""
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        with FSDP.summon_full_params(model, with_grads=grads, writeback=False):
            return {clean(n): (p.grad if grads else p).detach().clone() for n, p in model.named_parameters()
                    if not grads or p.grad is not None}
    return {clean(n): full(p.grad if grads else p) for n, p in model.named_parameters() if not grads or p.grad is not None}


def reference(kind: str, world: int, device: torch.device) -> tuple[list[dict], dict]:
    """What DDP computes: per step the mean of the shards' gradients, then Adam (on the FSDP run's device, so that
    dropout draws the same masks)."""
    model = build(kind).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    batch = {k: v.to(device) for k, v in padded_batch(model.config.vocab_size).items()}
    grads = []
    for step in range(STEPS):
        mean: dict[str, torch.Tensor] = {}
        for r in range(world):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(100 * step + r)
            model(**shard(batch, r)).loss.backward()
            for n, p in model.named_parameters():
                if p.grad is not None:
                    mean[n] = mean.get(n, 0) + p.grad / world
        for n, p in model.named_parameters():
            p.grad = mean.get(n)
        grads.append({n: g.cpu() for n, g in mean.items()})
        opt.step()
    return grads, {n: p.detach().cpu() for n, p in model.named_parameters()}


def run(kind: str, version: int, rank: int, world: int, accelerator=None) -> dict:
    model = build(kind)
    if accelerator is not None:
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        model, opt = accelerator.prepare(model, opt)
        version = getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1)
    elif version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        model = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
    else:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
        opt = torch.optim.Adam(model.parameters(), lr=LR)
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    batch = {k: v.to(device) for k, v in padded_batch(tiny_config().vocab_size).items()}
    got = []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(100 * step + rank)
        loss = model(**shard(batch, rank)).loss
        (accelerator.backward(loss) if accelerator is not None else loss.backward())
        got.append({n: g.cpu() for n, g in full_state(model, version, grads=True).items()})
        opt.step()
    params = {n: p.cpu() for n, p in full_state(model, version, grads=False).items()}
    alphas = torch.cat([params[n].flatten() for n in sorted(params) if n.endswith("alpha")]) if kind == "supernet" \
        else torch.zeros(1)
    alphas = alphas.to(device)
    gathered = [torch.zeros_like(alphas) for _ in range(world)]
    dist.all_gather(gathered, alphas)
    result = {"alpha_rank_diff": max(float((g - alphas).abs().max()) for g in gathered)}
    if rank == 0:
        ref_grads, ref_params = reference(kind, world, device)
        result["grad_worst"] = max(grad_errors(g, r)[1] for g, r in zip(got, ref_grads))
        result["param_worst"] = grad_errors(params, ref_params)[1]
        result["alphas"] = int(alphas.numel()) if kind == "supernet" else 0
    return result


def per_layer_error(version: int) -> str:
    """FSDP units per reversible layer are refused with a clear error (not a shape error deep in backward)."""
    model = build("model")
    layers = list(model.model.encoder.stack.layers) + list(model.model.decoder.stack.layers)
    if version == 1:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        from hf_revdarts.model.reversible import ReversibleLayer

        model = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True,
                     auto_wrap_policy=ModuleWrapPolicy({ReversibleLayer}))
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
    try:
        model(**shard(padded_batch(tiny_config().vocab_size), dist.get_rank())).loss.backward()
    except RuntimeError as err:
        return str(err)
    return ""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--fsdp", type=int, choices=(1, 2), default=2)
    p.add_argument("--accelerate", action="store_true")
    args = p.parse_args()
    accelerator = None
    if args.accelerate:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        try:
            accelerator = Accelerator()
        except RuntimeError as err:  # accelerate's FSDP plugin without an accelerator
            print(f"accelerate FSDP cannot run here: {err}", file=sys.stderr)
            sys.exit(3)
        if accelerator.distributed_type != DistributedType.FSDP:
            print(f"accelerate prepared {accelerator.distributed_type} instead of FSDP (no accelerator device); "
                  "not checking DDP under the name of FSDP", file=sys.stderr)
            sys.exit(3)
    else:
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {kind: run(kind, args.fsdp, rank, world, accelerator) for kind in ("model", "supernet")}
    if accelerator is None:
        results["per_layer_error"] = per_layer_error(args.fsdp)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(results, f)
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # as ddp_check.py: leave before the process group's teardown can hang


if __name__ == "__main__":
    main()
