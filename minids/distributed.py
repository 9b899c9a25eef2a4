"""Many GPUs (or CPU processes) under torchrun, never a home-made launcher.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `setup` joins its process group (NCCL on GPUs, gloo
on CPUs). The trainer then wraps the model in DDP (`wrap_ddp`) or shards it with FSDP2
(`shard_model`), skips the gradient all-reduce on accumulation micro-steps (`grad_sync`), and
averages what it logs over the ranks (`mean_over_ranks`). Checkpoints hold whole tensors:
`full_tensor` gathers a shard, `shard_like` splits a whole tensor again.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel as DDP


@dataclass
class World:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False        # the process group was started by `setup` (the trainer ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "cpu") -> World:
    """Join torchrun's process group when RANK and WORLD_SIZE are set (NCCL for CUDA, gloo for
    CPU); reuse a group the caller started; else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return World(dist.get_rank(), dist.get_world_size(), local, owns_group=True)


def teardown(world: World) -> None:
    if world.owns_group:
        dist.destroy_process_group()


def mean_over_ranks(values: list, world: World) -> list[float]:
    """Average scalars (tensors or floats) over all ranks in one all-reduce."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float32).detach().reshape(()).cpu() for v in values])
    if world.size > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = t.to(dev)
        dist.all_reduce(t)
        t = t / world.size
    return t.tolist()


def gather_objects(obj, world: World) -> list:
    """Every rank's `obj`, in rank order (a collective: all ranks call it)."""
    if world.size == 1:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor from an FSDP2 shard (a collective), else t itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A whole tensor `t` laid out as `ref`: sharded like it under FSDP2, else unchanged."""
    if isinstance(ref, DTensor):
        return distribute_tensor(t.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)
    return t


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: every block (main and MTP) becomes one shard unit, then the rest (embedding, head,
    norms, MTP projections) the root unit. Parameters become DTensors split along dim 0 across
    the ranks; each block's full weights exist only while it runs (gathered before, freed after).
    An MTP module's own norms stay in the root unit: `mtp_forward` calls `module.norm` outside
    the module's forward, where a unit of its own would already be sharded again."""
    for block in model.layers:
        fully_shard(block)
    for m in model.mtp:
        fully_shard(m.block)
    fully_shard(model)
    return model


def wrap_ddp(model: torch.nn.Module, device: str, world: World) -> DDP:
    """DDP without its per-forward buffer broadcast: the router biases stay equal on all ranks by
    MoE.update_bias's all-reduce. (torch 2.13 names the switch forward_sync_buffers and deprecates
    broadcast_buffers, the only name torch 2.11 knows.)"""
    key = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters \
        else "broadcast_buffers"
    return DDP(model, device_ids=[world.local_rank] if device.startswith("cuda") else None, **{key: False})


def grad_sync(train_model: torch.nn.Module, sync: bool):
    """A context for one micro-step: skip the gradient all-reduce unless `sync` (the last one)."""
    if isinstance(train_model, DDP):
        return contextlib.nullcontext() if sync else train_model.no_sync()
    if hasattr(train_model, "set_requires_gradient_sync"):           # FSDP2
        train_model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()
