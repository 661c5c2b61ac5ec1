"""Exact attention over contexts far larger than GPU memory.

`attend(q, k, v, ...) -> (out, lse)` is the one kernel signature; blocks merge with `merge`.
"""

from attention.merge import merge
from attention.reference import attend_reference


def attend(q, k, v, *, scale=None, causal=True, q_start=None, k_start=0, chunk_size=None,
           window=None, backend="auto"):
    """q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D] -> out [B, Hq, Tq, D], lse [B, Hq, Tq] float32."""
    return attend_reference(q, k, v, scale=scale, causal=causal, q_start=q_start,
                            k_start=k_start, chunk_size=chunk_size, window=window)


__all__ = ["attend", "attend_reference", "merge"]
