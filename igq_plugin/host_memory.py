"""Host (CPU) memory policy around calibration and quantized evaluation (glibc only).

glibc's ``malloc`` serves a block above its mmap threshold (adjusted at run time, at
most 32 MiB on 64-bit Linux) with fresh pages from the kernel and unmaps them on
``free``; the kernel zero-fills every page on first touch. A fake-quantizer writes a
new tensor the size of its input, so at detection resolutions (Swin-T stage 0 at
800x1216: 22 to 89 MiB per activation) each of its outputs pays those page faults, as
do the float layers' own large outputs: writing into a new tensor ran at a tenth of
the speed of writing into a reused one (``tools/allocation_cost.py``).

- :func:`release_freed_memory`: hand freed heap memory back to the kernel (after
  calibration, whose temporaries would otherwise stay resident).
- :func:`reuse_freed_memory`: keep freed blocks of any size in the heap, so the next
  allocation of that size reuses their pages. Faster evaluation, a higher resident
  peak; it changes the whole process and cannot be undone, so it is opt-in.
"""
from __future__ import annotations

import ctypes
import gc
import sys

import torch

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# 1 GiB: above every activation of a detector at 800x1216 (the largest, Swin-T's MLP
# hidden layer, is 89 MiB); blocks above it still get their own mapping
REUSE_MMAP_THRESHOLD = 1 << 30
# freed memory at the top of the heap stays mapped up to this size (the default trims
# above 128 KiB, which would unmap a large block freed last); mallopt takes a C int
MAX_THRESHOLD = 2 ** 31 - 1
REUSE_TRIM_THRESHOLD = MAX_THRESHOLD


def _glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc on Linux (``mallopt`` and
    ``malloc_trim`` are glibc extensions; musl lacks them)."""
    if not sys.platform.startswith('linux'):
        return None
    libc = ctypes.CDLL(None)
    if getattr(libc, 'malloc_trim', None) is None or getattr(libc, 'mallopt', None) is None:
        return None
    return libc


def release_freed_memory() -> bool:
    """Hand memory that calibration freed back to the operating system.

    Calibration allocates and frees hundreds of MiB of temporaries (statistics, the
    search's cached features). glibc keeps freed heap memory in its arenas, so
    without this a process evaluates a few hundred MiB above an uncalibrated one
    although no tensor is alive.

    Returns:
        Whether host memory was trimmed (Linux with glibc); CUDA's cache is emptied
        whenever CUDA is initialised.
    """
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def reuse_freed_memory(mmap_threshold: int = REUSE_MMAP_THRESHOLD,
                       trim_threshold: int = REUSE_TRIM_THRESHOLD) -> bool:
    """Keep freed host memory in the heap for reuse (glibc ``mallopt``), process-wide.

    Blocks up to ``mmap_threshold`` bytes then come from the heap, and freed ones are
    reused by later allocations instead of being unmapped and faulted in again. Measured
    on the benchmark's Swin-T Mask R-CNN at 800x1216 (README, "Performance"): float
    and quantized backbone+neck alike about a quarter faster, their ratio unchanged,
    and a tenth more peak resident memory for both. It also turns off glibc's run-time
    adjustment of the threshold, for the rest of the process.

    Args:
        mmap_threshold: largest block served from the heap, bytes.
        trim_threshold: free memory kept at the top of the heap, bytes.

    Returns:
        Whether the setting was applied (Linux with glibc).

    Raises:
        ValueError: a threshold outside 128 KiB (glibc's initial value) to 2^31 - 1.
    """
    for name, value in (('mmap_threshold', mmap_threshold), ('trim_threshold', trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or \
                not 128 * 1024 <= value <= MAX_THRESHOLD:
            raise ValueError(f'reuse_freed_memory: {name}={value!r}; allowed are integers '
                             f'from {128 * 1024} to {MAX_THRESHOLD} (bytes)')
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold))
                and libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold)))


__all__ = ['release_freed_memory', 'reuse_freed_memory']
