"""Running under torchrun: the process group, and keeping every rank in lockstep.

    torchrun --nproc-per-node 8 -m ctxprobe run --model CKPT --probe niah --lengths 1m
    (multi-node: torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT ... the same)

`init_from_env()` reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK, starts the process group
(NCCL with device cuda:LOCAL_RANK when CUDA is there, gloo otherwise) and returns the World.
Callers pass it on: `prefill(..., ring=world)`, `score`, `generate` and the native backend
(`world=`) shard each prompt across the ranks (ctxprobe/runner/context/ring.py), and every rank
returns the same result. A world of one is no world at all: no process group, the
single-process path unchanged.

Control messages (which cells to run, "did anyone fail?") are Python objects sent over a gloo
group, so they never need a CUDA device of their own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ctxprobe.errors import UserError

@dataclass
class World:
    rank: int
    size: int
    local_rank: int = 0
    group: object = None          # the group the ring runs over (None = the default group)
    control: object = None        # a gloo group for object collectives (None = the default group)
    owns_group: bool = False      # this World started the process group, so it ends it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj, src: int = 0):
        """Rank src's `obj` on every rank (picklable objects)."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.control)
        return box[0]

    def agree(self, error: BaseException | None) -> None:
        """Every rank says whether it failed; if any did, every rank raises.

        The rank that failed re-raises its own exception; the others raise a UserError naming the
        first failed rank, so a user mistake seen on rank 0 (a bad --db, say) makes every rank
        exit with code 2 instead of leaving the others waiting in a collective.
        """
        mine = None if error is None else f"{type(error).__name__}: {error}"
        every = [None] * self.size
        dist.all_gather_object(every, mine, group=self.control)
        if error is not None:
            raise error
        for rank, message in enumerate(every):
            if message is not None:
                user = message.split(": ", 1)[1] if message.startswith(("UserError", "ValueError")) else message
                raise UserError(f"rank {rank} stopped: {user}")

    def bind_thread(self) -> None:
        """Make cuda:LOCAL_RANK the current device of the calling thread. A new thread starts on
        cuda:0, so a worker thread that runs passes (the sweep's pool) must call this first, or
        bare "cuda" tensors (NCCL's first collective among them) land on another rank's GPU."""
        if dist.get_backend(self.group) == "nccl":
            torch.cuda.set_device(self.local_rank)

    def barrier(self) -> None:
        dist.barrier(group=self.control)

    def close(self) -> None:
        """Leave in step with the other ranks (call it only where every rank does): a rank that
        tore down its gloo group while a peer still talked to it could abort the peer."""
        if self.owns_group and dist.is_initialized():
            dist.barrier(group=self.control)
            dist.destroy_process_group()


def torchrun_env() -> tuple[int, int, int] | None:
    """(rank, world size, local rank) when launched by torchrun with more than one process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; launch with torchrun "
                        "rather than setting them by hand") from None
    return (rank, size, local_rank) if size > 1 else None


def init_from_env(device: str | None = None) -> World | None:
    """Join the torchrun process group; None outside torchrun (or a world of 1).

    device: the --device the user asked for; NCCL is used when it is CUDA (or unset and CUDA is
    available), each rank on cuda:LOCAL_RANK.
    """
    env = torchrun_env()
    if env is None:
        return None
    rank, size, local_rank = env
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    owns = not dist.is_initialized()
    if owns:
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if dist.get_world_size() != size or dist.get_rank() != rank:
        raise UserError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) does not "
                        f"match RANK={rank} WORLD_SIZE={size}; launch with torchrun")
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    return World(rank=rank, size=size, local_rank=local_rank, control=control, owns_group=owns)


def rank_device(world: World | None, device: str | None) -> str | None:
    """The device this rank's model goes on: cuda / unset become cuda:LOCAL_RANK under NCCL."""
    if world is None or not torch.cuda.is_available():
        return device
    if device is None or device == "cuda":
        return f"cuda:{world.local_rank}"
    return device
