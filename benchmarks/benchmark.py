#!/usr/bin/env python
"""Speed, calibration cost and memory of IGQ-ViT on mmdet's Mask R-CNN Swin-T, W4/A4.

Randomly initialised weights (nothing is downloaded) and seeded synthetic images that
look like natural images. Parts (``--parts``, default all), one module each in
``benchmarks/parts/`` (their docstrings say exactly what is measured):

- ``inference``: seconds per image of float vs per-tensor, static-group (G=8),
  igq-fixed (G=8, G=16) and upper-bound, whole detector and backbone+neck alone, in
  round-robin; ratios to float;
- ``quantizers``: elements/second of the activation quantizers alone on Swin-T's
  shapes, against memory bandwidth (read, copy, the two-pass roofline);
- ``calibration``: seconds of calibration + group-size allocation (``method='igq'``,
  G_avg 8, 1 image at ``--calib-image-size``) by phase, per sensitivity search;
- ``memory``: peak resident memory (and CUDA peak allocation) of float vs igq-fixed
  (G=8) evaluation, one fresh child process per run;
- ``integer``: backbone+neck seconds of float vs fake-quant vs the integer executor
  (``igq_plugin.integer``), and single layers' seconds and float64-reference errors;
- ``onnx``: backbone+neck seconds in onnxruntime of the exported igq W4/A4 graph
  against the fp32 graph of the same model (``igq_plugin.export.export_onnx``).

Writes ``<out>/<part>.json`` and ``<out>/<part>.md`` for every part that ran (``--out``,
default ``work_dirs/benchmark/``) and prints the markdown; each file records the
command, the date and the machine. glibc's malloc tunables (e.g.
``MALLOC_MMAP_THRESHOLD_``) are environment settings: set them for the whole command
(see ``benchmarks/parts/memory.py``). Small CPU run::

    python benchmarks/benchmark.py --parts quantizers,inference --image-size 224x320 \\
        --images 1 --threads 1
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import os.path as osp
import shlex
import sys
from typing import Callable, Sequence

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:  # run as a script: make the benchmarks package importable
    sys.path.insert(0, REPO)

from benchmarks.parts import common  # noqa: E402
from benchmarks.parts.calibration import SEARCHES  # noqa: E402
from benchmarks.parts.memory import MALLOC_VARIABLES  # noqa: E402

PARTS = ('inference', 'quantizers', 'calibration', 'memory', 'integer', 'onnx')


# -- arguments ---------------------------------------------------------------------------

def image_size(text: str) -> tuple[int, int]:
    """Parse ``HxW`` (e.g. ``800x1216``) into ``(H, W)``, each at least 32 pixels."""
    try:
        height, width = (int(p) for p in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'image size {text!r}: expected HxW with integers, e.g. 800x1216') from None
    if min(height, width) < common.PAD_DIVISOR:
        raise argparse.ArgumentTypeError(
            f'image size {text!r}: height and width must be at least {common.PAD_DIVISOR} '
            f'pixels (Swin-T downsamples by 32)')
    return height, width


def part_list(text: str) -> tuple[str, ...]:
    """Parse a comma-separated subset of :data:`PARTS`."""
    parts = tuple(p.strip() for p in text.split(',') if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f'--parts {text!r}: unknown {unknown}; allowed are '
                                         f'{",".join(PARTS)}')
    return parts


def positive(kind: type) -> Callable[[str], int | float]:
    """Argparse type: a positive ``int`` or ``float``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not a {kind.__name__}') from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f'{text!r}: must be positive')
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='benchmark.py', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add('--parts', type=part_list, default=PARTS,
        help=f'comma-separated subset of {",".join(PARTS)} (default: all)')
    add('--device', choices=('cpu', 'cuda'), default='cpu',
        help='device of the models and inputs (default: cpu)')
    add('--threads', type=positive(int), default=None,
        help="torch.set_num_threads (default: torch's choice)")
    add('--seed', type=int, default=0, help='seed of the weights and images (default: 0)')
    add('--image-size', type=image_size, default=(800, 1216), metavar='HxW',
        help='evaluated image size: inference, quantizer shapes, memory (default: 800x1216)')
    add('--images', type=positive(int), default=3,
        help='timed images per variant after 1 warm-up (inference, memory), float predicts '
             'of the calibration part (default: 3)')
    add('--feature-repeats', type=positive(int), default=3,
        help='inference: backbone+neck timings per image and variant (default: 3)')
    add('--score-thr', type=float, default=0.0,
        help='RoI head score threshold (default 0: every image yields max_per_img=100 '
             'detections, whatever the random weights)')
    add('--min-time', type=positive(float), default=0.5,
        help='quantizers: seconds per throughput measurement (default: 0.5)')
    add('--calib-image-size', type=image_size, default=(256, 384), metavar='HxW',
        help='calibration: image size (default: 256x384; the exact search takes minutes '
             'there, over an hour at 800x1216 on one CPU thread)')
    add('--search', nargs='+', choices=tuple(SEARCHES), default=['exact', 'fisher'],
        help='calibration: sensitivity searches to time, the first the reference of '
             '"layers with another G" (default: exact fisher)')
    add('--search-rois', type=positive(int), nargs='*', default=[], metavar='K',
        help='calibration: also time the exact search on only the K best-scored float '
             'proposals per image (IGQCalibrationHook(search_rois=K))')
    add('--memory-repeats', type=positive(int), default=3,
        help='memory: fresh processes per variant; ratios of the medians (default: 3)')
    add('--out', default='work_dirs/benchmark',
        help='directory of <part>.json and <part>.md (default: work_dirs/benchmark)')
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments (exits with status 2 and a message on errors)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device cuda requested but CUDA is not available here '
                     f'(torch {torch.__version__}, built for CUDA {torch.version.cuda}, '
                     f'{torch.cuda.device_count()} visible devices); use --device cpu')
    return args


# -- output ------------------------------------------------------------------------------

def command_line(argv: Sequence[str]) -> str:
    """This run's command as typed in a shell: the thread and malloc variables, the CPU
    pinning (``taskset``) when not every CPU is allowed, the interpreter, the arguments."""
    words = [f'{k}={os.environ[k]}' for k in ('OMP_NUM_THREADS', *MALLOC_VARIABLES)
             if k in os.environ]
    if hasattr(os, 'sched_getaffinity'):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < (os.cpu_count() or 0):
            words += ['taskset', '-c', ','.join(map(str, cpus))]

    def shown(path: str) -> str:
        relative = osp.relpath(path)
        return path if relative.startswith('..') else relative
    return shlex.join([*words, shown(sys.executable), shown(osp.abspath(__file__)), *argv])


def load_average() -> float | None:
    """The machine's 1-minute load average (``None`` where the OS has none)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, 'getloadavg') else None


def settings_of(args: argparse.Namespace) -> dict:
    """The arguments, JSON-ready, with the fixed settings."""
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items()}
    return dict(settings, config=common.CONFIG, bits=common.BITS)


def write_part(name: str, result: dict, meta: dict, out: str) -> str:
    """Write ``<out>/<name>.json`` and ``<out>/<name>.md``; return the markdown."""
    module = importlib.import_module(f'benchmarks.parts.{name}')
    text = '\n'.join([
        f'# IGQ benchmark, {name}: Mask R-CNN Swin-T, W{common.BITS}/A{common.BITS}', '',
        f'- command: `{meta["command"]}`', f'- date: {meta["date"]}',
        f'- machine: {common.machine_line(meta["machine"])}; torch {meta["machine"]["torch"]}, '
        f'Python {meta["machine"]["python"]}', f'- load average (1 min) before / after: '
        f'{meta["load_average"]["before"]} / {meta["load_average"]["after"]} on '
        f'{meta["machine"]["cpu_count"]} CPUs (other jobs on the machine)',
        f'- seed {meta["settings"]["seed"]}; random weights, synthetic images', '',
        module.markdown(result), ''])
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, f'{name}.json'), 'w') as f:
        json.dump(dict(meta, part=name, result=result), f, indent=2)
    with open(osp.join(out, f'{name}.md'), 'w') as f:
        f.write(text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = dict(command=command_line(argv), settings=settings_of(args),
                machine=common.machine_info(device))
    for name in args.parts:
        before = load_average()
        result = importlib.import_module(f'benchmarks.parts.{name}').run(args, device)
        meta['date'] = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
        meta['load_average'] = dict(before=before, after=load_average())
        print(write_part(name, result, meta, args.out), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
