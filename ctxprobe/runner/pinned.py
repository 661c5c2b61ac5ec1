"""Page-locked host memory at its exact size: buffers the GPU copies from (or into) as one DMA.

pin_memory=True goes through torch's caching host allocator, which rounds every block up to a
power of two: 10M tokens x 5120 x bf16 (100 GiB) of hidden states would pin 128 GiB, and a Llama 4
Scout layer (4.4 GB of weights) 8 GiB, more than the planner counted. So a buffer is allocated
plainly and registered with CUDA at its exact size (cudaHostRegister, as
torch.cuda._pin_memory_utils does); only when that fails is the caching allocator the fallback.
Without CUDA, page-locking buys nothing and the buffer is plain memory.
"""

from __future__ import annotations

import os

import torch


def page_locked(shape, dtype) -> tuple[torch.Tensor, bool]:
    """-> (host tensor of `shape`, page-locked where CUDA can; registered by us?).

    A registered buffer must be given back with `unregister` before it is freed."""
    t = torch.empty(shape, dtype=dtype)
    try:   # flag 1: cudaHostRegisterPortable (every device may DMA from it)
        nbytes = t.numel() * t.element_size()
        if nbytes:
            if int(torch.cuda.cudart().cudaHostRegister(t.data_ptr(), nbytes, 1)) == 0:
                return t, True
            _clear_last_cuda_error()
    except Exception:
        pass
    if not torch.cuda.is_available():
        return t, False
    del t   # never hold both copies
    return torch.empty(shape, dtype=dtype, pin_memory=True), False


def unregister(t: torch.Tensor, device=None):
    """Undo `page_locked`'s registration, after every copy that may touch the pages is done."""
    torch.cuda.synchronize(device)
    torch.cuda.cudart().cudaHostUnregister(t.data_ptr())


def _clear_last_cuda_error():
    """A failed cudaHostRegister leaves its error as the runtime's "last error", and torch checks
    that after every kernel launch: an unrelated kernel would then fail with it. torch's bindings
    have no cudaGetLastError, so call the one in the runtime torch already loaded (best effort)."""
    import ctypes

    for soname in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            lib = ctypes.CDLL(soname, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        except OSError:
            continue
        lib.cudaGetLastError()
        return
