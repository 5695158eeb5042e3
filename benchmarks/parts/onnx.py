"""ONNX part: seconds per image of the exported backbone + neck in onnxruntime, the
W4/A4 IGQ graph against the fp32 graph of the same weights.

Both graphs are exported from the same detector (Mask R-CNN Swin-T with seeded
random weights, igq-fixed G=8 calibrated on one image as every part does) with
:func:`igq_plugin.mm.onnx_export.export_mm_features` /
``export_mm_float_features`` at ``--image-size`` (a fixed shape). Timed on onnxruntime's
CPU provider with 1 and 2 intra-op threads, the sessions in round-robin (one image
each turn, ``--images`` x ``--feature-repeats`` turns after one warm-up), median
seconds and the ratio to the fp32 graph at the same thread count:

- ``fp32``: the float graph;
- ``igq W4/A4``: the exported graph, run as exported (onnxruntime's
  ``DequantizeLinear`` + ``MatMul`` fusion kept at float activations,
  :data:`~igq_plugin.export.onnx_graph.ORT_SETTINGS`);
- ``igq W4/A4, ort int8 MatMulNBits``: the same file with onnxruntime's default
  settings, whose fused 4-bit kernel rounds the activations to int8 first: faster, but
  no longer the exported model (its feature error is reported).

Run alone (``benchmarks/benchmark.py`` takes the same options)::

    OMP_NUM_THREADS=1 python -m benchmarks.parts.onnx --image-size 224x320 --images 2
"""
from __future__ import annotations

import argparse
import os.path as osp
import statistics
import tempfile
import sys
import time

import torch

from .common import (FLOAT, IGQ_FIXED_8, log, make_batches, prepared_variant, release,
                     size_text, table)

TITLE = 'ONNX (onnxruntime CPU)'
THREADS = (1, 2)
GRAPHS = ('fp32', 'igq W4/A4', 'igq W4/A4, ort int8 MatMulNBits')


def _export(out: str, args: argparse.Namespace, device: torch.device):
    """Export the float and the quantized graphs; return their paths, the images and
    the PyTorch fake-quant features (the reference of the quantized graphs)."""
    from igq_plugin.mm import quantize_mm_model  # noqa: F401  (registers IGQBackbone)
    from igq_plugin.mm.onnx_export import export_mm_features, export_mm_float_features
    from .common import float_state
    weights = float_state(args.seed, args.score_thr)
    paths, seconds = {}, {}
    log('onnx, preparing float and igq-fixed G=8')
    float_model, _ = prepared_variant(FLOAT, weights, args.score_thr, args.seed, device,
                                      args.image_size)
    model, _ = prepared_variant(IGQ_FIXED_8, weights, args.score_thr, args.seed, device,
                                args.image_size)
    images = [b['inputs'] for b in make_batches(model, args.image_size, args.images,
                                                args.seed)]
    for name, exported, export in (('fp32', float_model, export_mm_float_features),
                                   ('igq W4/A4', model, export_mm_features)):
        log(f'onnx, exporting {name}')
        path = osp.join(out, f'{"float" if name == "fp32" else "igq"}_features.onnx')
        start = time.perf_counter()
        paths[name] = export(exported, images[0], path).path
        seconds[name] = time.perf_counter() - start
    with torch.no_grad():
        expected = [model.extract_feat(image) for image in images]
    float_model = model = weights = None  # free them before the sessions
    release(device)
    return paths, seconds, images, expected


def run(args: argparse.Namespace, device: torch.device) -> dict:
    """Median seconds per image of every graph at 1 and 2 threads, ratios to fp32. The
    graphs (~150 MiB at 800x1216) go to a temporary folder, deleted afterwards: the
    results folder keeps the figures only."""
    with tempfile.TemporaryDirectory(prefix='igq-onnx-') as out:
        return _timed_graphs(args, device, out)


def _timed_graphs(args: argparse.Namespace, device: torch.device, out: str) -> dict:
    """Median seconds per image of every graph at 1 and 2 threads, ratios to fp32."""
    from igq_plugin.export.onnx_graph import onnx_session, relative_error
    paths, export_seconds, images, expected = _export(out, args, device)
    path_of = {'fp32': paths['fp32'], GRAPHS[1]: paths['igq W4/A4'],
               GRAPHS[2]: paths['igq W4/A4']}
    rows = []
    for threads in THREADS:
        sessions = {name: onnx_session(path_of[name], threads,
                                       settings={} if name == GRAPHS[2] else None)
                    for name in GRAPHS}
        feeds = [{'input': image.numpy()} for image in images]
        errors = {name: 0.0 for name in GRAPHS}
        for name, session in sessions.items():  # warm-up, and the features' error
            for feed, reference in zip(feeds, expected):
                results = session.run(None, feed)
                if name != 'fp32':
                    errors[name] = max(errors[name], max(
                        relative_error(a, b) for a, b in zip(results, reference)))
        seconds = {name: [] for name in GRAPHS}
        log(f'onnx, {threads} thread(s): {len(feeds)} images x {args.feature_repeats} '
            f'round-robin turns')
        for _ in range(args.feature_repeats):
            for feed in feeds:
                for name, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feed)
                    seconds[name].append(time.perf_counter() - start)
        reference = statistics.median(seconds['fp32'])
        for name in GRAPHS:
            median = statistics.median(seconds[name])
            rows.append(dict(graph=name, threads=threads, seconds=seconds[name],
                             median_seconds=median, ratio_to_fp32=median / reference,
                             max_relative_error=errors[name] if name != 'fp32' else None,
                             export_seconds=export_seconds.get(
                                 'igq W4/A4' if name != 'fp32' else 'fp32')))
    return dict(image_size=list(args.image_size), images=len(images),
                repeats=args.feature_repeats, schedule='round-robin', threads=list(THREADS),
                graph_mib={name: round(osp.getsize(p) / 2 ** 20, 2)
                           for name, p in paths.items()}, rows=rows)


def markdown(part: dict) -> str:
    """The part's table: one row per (threads, graph)."""
    turns = f'{part["repeats"]} x {part["images"]}'
    sizes = ', '.join(f'{k} {v} MiB' for k, v in part['graph_mib'].items())
    return '\n'.join([
        f'## {TITLE}: backbone+neck, {size_text(part["image_size"])}, median of {turns} '
        f'round-robin turns after 1 warm-up', '', f'Graph files: {sizes}.', '',
        table(['threads', 'graph', 's/image (median)', 'x fp32',
               'features max|a-b|/max|b| vs PyTorch fake-quant', 'export s'],
              [(r['threads'], r['graph'], r['median_seconds'], r['ratio_to_fp32'],
                r['max_relative_error'], r['export_seconds']) for r in part['rows']])])


def main(argv=None) -> int:
    """Run this part alone with ``benchmarks/benchmark.py``'s options."""
    from benchmarks import benchmark
    args = benchmark.build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    meta = dict(command=benchmark.command_line(sys.argv[1:] if argv is None else argv),
                settings=benchmark.settings_of(args),
                machine=__import__('benchmarks.parts.common',
                                   fromlist=['machine_info']).machine_info(device))
    before = benchmark.load_average()
    result = run(args, device)
    meta['date'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    meta['load_average'] = dict(before=before, after=benchmark.load_average())
    print(benchmark.write_part('onnx', result, meta, args.out), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
