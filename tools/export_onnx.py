#!/usr/bin/env python
"""Export a demo model's calibrated backbone + neck to ONNX and check it in onnxruntime.

Builds the model from an IGQ config and its float checkpoint, calibrates it on the first
``--calib-images`` training images, exports ``extract_feat`` (fixed input size: one
preprocessed ``--images`` validation image, [1, 3, H, W]) with every quantizer's input,
codes and groups exposed, and on every ``--images`` validation image compares
onnxruntime (1 thread) with the PyTorch fake-quant model:

- codes and group assignments, per quantizer, on onnxruntime's own quantizer inputs
  (must be identical);
- the feature maps: ``max|a - b| / max|b|`` per level; beside it the same measure
  between PyTorch runs on the image and on the image moved by one float32 ulp (how much
  the 4-bit model itself amplifies rounding noise: a value at a rounding boundary
  takes the neighbouring code), and between the fake-quant and the float model;
- ``runtime_code_flips``: codes that differ between the two runtimes, each on its own
  inputs (the source of the feature differences).

Prints one JSON record (and writes it to ``<out>/onnx_check.json``)::

    python tools/export_onnx.py --method igq-fixed --groups 8
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys
import time
from collections import Counter

import onnx
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = 'configs/demo/igq-w4a4_mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py'
DEFAULT_CHECKPOINT = 'demo_models/mask-rcnn_swin-demo.pth'
# igq_plugin.export.ONNX_EXPORTABLE_METHODS (the arguments are parsed before the repository
# is on sys.path)
METHODS = ('igq', 'igq-reparam', 'igq-fixed', 'per-tensor', 'static-group')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--checkpoint', default=DEFAULT_CHECKPOINT)
    parser.add_argument('--method', choices=METHODS, default='igq-fixed',
                        help='activation quantizer (default igq-fixed: igq without the '
                             'allocation search, the same run-time rule)')
    parser.add_argument('--groups', type=int, default=8)
    parser.add_argument('--bits', type=int, default=4, help='weight and activation bits')
    parser.add_argument('--calib-images', type=int, default=1)
    parser.add_argument('--images', type=int, default=4, help='validation images compared')
    parser.add_argument('--torchscript', action='store_true',
                        help="torch.onnx's TorchScript exporter instead of the dynamo one")
    parser.add_argument('--out', default='work_dirs/onnx')
    args = parser.parse_args(argv)
    for name in ('groups', 'calib_images', 'images'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be at least 1')
    return args


def _code_flips(model, export, outputs, seen) -> int:
    """Codes that onnxruntime's run and PyTorch's own run give differently: each
    runtime on its own quantizer inputs (which differ in their last bits)."""
    from igq_plugin.export.onnx_checks import pytorch_codes
    from igq_plugin.nn import activation_quantizers
    quantizers = activation_quantizers(model)
    flips = 0
    for output, (name, kind) in export.recorded.items():
        if kind == 'codes':
            own = pytorch_codes(quantizers[name], seen[name]).numpy()
            flips += int((own != outputs[output]).sum())
    return flips


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, REPO)
    from igq_demo.evaluation import load_config, prepared_runner
    from igq_plugin.export.onnx_checks import compare_codes
    from igq_plugin.export.onnx_graph import onnx_session, relative_error, run_onnx
    from igq_plugin.mm import calibrate_mm_model, take_calibration_batches
    from igq_plugin import float_run
    from igq_plugin.mm.onnx_export import export_mm_features
    from igq_plugin.nn import activation_quantizers

    quant = dict(method=args.method, groups=args.groups, w_bits=args.bits, a_bits=args.bits)
    cfg = load_config(args.config, {f'model.backbone.quant.{k}': v for k, v in quant.items()})
    work_dir = osp.join(args.out, 'runner')
    runner = prepared_runner(cfg, args.checkpoint, work_dir)
    model = runner.model
    calibration = take_calibration_batches(runner.train_dataloader, args.calib_images, model)
    start = time.perf_counter()
    calibrate_mm_model(model, calibration, progress=None)
    calib_seconds = time.perf_counter() - start
    images = [b['inputs'] for b in take_calibration_batches(runner.test_dataloader,
                                                            args.images, model)]
    path = osp.join(args.out, f'features_{args.method}_w{args.bits}a{args.bits}_codes.onnx')
    start = time.perf_counter()
    export = export_mm_features(model, images[0], path, expose_codes=True,
                                dynamo=not args.torchscript)
    export_seconds = time.perf_counter() - start
    session = onnx_session(path, threads=1)
    seen = {}
    hooks = [q.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, i[0]))
             for n, q in activation_quantizers(model).items()]
    per_image = []
    for image in images:
        outputs = run_onnx(export, (image,), session=session)
        comparisons = compare_codes(model, export, outputs)
        with torch.no_grad():
            expected = model.extract_feat(image)
            flips = _code_flips(model, export, outputs, seen)
            # the model's own sensitivity to float rounding: the input moved by one ulp
            nudged = model.extract_feat(torch.nextafter(image, torch.full_like(image, 1e9)))
            with float_run(model):
                floating = model.extract_feat(image)
        per_image.append(dict(
            relative_errors=[relative_error(outputs[name], value)
                             for name, value in zip(export.model_outputs, expected)],
            one_ulp_input_relative_errors=[relative_error(a, b)
                                           for a, b in zip(nudged, expected)],
            quantization_relative_errors=[relative_error(a, b)
                                          for a, b in zip(expected, floating)],
            runtime_code_flips=flips,
            codes=sum(c.elements for c in comparisons),
            code_mismatches=sum(c.code_mismatches for c in comparisons),
            items=sum(c.items for c in comparisons),
            group_mismatches=sum(c.group_mismatches for c in comparisons)))
    for hook in hooks:
        hook.remove()
    graph = onnx.load(path)
    record = dict(
        config=args.config, checkpoint=args.checkpoint, quant=quant,
        input_shape=list(images[0].shape), exporter=export.exporter,
        calib_images=args.calib_images, calib_seconds=round(calib_seconds, 1),
        export_seconds=round(export_seconds, 1), quantizers=len(export.quantizers),
        dequantized_weights=len(export.weights),
        graph_mib=round(osp.getsize(path) / 2 ** 20, 2),
        ops=dict(Counter(n.op_type for n in graph.graph.node).most_common()),
        max_relative_error=max(max(r['relative_errors']) for r in per_image),
        max_one_ulp_input_relative_error=max(max(r['one_ulp_input_relative_errors'])
                                             for r in per_image),
        max_quantization_relative_error=max(max(r['quantization_relative_errors'])
                                            for r in per_image),
        runtime_code_flips=sum(r['runtime_code_flips'] for r in per_image),
        code_mismatches=sum(r['code_mismatches'] for r in per_image),
        group_mismatches=sum(r['group_mismatches'] for r in per_image),
        per_image=per_image)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'onnx_check.json'), 'w') as f:
        json.dump(record, f, indent=2)
    print(json.dumps({k: v for k, v in record.items() if k != 'per_image'}, indent=2))
    print(json.dumps(per_image))
    return 0 if record['code_mismatches'] == record['group_mismatches'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
