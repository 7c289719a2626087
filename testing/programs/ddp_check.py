"""Run by tests/model/test_distributed.py under ``torch.distributed.run`` with 2 CPU processes (gloo), with the
repository root on PYTHONPATH (``testing.launch.env``).

Each rank takes one shard of a padded batch and does a DDP training step through the reversible stacks.
Rank 0 then recomputes, in one process without DDP, the mean of the two shards' gradients (same weights,
same dropout seeds) and writes the largest relative difference to the file given as argv[1].
"""

import json
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hf_revdarts import RevDartsForConditionalGeneration
from testing.builders import grad_errors, padded_batch, tiny_config


def shard(batch: dict, rank: int) -> dict:
    # Overlapping shards of two sentences each, both containing padding.
    return {k: v[rank : rank + 2] for k, v in batch.items()}


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = RevDartsForConditionalGeneration(tiny_config(layers=3, reversible=True))
    batch = padded_batch(model.config.vocab_size)
    ddp = DistributedDataParallel(model)
    # Two steps: the second one catches "marked ready twice" errors that appear only after a first reduction.
    for step in range(2):
        ddp.zero_grad(set_to_none=True)
        torch.manual_seed(100 * step + rank)
        ddp(**shard(batch, rank)).loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        ref = {}
        for r in range(2):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(100 + r)
            model(**shard(batch, r)).loss.backward()
            for n, p in model.named_parameters():
                if p.grad is not None:
                    ref[n] = ref.get(n, 0) + p.grad / 2
        global_err, worst = grad_errors(got, ref)
        with open(sys.argv[1], "w") as f:
            json.dump({"global": global_err, "worst": worst, "params": len(got)}, f)
    dist.barrier()
    # Leave at once: DDP's reducer destroying the gloo group at interpreter exit can deadlock on the GIL.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
