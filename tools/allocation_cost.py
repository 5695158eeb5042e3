#!/usr/bin/env python
"""What a fresh output tensor costs: ``x * 0.5`` into a new tensor vs into a reused one.

On Linux, glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh
pages that the kernel zero-fills on first touch, every call. This bounds every
out-of-place element-wise kernel on large activations, fake-quantizers included
(README, "Performance"). Shapes: the benchmark's three Swin-T stage-0 activations at
800x1216. glibc's malloc tunables are environment settings: with
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647`` such blocks
come from the heap and are reused (compare a run with and one without them).

    OMP_NUM_THREADS=1 taskset -c 0 python tools/allocation_cost.py
"""
import argparse
import time

import torch

SHAPES = ((1, 60800, 384), (3828, 49, 49), (1, 60800, 96))


def seconds_per_call(fn, min_time: float) -> float:
    """Best of 5 rounds of repeated calls, each at least ``min_time`` / 5 seconds."""
    for _ in range(3):
        fn()
    best = float('inf')
    for _ in range(5):
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < min_time / 5:
            fn()
            calls += 1
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--min-time', type=float, default=1.5, help='seconds per measurement')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print('| shape | MiB | into a new tensor, Melem/s | into a reused tensor, Melem/s |')
    print('|---|---|---|---|')
    for shape in SHAPES:
        x = torch.randn(shape)
        out = torch.empty_like(x)
        fresh = seconds_per_call(lambda: torch.mul(x, 0.5), args.min_time)
        reused = seconds_per_call(lambda: torch.mul(x, 0.5, out=out), args.min_time)
        print(f'| {shape} | {x.numel() * 4 / 2 ** 20:.0f} | {x.numel() / fresh / 1e6:.0f} | '
              f'{x.numel() / reused / 1e6:.0f} |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
