"""The trainer's ranks: torch.distributed set-up and the few collectives the loop needs.

One module for every "am I rank 0, how many are we, wait for the others" question the
trainer, its checkpoints, its update and its weight pushes ask, so each is written once. A
process without torch.distributed (a world of one) answers rank 0 of 1, and every
collective here is then the identity.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

TRAIN_COLLECTIVE_TIMEOUT_S = 1800.0  # one collective of the update itself (ZeRO gathers, reductions)
_wait_group: Any = None


def init_distributed(wait_timeout_s: float | None = None) -> tuple[int, int]:
    """Initialise torch.distributed (gloo on CPU, nccl on GPU); works without a launcher.

    Two groups: the update's collectives (nccl on GPU) time out after 30 minutes; ranks that
    wait while rank 0 rolls out or evaluates wait on a gloo group of their own for
    `wait_timeout_s` (it must outlast a step's rollout, DeepSpeed's default of 10 minutes
    does not). A gloo wait blocks on a socket: an NCCL one would spin on the GPU, which a
    colocated vLLM server needs, for as long as the longest rollout.
    """
    global _wait_group
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    if not torch.distributed.is_initialized():
        if os.environ["WORLD_SIZE"] == "1":
            # a world of one hosts its own store: take a free port, never the one a parent
            # process (whose environment this inherited) is still listening on
            from swe_aem.policy.server import free_port

            os.environ["MASTER_PORT"] = str(free_port())
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False,
                                   timeout=timedelta(seconds=TRAIN_COLLECTIVE_TIMEOUT_S))
    world = torch.distributed.get_world_size()
    if world > 1 and _wait_group is None:  # every rank calls this at the same point
        wait = TRAIN_COLLECTIVE_TIMEOUT_S if wait_timeout_s is None else wait_timeout_s
        _wait_group = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=wait))
    return torch.distributed.get_rank(), world


def wait_group() -> Any:
    """The gloo group ranks wait on for rank 0's work (None in a world of one)."""
    return _wait_group


def initialized() -> bool:
    """Whether this process is in a torch.distributed world."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if initialized() else 1


def multi() -> bool:
    """Whether other ranks take part (collectives do something)."""
    return world_size() > 1


def where() -> str:
    """This rank, named for an error message."""
    return f"rank {rank()} (host {socket.gethostname()}, LOCAL_RANK {local_rank()})"


def barrier() -> None:
    if multi():
        dist.barrier()


def broadcast(obj: Any) -> Any:
    """rank 0's obj on every rank, through the gloo wait group (ranks may wait here for a
    whole rollout)."""
    if not multi():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=wait_group())
    return box[0]


def all_gather(obj: Any) -> list:
    """Every rank's `obj`, in rank order (a world of one: [obj])."""
    if not multi():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_rank0(obj: Any) -> list | None:
    """Every rank's `obj` on rank 0, in rank order; None on the others (a world of one:
    [obj]). Through the gloo wait group: host objects (CPU tensors) go over sockets, not
    through the GPU, and only rank 0 receives them."""
    if not multi():
        return [obj]
    out: list | None = [None] * dist.get_world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=wait_group())
    return out


def all_reduce_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The sum of `t` over the ranks (reduced on `device`, returned on the CPU)."""
    if not multi():
        return t
    moved = t.to(device)
    dist.all_reduce(moved)
    return moved.cpu()


def all_reduce(x: float, device: torch.device, op: str = "sum") -> float:
    """The sum (op="sum") or maximum (op="max") of `x` over the ranks."""
    if not multi():
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return float(t.item())


def leave_process_group() -> None:
    """Tear down this rank's process group before an error exit: a gloo group left alive when
    the interpreter ends aborts the process (SIGABRT, "terminate called without an active
    exception") and the error's exit code is lost."""
    if initialized():
        dist.destroy_process_group()
