"""Where each rank's share of a sequence lies, for sequence-parallel (ring) attention.

Layouts, for a sequence of T tokens on W ranks:
    "contiguous": W chunks; rank r holds chunk r.
    "zigzag":     2W chunks; rank r holds chunks r and 2W-1-r, so that under a causal mask
                  every rank has the same amount of work (an early chunk plus a late one).
Chunk sizes follow torch.tensor_split: T % n chunks of ceil(T/n) first, then floor(T/n),
so any T works (chunks may be empty when T < n). With `align` the sizes count units of align
tokens, so chunk boundaries fall on multiples of align: give a chunked-local model's chunk size
(Llama 4: 8192) and its local layers need no KV from other ranks at all. A rank's shard is its
chunks concatenated in position order; `shard_ranges` gives their absolute [start, end)
positions, coalesced where adjacent and without empty pieces.
"""

from __future__ import annotations

import torch

LAYOUTS = ("zigzag", "contiguous")
Range = tuple[int, int]   # absolute positions [start, end)


def _check(layout: str, rank: int, world_size: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")


def chunk_bounds(seq_len: int, n_chunks: int, align: int = 1) -> list[tuple[int, int]]:
    """[start, end) of each of n_chunks chunks of a seq_len sequence, tensor_split sizes counted in
    units of `align` tokens, so every boundary but the sequence end is a multiple of align."""
    if align < 1:
        raise ValueError(f"align must be a positive number of tokens, got {align}")
    base, extra = divmod(-(-seq_len // align), n_chunks)
    bounds, unit = [], 0
    for i in range(n_chunks):
        end_unit = unit + base + (1 if i < extra else 0)
        bounds.append((min(unit * align, seq_len), min(end_unit * align, seq_len)))
        unit = end_unit
    return bounds


def shard_ranges(seq_len: int, rank: int, world_size: int, layout: str = "zigzag",
                 align: int = 1) -> list[tuple[int, int]]:
    """Absolute [start, end) position ranges held by `rank`, ascending, non-empty, coalesced."""
    _check(layout, rank, world_size)
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    if layout == "contiguous":
        pieces = [chunk_bounds(seq_len, world_size, align)[rank]]
    else:
        chunks = chunk_bounds(seq_len, 2 * world_size, align)
        pieces = [chunks[rank], chunks[2 * world_size - 1 - rank]]
    ranges: list[tuple[int, int]] = []
    for start, end in pieces:
        if end == start:
            continue
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end)
        else:
            ranges.append((start, end))
    return ranges


def piece_offsets(ranges: list[Range]) -> list[int]:
    """Where each piece of a shard starts inside the shard (its pieces concatenated in order)."""
    offsets, at = [], 0
    for s, e in ranges:
        offsets.append(at)
        at += e - s
    return offsets


def chunk_align(chunk_sizes, seq_len: int, world_size: int) -> int:
    """The `align` for a model whose layers attend in chunks of `chunk_sizes` (None: not chunked):
    the one chunk size (Llama 4: 8192) when every zigzag piece can hold at least one whole chunk,
    so chunked layers need no K/V from other ranks; else 1 (shorter prompts split finer, and ring
    attention is exact either way)."""
    chunks = set(chunk_sizes) - {None}
    if len(chunks) == 1:
        c = chunks.pop()
        if seq_len >= 2 * world_size * c:
            return c
    return 1


def shard_len(seq_len: int, rank: int, world_size: int, layout: str = "zigzag", align: int = 1) -> int:
    return sum(end - start for start, end in shard_ranges(seq_len, rank, world_size, layout, align))


def shard_positions(seq_len: int, rank: int, world_size: int, layout: str = "zigzag",
                    align: int = 1, device=None) -> torch.Tensor:
    """[T_rank] int64: the absolute position of each token of the rank's shard (e.g. for RoPE)."""
    ranges = shard_ranges(seq_len, rank, world_size, layout, align)
    parts = [torch.arange(s, e, device=device) for s, e in ranges]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=device)


def shard(x: torch.Tensor, rank: int, world_size: int, layout: str = "zigzag", dim: int = 2,
          align: int = 1) -> torch.Tensor:
    """The rank's share of x along `dim` (the sequence dim; 2 for [B, H, T, D])."""
    ranges = shard_ranges(x.shape[dim], rank, world_size, layout, align)
    if len(ranges) <= 1:
        start, end = ranges[0] if ranges else (0, 0)
        return x.narrow(dim, start, end - start)
    return torch.cat([x.narrow(dim, s, e - s) for s, e in ranges], dim=dim)


def unshard(shards: list[torch.Tensor], layout: str = "zigzag", dim: int = 2, align: int = 1) -> torch.Tensor:
    """Inverse of `shard`: the per-rank shards (index = rank) -> the full sequence along dim."""
    world_size = len(shards)
    seq_len = sum(s.shape[dim] for s in shards)
    pieces: list[tuple[int, torch.Tensor]] = []
    for rank, x in enumerate(shards):
        ranges = shard_ranges(seq_len, rank, world_size, layout, align)
        expected = sum(e - s for s, e in ranges)
        if x.shape[dim] != expected:
            raise ValueError(f"shard of rank {rank} has {x.shape[dim]} tokens on dim {dim}, the "
                             f"{layout} layout of {seq_len} tokens on {world_size} ranks gives it "
                             f"{expected}; pass the shards in rank order")
        offset = 0
        for start, end in ranges:
            pieces.append((start, x.narrow(dim, offset, end - start)))
            offset += end - start
    pieces.sort(key=lambda p: p[0])
    return torch.cat([p for _, p in pieces], dim=dim) if pieces else shards[0]


def gather(x: torch.Tensor, seq_len: int, layout: str = "zigzag", dim: int = 2, group=None,
           align: int = 1) -> torch.Tensor:
    """All-gather every rank's shard of a seq_len sequence and return the full sequence.

    Shards may differ in length by a token or two; they are padded to the longest for the
    collective (gloo needs equal sizes) and trimmed after.
    """
    import torch.distributed as dist

    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    lengths = [shard_len(seq_len, r, world_size, layout, align) for r in range(world_size)]
    if x.shape[dim] != lengths[rank]:
        raise ValueError(f"rank {rank} holds {x.shape[dim]} tokens on dim {dim}, the {layout} layout "
                         f"of seq_len {seq_len} gives it {lengths[rank]}; check seq_len")
    longest = max(lengths)
    pad_shape = list(x.shape)
    pad_shape[dim] = longest - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad_shape)], dim=dim).contiguous()
    buffers = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(buffers, padded, group=group)
    return unshard([b.narrow(dim, 0, n) for b, n in zip(buffers, lengths)], layout, dim, align)
