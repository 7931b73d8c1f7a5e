"""Scale-out on torch.distributed: `torchrun --nproc-per-node N -m streamrl learn …` (or
`learn.world_size: N` under `streamrl run`), NCCL on GPUs, gloo on CPUs.

Design: rank 0 reads, every rank replicates. Rank 0 alone consumes the rewards topic (one member of
`learn_group`), polls the reward weights and the serving policy, and each loop iteration broadcasts
what it read (records, the weights version, a rollback reset, the checkpoint tick, stop) to every
rank. All ranks then run the same deterministic bookkeeping (admit, held-out split, CTR table,
buffer, sampling with the same seeded generator), so they hold identical state, and each rank rolls
out and back-propagates its own contiguous share of the step's global batch (`learn.batch_prompts`
prompts in all). Gradients are summed across ranks with one all-reduce of a flat buffer, each
rank's loss terms having been weighted by their share of the *global* batch, so N ranks compute
exactly the one-process gradient (tested); every rank then takes the same optimiser step.

Why rank-0-reads rather than one consumer per rank: the learner's state (buffer, held-out set, CTR
table, offsets) stays one state, saved by rank 0 in one checkpoint with one set of offsets, and a
restart resumes every rank from it; the rewards topic's throughput is far below what one reader
handles (docs/benchmarks.md), while the GPU work is what needs N devices. Why not the
DistributedDataParallel wrapper: a rollout makes L + 1 forward calls through the KV cache before one
backward (and micro-batches several backwards per step); DDP's reducer expects one forward per
backward. The explicit all-reduce is the same averaging, once per step, after accumulation.

Rank 0 alone checkpoints, commits, pushes, dead-letters and serves /metrics. When one rank dies,
torchrun's agent stops the others and (with `--max-restarts`) starts the group again: every rank
resumes from rank 0's last checkpoint; records read after it are read again (the at-least-once
window of a single learner, docs/architecture.md).
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger("streamrl.distributed")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of n items, balanced when n does not divide (a warm start
        or an offline run over fewer usable prompts than the batch); a rank may get none."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)


SINGLE = Dist()


def from_env(device: torch.device, timeout_s: float = 600.0) -> Dist:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, MASTER_ADDR/PORT); one process
    without them. NCCL on CUDA, gloo on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(seconds=timeout_s)
        rank = int(os.environ["RANK"])
        # The group's keys under a prefix of torchrun's restart attempt: measured here (torch 2.13,
        # gloo), a group restarted by `--max-restarts` otherwise meets the dead attempt's addresses
        # in torchrun's store and fails to connect ("Gloo connectFullMesh failed").
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, False, timeout=timeout
        )
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        prefixed = dist.PrefixStore(f"streamrl/attempt_{attempt}", store)
        dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world, timeout=timeout)
    d = Dist(dist.get_rank(), dist.get_world_size())
    log.info("rank %d of %d (%s)", d.rank, d.world, dist.get_backend())
    return d


def broadcast(d: Dist, obj: Any) -> Any:
    """Rank 0's object on every rank (pickled between this job's own processes)."""
    if not d.on:
        return obj
    import torch.distributed as dist

    box = [obj if d.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(d: Dist, obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    if not d.on:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def sum_gradients(d: Dist, params: list[torch.nn.Parameter]) -> None:
    """Sum the ranks' gradients in place with one all-reduce of a flat buffer (a parameter without
    a gradient on a rank counts as zeros, so every rank reduces the same layout)."""
    if not d.on:
        return
    import torch.distributed as dist

    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:  # back in place: no third copy of the gradients alive at the peak
        n = p.numel()
        summed = flat[offset : offset + n].view_as(p)
        if p.grad is None:
            p.grad = summed
        else:
            p.grad.copy_(summed)
        offset += n


def sync_parameters(d: Dist, model: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (they start equal; this makes sure)."""
    if not d.on:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def close(d: Dist) -> None:
    if d.on:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
