"""Ring attention: exact attention over a sequence sharded across the ranks of a process group.

Each rank holds the q, k, v of its shard (see attention.shard for the layouts). In W steps the
KV shards travel around the ring (rank r sends to r+1 and receives from r-1) by P2P
send/recv; at step s rank r holds the KV that started on rank r-s. The transfer for step s+1
is posted before step s computes, so it runs while this rank attends. Each shard is one or
two pieces of absolute positions; every (query piece, key piece) pair is one `attend` call
with its own q_start / k_start, so masks stay exact, and pairs the mask hides entirely are
skipped. Partial results merge with `merge` (fp32). A KV shard is forwarded only while some
rank further along the ring still sees part of it, so a chunked-local or windowed layer moves
only the blocks it needs. A rank may keep its own K/V share in a KVStore (host or disk tier)
instead of device tensors: `ring_attend(q, kv=store)`, see attention/ring_tiers.py. Sinks join
each query piece's result once, after the merge over every step (attention/sinks.py).

Shapes: B batch, Hq / Hkv query / key-value heads, T tokens of this rank's shard, Dk query/key
head dim, Dv value head dim.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

from .blockwise import attend
from .masks import visible_pairs
from .merge import merge
from .ring_tiers import check_store, own_share_step
from .shard import LAYOUTS, Range, piece_offsets, shard_ranges
from .sinks import apply_sinks, check_sinks

_NCCL_READY: set = set()  # process groups that have run a collective


def last_needed_step(ranges_of: list[list[Range]], origin: int, causal: bool, chunk_size: int | None,
                     window: int | None) -> int:
    """The last ring step at which some rank sees the KV that started on `origin` (0 = its own)."""
    world_size = len(ranges_of)
    last = 0
    for step in range(world_size):
        rank = (origin + step) % world_size
        if visible_pairs(ranges_of[rank], ranges_of[origin], causal, chunk_size, window):
            last = step
    return last


@functools.lru_cache(maxsize=256)
def ring_plan(seq_len: int, world_size: int, layout: str, align: int, causal: bool, chunk_size: int | None,
              window: int | None) -> tuple[list[list[Range]], list[int]]:
    """Every rank's position ranges and, per origin rank, the last step its KV is needed.
    Cached: a model calls ring_attend with the same few arguments for every layer."""
    ranges_of = [shard_ranges(seq_len, r, world_size, layout, align) for r in range(world_size)]
    last_step = [last_needed_step(ranges_of, j, causal, chunk_size, window) for j in range(world_size)]
    return ranges_of, last_step


class RingComm:
    """P2P with the ring neighbours (group ranks r+1 and r-1); one batch of transfers in flight."""

    def __init__(self, group=None, device=None):
        self.group = group
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self.distributed else 0
        self.world_size = dist.get_world_size(group) if self.distributed else 1
        if self.distributed and self.rank < 0:
            raise ValueError("this process is not a member of the `group` passed to ring_attend; "
                             "call ring_attend only on the group's ranks")
        # "nccl", or "cpu:gloo,cuda:nccl" for a group initialised without naming a backend.
        if self.world_size > 1 and "nccl" in str(dist.get_backend(group)):
            # Keyed by the group object itself: after destroy/init_process_group the default
            # group (None) is a new group that has run nothing yet.
            key = group if group is not None else dist.group.WORLD
            if key not in _NCCL_READY:
                # NCCL needs every rank in the first P2P batch of a group; ours may skip some, so
                # one collective on the group comes first, on this rank's device (the shard's).
                dist.all_reduce(torch.zeros(1, device=device if device is not None else "cuda"), group=group)
                _NCCL_READY.add(key)
        self.send_to = self._global_rank((self.rank + 1) % self.world_size)
        self.recv_from = self._global_rank((self.rank - 1) % self.world_size)
        self._requests = []

    def _global_rank(self, group_rank: int) -> int:
        if self.group is None or not self.distributed:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def total(self, n: int, device) -> int:
        """Sum of n over the group's ranks (the global sequence length)."""
        if self.world_size == 1:
            return n
        t = torch.tensor([n], dtype=torch.int64, device=device)
        dist.all_reduce(t, group=self.group)
        return int(t.item())

    def send_recv(self, send: list[torch.Tensor], recv_shapes: list[torch.Size], like: torch.Tensor):
        """Post sends of `send` to the next rank and receives from the previous; returns the
        receive buffers, valid after `wait()`."""
        assert not self._requests, "wait() for the transfer in flight before posting another"
        received = [torch.empty(shape, dtype=like.dtype, device=like.device) for shape in recv_shapes]
        ops = [dist.P2POp(dist.isend, t, self.send_to, self.group) for t in send]
        ops += [dist.P2POp(dist.irecv, t, self.recv_from, self.group) for t in received]
        if ops:
            self._requests = dist.batch_isend_irecv(ops)
        return received

    def wait(self) -> None:
        for request in self._requests:
            request.wait()
        self._requests = []


def ring_attend(q, k=None, v=None, *, scale=None, causal=True, chunk_size=None, window=None, layout="zigzag",
                group=None, seq_len=None, align=1, backend="auto", kv=None, sinks=None):
    """Exact attention for this rank's shard of a sequence sharded with `attention.shard`.

    q [B, Hq, T, Dk], k [B, Hkv, T, Dk], v [B, Hkv, T, Dv]: this rank's shard (queries and keys at
    the same positions). Returns out [B, Hq, T, Dv] (q's dtype) and lse [B, Hq, T] float32, equal
    to `attend` over the whole sequence, sharded the same way (same layout and align).
    `sinks` [Hq]: as in `attend`; applied once per query, after every rank's keys are merged.
    `seq_len` (the global length) saves one all-reduce when the caller knows it; `backend` goes
    to `attend`. Without an initialised process group it runs as a world of one.
    `kv`: instead of k and v, a `KVStore` (host or disk tier) holding this rank's k/v shard
    (B = 1); its blocks stream in for the first step (attention/ring_tiers.py).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if (kv is None) == (k is None and v is None) or (k is None) != (v is None):
        raise ValueError("pass this rank's keys and values either as k and v tensors or as kv=KVStore, "
                         "not both and not neither")
    if kv is not None:
        check_store(q, kv)
        check_sinks(sinks, q.shape[1])
        return _ring(q, None, kv, (1, kv.n_kv_heads, kv.head_dim, kv.v_head_dim, kv.values_in_keys), causal=causal,
                     chunk_size=chunk_size, window=window, layout=layout, group=group, seq_len=seq_len,
                     align=align, backend=backend, scale=scale, sinks=sinks)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3] or q.shape[3] != k.shape[3]:
        raise ValueError(f"expected q [B, Hq, T, Dk], k [B, Hkv, T, Dk] and v [B, Hkv, T, Dv]; got "
                         f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[2] != q.shape[2] or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"ring_attend needs q and k/v of one shard (same T) and query heads a multiple "
                         f"of kv heads; got q {tuple(q.shape)}, k {tuple(k.shape)}")
    check_sinks(sinks, q.shape[1])
    return _ring(q, (k.contiguous(), v.contiguous()), None, (k.shape[0], k.shape[1], k.shape[3], v.shape[3], False),
                 causal=causal, chunk_size=chunk_size, window=window, layout=layout, group=group,
                 seq_len=seq_len, align=align, backend=backend, scale=scale, sinks=sinks)


def _ring(q, kv, store, kv_dims, *, scale, causal, chunk_size, window, layout, group, seq_len, align, backend,
          sinks):
    """The ring loop. kv: this rank's (k, v) tensors, or None with `store` holding them;
    kv_dims (B, Hkv, Dk, Dv, values_in_keys) size the buffers received (values_in_keys: V is
    K[..., :Dv], so K alone travels; every rank's store has the same setting)."""
    B, Hkv, Dk, Dv, shared = kv_dims
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 (or None), got {window}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (or None), got {chunk_size}")
    comm = RingComm(group, q.device)
    W, rank = comm.world_size, comm.rank
    if seq_len is None:
        seq_len = comm.total(q.shape[2], q.device)
    ranges_of, last_step = ring_plan(seq_len, W, layout, align, causal, chunk_size, window)
    mine = ranges_of[rank]
    if sum(e - s for s, e in mine) != q.shape[2]:
        raise ValueError(f"rank {rank} holds {q.shape[2]} tokens but the {layout} layout of {seq_len} "
                         f"tokens on {W} ranks (align {align}) gives it {sum(e - s for s, e in mine)}; shard "
                         f"with attention.shard(x, rank, world_size, layout={layout!r}, align={align})")
    mask = dict(causal=causal, chunk_size=chunk_size, window=window)

    q_offsets = piece_offsets(mine)
    acc: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(mine)
    first_step = 0
    like = q if kv is None else kv[0]
    if store is not None:
        kv = own_share_step(q, store, comm, ranges_of, last_step, acc, scale=scale, mask=mask, backend=backend)
        first_step = 1
    for step in range(first_step, W):
        origin, next_origin = (rank - step) % W, (rank - step - 1) % W
        # The KV we hold goes on if the next rank still needs it; we receive the one we need next.
        send = (list(kv[:1]) if shared else list(kv)) if step + 1 <= last_step[origin] else []
        recv_shapes = []
        if step + 1 <= last_step[next_origin]:
            n = sum(e - s for s, e in ranges_of[next_origin])
            recv_shapes = [(B, Hkv, n, Dk)] + ([] if shared else [(B, Hkv, n, Dv)])
        incoming = comm.send_recv(send, recv_shapes, like)
        if step <= last_step[origin]:
            k_ranges, k_offsets = ranges_of[origin], piece_offsets(ranges_of[origin])
            for i, j in visible_pairs(mine, k_ranges, **mask):
                (qs, qe), (ks, ke) = mine[i], k_ranges[j]
                out, lse = attend(q.narrow(2, q_offsets[i], qe - qs), kv[0].narrow(2, k_offsets[j], ke - ks),
                                  kv[1].narrow(2, k_offsets[j], ke - ks), scale=scale, q_start=qs,
                                  k_start=ks, backend=backend, **mask)
                # The first part stays in q's dtype; merges accumulate in float32.
                acc[i] = (out, lse) if acc[i] is None else merge(*acc[i], out, lse)
        comm.wait()
        if incoming:
            kv = (incoming[0], incoming[0][..., :Dv]) if shared else tuple(incoming)
    return _assemble(acc, mine, q, Dv, sinks)


def _assemble(acc, ranges: list[Range], q: torch.Tensor, Dv: int, sinks):
    """Per-piece (out, lse) -> this rank's out [B, Hq, T, Dv], lse [B, Hq, T]; sinks applied here,
    once, to each piece's result merged over every step."""
    B, Hq, T, _ = q.shape
    outs, lses = [], []
    for part, (s, e) in zip(acc, ranges):
        if part is None:  # no key visible to any query of this piece
            part = (q.new_zeros(B, Hq, e - s, Dv),
                    torch.full((B, Hq, e - s), float("-inf"), dtype=torch.float32, device=q.device))
        if sinks is not None:
            part = apply_sinks(part[0].float(), part[1], sinks)
        outs.append(part[0])
        lses.append(part[1])
    if not outs:
        return q.new_zeros(B, Hq, T, Dv), torch.full(q.shape[:3], float("-inf"), device=q.device)
    if len(outs) == 1:
        return outs[0].to(q.dtype), lses[0].float()
    return torch.cat([o.to(q.dtype) for o in outs], dim=2), torch.cat([x.float() for x in lses], dim=2)
