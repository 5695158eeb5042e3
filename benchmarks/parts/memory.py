"""Memory part: peak memory of float vs igq-fixed (G=8) evaluation, per process.

Every run is a fresh child process (``python -m benchmarks.parts.memory SPEC OUT``)
that builds and calibrates its variant, then evaluates one warm-up image and
``--images`` timed images. Its peaks come from Linux's ``VmHWM`` in
``/proc/self/status``, reset (``/proc/self/clear_refs``) before the evaluation and once
more after the warm-up, so they cover the evaluation and nothing before it; on CUDA,
``torch.cuda.max_memory_allocated`` as well. The peak RSS of one process moves by a
few hundred MiB from run to run (glibc's heap and mmap decisions), so each variant
runs ``--memory-repeats`` times, interleaved, and the ratios are those of the medians.

The children inherit the environment, glibc's malloc tunables included: e.g.
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647`` keeps freed
activations in the heap for reuse (faster large element-wise kernels, a higher peak);
the values in effect are recorded in the part's ``environment``.
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile

import torch

from .common import (FLOAT, IGQ_FIXED_8, MIB, float_state, log, make_batches, median_or_none,
                     predict, prepared_variant, release, size_text, synchronize, table)

TITLE = 'Memory'
VARIANTS = (FLOAT, IGQ_FIXED_8)
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MALLOC_VARIABLES = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_ARENA_MAX',
                    'GLIBC_TUNABLES')
MEDIAN_KEYS = ('eval_peak_rss_mib', 'steady_peak_rss_mib', 'eval_rss_increase_mib',
               'cuda_max_allocated_mib')


def proc_status_mib(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (Linux), else ``None``."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1]) * 1024 / MIB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs`` 5)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def child(spec: dict) -> dict:
    """One variant's memory figures (in a fresh process): set-up, then evaluation."""
    if spec['threads'] is not None:
        torch.set_num_threads(spec['threads'])
    device = torch.device(spec['device'])
    variant = next(v for v in VARIANTS if v.name == spec['variant'])
    size = tuple(spec['image_size'])
    weights = float_state(spec['seed'], spec['score_thr'])
    model, _ = prepared_variant(variant, weights, spec['score_thr'], spec['seed'], device, size)
    batches = make_batches(model, size, spec['images'], spec['seed'])
    del weights
    release(device)
    # VmHWM, not ru_maxrss: Linux carries the parent's resident size at the fork over
    # exec into ru_maxrss
    setup_peak, before = proc_status_mib('VmHWM'), proc_status_mib('VmRSS')
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    reset = reset_peak_rss()
    predict(model, batches[0])  # warm-up
    synchronize(device)
    warmup_peak = proc_status_mib('VmHWM') if reset else None
    steady_reset = reset and reset_peak_rss()  # the timed images after the warm-up
    for batch in batches:
        predict(model, batch)
    synchronize(device)
    steady_peak = proc_status_mib('VmHWM') if steady_reset else None
    peak = None if warmup_peak is None or steady_peak is None else max(warmup_peak, steady_peak)
    return dict(variant=variant.name, quant=variant.quant, setup_peak_rss_mib=setup_peak,
                rss_before_eval_mib=before, eval_peak_rss_mib=peak, peak_reset=reset,
                warmup_peak_rss_mib=warmup_peak, steady_peak_rss_mib=steady_peak,
                eval_rss_increase_mib=None if None in (peak, before) else peak - before,
                cuda_max_allocated_mib=(torch.cuda.max_memory_allocated(device) / MIB
                                        if device.type == 'cuda' else None))


def child_spec(args: argparse.Namespace, variant_name: str) -> dict:
    """What one child process runs (JSON-ready)."""
    return dict(variant=variant_name, device=args.device, seed=args.seed,
                image_size=list(args.image_size), images=args.images,
                score_thr=args.score_thr, threads=args.threads)


def child_command(spec: dict, out: str) -> list[str]:
    """The command line of one child process (run from the repository root)."""
    return [sys.executable, '-m', 'benchmarks.parts.memory', json.dumps(spec), out]


def run(args: argparse.Namespace, device: torch.device) -> dict:
    """Every variant ``--memory-repeats`` times, interleaved; medians and their ratios."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = osp.join(tmp, 'child.json')
        for repeat in range(args.memory_repeats):
            for variant in VARIANTS:
                log(f'memory, {variant.name} (child process, run {repeat + 1} of '
                    f'{args.memory_repeats})')
                command = child_command(child_spec(args, variant.name), out)
                result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f'memory child for {variant.name} failed (exit '
                                       f'{result.returncode}):\n{result.stderr[-3000:]}')
                with open(out) as f:
                    rows.append(json.load(f))
    return dict(image_size=list(args.image_size), images=args.images, warmup=1,
                repeats=args.memory_repeats,
                environment={k: os.environ[k] for k in MALLOC_VARIABLES if k in os.environ},
                rows=rows, **summary(rows))


def summary(rows: list[dict]) -> dict:
    """Per variant the median of each figure over its processes, and the ratios of the
    quantized variant's medians to float's (where both exist)."""
    medians = {v.name: {key: median_or_none([r[key] for r in rows if r['variant'] == v.name])
                        for key in MEDIAN_KEYS} for v in VARIANTS}
    float_median, quant_median = (medians[v.name] for v in VARIANTS)
    ratios = {key: quant_median[key] / float_median[key] for key in MEDIAN_KEYS
              if float_median[key] and quant_median[key] is not None}
    return dict(medians=medians, ratio_quantized_to_float=ratios)


def markdown(part: dict) -> str:
    """The part's table: one row per child process, then the medians."""
    environment = ', '.join(f'{k}={v}' for k, v in part['environment'].items()) or \
        'glibc malloc defaults'
    rows = [(r['variant'], r['setup_peak_rss_mib'], r['rss_before_eval_mib'],
             r['eval_peak_rss_mib'], r['steady_peak_rss_mib'], r['eval_rss_increase_mib'],
             r['cuda_max_allocated_mib']) for r in part['rows']]
    rows += [(f'median {name}', None, None, m['eval_peak_rss_mib'], m['steady_peak_rss_mib'],
              m['eval_rss_increase_mib'], m['cuda_max_allocated_mib'])
             for name, m in part['medians'].items()]
    return '\n'.join([
        f'## {TITLE} ({size_text(part["image_size"])}, 1 warm-up + {part["images"]} images '
        f'per fresh process, processes per variant: {part["repeats"]}; {environment})', '',
        table(['variant', 'set-up peak RSS MiB', 'RSS before eval MiB', 'eval peak RSS MiB',
               'after warm-up peak RSS MiB', 'eval RSS increase MiB',
               'CUDA max allocated MiB'], rows), '',
        'Ratio of the medians, quantized / float: ' + ', '.join(
            f'{k} {v:.3g}' for k, v in part['ratio_quantized_to_float'].items()) + '.'])


def main(argv: list[str] | None = None) -> int:
    """The child process: ``SPEC`` (JSON, :func:`child_spec`) -> ``OUT`` (JSON)."""
    spec, out = argv if argv is not None else sys.argv[1:]
    with open(out, 'w') as f:
        json.dump(child(json.loads(spec)), f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
