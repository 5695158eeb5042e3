#!/usr/bin/env python
"""The deployed executors against the fake-quant model, on the demo models.

For each demo model: convert it as the quantized config says, load the float weights and
calibrate as ``IGQCalibrationHook`` does by default (train images, the paper's pixel
count, draw 0). Then:

1. **Per layer, on the same inputs** (the first ``--layer-images`` val images): every quantized
   Linear / Conv2d of the fake-quant model records its input; the integer layer built
   from it (:class:`~igq_plugin.integer.IntegerLinear` / ``IntegerConv2d``) runs on that
   input. Its codes must dequantize to the fake-quant input bit for bit (same codes, same
   groups) and its output must be within ``--layer-tolerance`` (max |a - b| / max |b|)
   of the fake-quant layer's. Exit status 1 otherwise.
2. **Whole model** on the val split: the fake-quant model (float32), the same model with
   its quantized parts (backbone, neck) evaluated in float64, which changes nothing but
   rounding, the ONNX graph of the backbone + neck in onnxruntime (``--onnx``; exported
   at the val images' fixed size, the heads in PyTorch) and the integer executor
   (:func:`igq_plugin.integer.to_integer_model`). The float64 twin shows how far
   rounding alone moves the metrics of this model.
3. **Group choices near a tie**, per kind of layer input: the share of items (channels
   of one image) whose group under the ``cover`` rule changes when an end of its range
   moves by 2^-20 of itself, as another runtime's rounding upstream can move it.

    python tools/executor_check.py --model mask-rcnn upernet-vit --onnx
    python tools/executor_check.py --variant pretrained-like --method igq-reparam --onnx
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import os.path as osp
import re
import sys
import time

import torch
import torch.nn.functional as F

from igq_demo.demo import VARIANTS, DemoSettings, variant_checkpoint
from igq_demo.evaluation import load_config, prepared_runner
from igq_demo.tasks import TASKS
from igq_plugin.integer import (IntegerConv2d, IntegerLinear, activation_codes,
                                dequantize_codes, to_integer_model)
from igq_plugin.export import EXPORTABLE_METHODS
from igq_plugin.grouping import assign_covering
from igq_plugin.nn import QuantConv2d, QuantLinear
from igq_plugin.quantizers import IGQQuantizer
from igq_plugin.nn.layers import fill_fold_padding
from igq_plugin.mm import calibrate_mm_model, take_calibration_batches
from igq_plugin.mm.calibration_data import (build_calibration_source, draw_calibration_batches,
                                            train_images_dataloader)

# the default backbone-neck protocol: the quantized configs as they are
MODELS = {name: (task, model) for task in TASKS.values() for name, model in task.models.items()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', nargs='+', choices=sorted(MODELS), default=['mask-rcnn'])
    parser.add_argument('--data', default=None, help='data root (default: the task\'s)')
    parser.add_argument('--layer-images', type=int, default=2,
                        help='val images of the per-layer check')
    parser.add_argument('--layer-tolerance', type=float, default=1e-5,
                        help='largest max|integer - fake-quant| / max|fake-quant| per layer')
    parser.add_argument('--onnx', action='store_true',
                        help='also evaluate the backbone + neck exported to ONNX')
    parser.add_argument('--method', default='igq', choices=EXPORTABLE_METHODS,
                        help='the quantized method (default: the configs\' igq)')
    parser.add_argument('--variant', default='plain', choices=VARIANTS,
                        help='the demo model, or its pretrained-like stress variant')
    parser.add_argument('--out', default='work_dirs/executor_check')
    return parser.parse_args(argv)


def evaluate(runner) -> tuple[dict, float]:
    start = time.perf_counter()
    metrics = runner.test()
    return {k: float(v) for k, v in metrics.items()}, time.perf_counter() - start


def layer_inputs(model, batches) -> dict[str, list]:
    """``{layer: [(input, num_instances)]}`` of every quantized Linear / Conv2d."""
    captured, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, (QuantLinear, QuantConv2d)):
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: captured.setdefault(name, []).append(
                    (args[0].detach().clone(), mod.input_quantizer.num_instances))))
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch, mode='predict')
    finally:
        for hook in hooks:
            hook.remove()
    return captured


# A relative move of an item's range that two runtimes' roundings of the same GELU or
# LayerNorm can exceed (about 8 float32 steps).
NEAR_TIE = 2.0 ** -20
_LAYER_KINDS = (('MLP fc2 (after GELU)', r'(ffn\.layers\.1|mlp\.fc2)$'),
                ('post-LayerNorm', r'(qkv|ffn\.layers\.0\.0|mlp\.fc1|reduction)$'),
                ('other', r''))


def near_ties(model, inputs: dict[str, list]) -> dict[str, list[int]]:
    """``{layer kind: [items, items near a tie]}`` over the IGQ inputs (G > 1, ``cover``
    rule) of every quantized Linear / Conv2d: an item is near a tie when moving either
    end of its range by :data:`NEAR_TIE` (relative) changes its group, i.e. when another
    runtime's rounding upstream can give it another group. ``inputs``: from
    :func:`layer_inputs`."""
    counts: dict[str, list[int]] = {}
    for name, calls in inputs.items():
        layer = model.get_submodule(name)
        quantizer = layer.input_quantizer
        if not isinstance(quantizer, IGQQuantizer) or int(quantizer.groups) == 1 or \
                quantizer.assignment != 'cover':
            continue
        kind = next(k for k, pattern in _LAYER_KINDS if re.search(pattern, name))
        group_lower, group_upper = quantizer.active_ranges()
        total = counts.setdefault(kind, [0, 0])
        for x, instances in calls:
            quantizer.num_instances = instances
            lower, upper = quantizer.item_ranges(
                fill_fold_padding(x, getattr(layer, 'fold_padding', None)))
            choice = assign_covering(lower, upper, group_lower, group_upper)
            moved = torch.zeros_like(choice, dtype=torch.bool)
            for step_lower, step_upper in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                moved |= assign_covering(lower + step_lower * NEAR_TIE * lower.abs(),
                                         upper + step_upper * NEAR_TIE * upper.abs(),
                                         group_lower, group_upper) != choice
            total[0] += choice.numel()
            total[1] += int(moved.sum())
    return counts


def per_layer_check(model, inputs: dict[str, list]) -> dict[str, dict]:
    """Codes and outputs of every integer layer against its fake-quant layer, on the
    inputs :func:`layer_inputs` captured."""
    rows = {}
    for name, calls in inputs.items():
        layer = model.get_submodule(name)
        integer = (IntegerLinear if isinstance(layer, QuantLinear) else IntegerConv2d
                   ).from_quantized(layer)
        integer.output_quantizer = None  # Q/K/V: compare the layer's own output
        quantizer, worst, same_codes = layer.input_quantizer, 0.0, True
        with torch.no_grad():
            for x, instances in calls:
                quantizer.num_instances = instances
                x = fill_fold_padding(x, getattr(layer, 'fold_padding', None))  # igq-reparam
                x_hat = quantizer(x)
                same_codes &= torch.equal(dequantize_codes(activation_codes(quantizer, x),
                                                           instances), x_hat)
                if isinstance(layer, QuantLinear):
                    expected = F.linear(x_hat, layer.weight_quantizer(layer.weight), layer.bias)
                else:
                    expected = layer._conv_forward(x_hat, layer.weight_quantizer(layer.weight),
                                                   layer.bias)
                error = (integer(x) - expected).abs().max() / expected.abs().max()
                worst = max(worst, float(error))
        rows[name] = dict(max_relative_error=worst, same_codes=bool(same_codes),
                          backend=integer.backend)
    return rows


@contextlib.contextmanager
def quantized_parts_in_float64(model):
    """Backbone and neck in float64, their input and output cast (rounding changes only)."""
    parts = [m for m in (model.backbone, getattr(model, 'neck', None)) if m is not None]
    extract = model.extract_feat
    for part in parts:
        part.double()
    model.extract_feat = lambda x: tuple(f.float() for f in extract(x.double()))
    try:
        yield model
    finally:
        del model.extract_feat
        for part in parts:
            part.float()


@contextlib.contextmanager
def features_from_onnx(model, path: str, images: torch.Tensor):
    """``model.extract_feat`` replaced by the backbone + neck exported to ``path`` and run
    in onnxruntime (one thread); the graph's input shape is that of ``images``."""
    from igq_plugin.export import onnx_session, run_onnx
    from igq_plugin.mm.onnx_export import export_mm_features
    export = export_mm_features(model, images, path)
    session = onnx_session(export.path, threads=1)

    def extract_feat(inputs):  # one image at a time: the graph's batch is one image
        levels = []
        for image in inputs.split(1):
            if tuple(image.shape) != tuple(images.shape):
                raise ValueError(f'the ONNX graph was exported for inputs '
                                 f'{tuple(images.shape)}; got {tuple(image.shape)}')
            outputs = run_onnx(export, (image,), session=session)
            levels.append([torch.from_numpy(outputs[name]) for name in export.output_names])
        return tuple(torch.cat(level) for level in zip(*levels))

    model.extract_feat = extract_feat
    try:
        yield model
    finally:
        del model.extract_feat


def extracted(model, batches) -> list[torch.Tensor]:
    """The feature maps (every level, every image) of ``model.extract_feat``."""
    with torch.no_grad():
        return [level.double() for batch in batches
                for level in model.extract_feat(batch['inputs'])]


def check_model(name: str, data: str | None, out: str, layer_images: int,
                with_onnx: bool, method: str = 'igq', variant: str = 'plain') -> dict:
    task, model = MODELS[name]
    root = (data or task.default_data).rstrip('/') + '/'
    options = dict(task.data_options(root), log_level='WARNING',
                   **{'test_dataloader.num_workers': 0,
                      'test_dataloader.persistent_workers': False,
                      'model.backbone.quant.method': method})
    cfg = load_config(model.quant_config, options)
    checkpoint = variant_checkpoint(DemoSettings(task=task.name, model=name, variant=variant))
    runner = prepared_runner(cfg, checkpoint, osp.join(out, name))
    train_images = build_calibration_source(train_images_dataloader(cfg.train_dataloader,
                                                                    cfg.test_dataloader))
    calibrate_mm_model(runner.model, draw_calibration_batches(train_images, None, runner.model),
                       progress=None)
    batches = take_calibration_batches(runner.test_dataloader, layer_images, runner.model)
    inputs = layer_inputs(runner.model, batches)
    layers = per_layer_check(runner.model, inputs)
    ties = near_ties(runner.model, inputs)
    del inputs
    features = {'fake-quant': extracted(runner.model, batches)}
    fake, fake_seconds = evaluate(runner)
    with quantized_parts_in_float64(runner.model):
        features['float64 twin'] = extracted(runner.model, batches)
        fake64, _ = evaluate(runner)
    onnx_metrics = {}
    if with_onnx:
        with features_from_onnx(runner.model, osp.join(out, name, 'features.onnx'),
                                batches[0]['inputs']):
            features['ONNX'] = extracted(runner.model, batches)
            onnx_metrics, _ = evaluate(runner)
    record = to_integer_model(runner.model)
    features['integer'] = extracted(runner.model, batches)
    integer, integer_seconds = evaluate(runner)
    reference = features.pop('fake-quant')
    differences = {label: max(float((a - b).norm() / b.norm()) for a, b in zip(levels, reference))
                   for label, levels in features.items()}
    scale = task.metric_range[1]
    rows = {}
    for label, key in task.metrics.items():
        rows[label] = dict(fake_quant=fake[key], fake_quant_float64=fake64[key],
                           integer=integer[key], onnx=onnx_metrics.get(key),
                           integer_diff_unit=abs(integer[key] - fake[key]) / scale,
                           float64_diff_unit=abs(fake64[key] - fake[key]) / scale)
    return dict(model=name, method=method, variant=variant, metrics=rows,
                layers=record.counts(), per_layer=layers, near_ties=ties,
                feature_differences=differences, fake_quant_seconds=fake_seconds,
                integer_seconds=integer_seconds)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    results, failed = [], False
    for name in args.model:
        result = check_model(name, args.data, args.out, args.layer_images, args.onnx,
                             args.method, args.variant)
        results.append(result)
        layers = result['per_layer']
        worst = max(row['max_relative_error'] for row in layers.values())
        codes = sum(row['same_codes'] for row in layers.values())
        failed |= worst > args.layer_tolerance or codes < len(layers)
        print(f'{name} per layer: {codes}/{len(layers)} layers with identical codes and '
              f'groups; largest output error {worst:.2e} (tolerance {args.layer_tolerance})',
              flush=True)
        print(f'{name} group choices near a tie ({NEAR_TIE:.1e} relative): ' + ', '.join(
            f'{kind} {100 * near / max(items, 1):.2f} % of {items}'
            for kind, (items, near) in result['near_ties'].items()), flush=True)
        for label, row in result['metrics'].items():
            onnx = '' if row['onnx'] is None else f', ONNX {row["onnx"]:.4f}'
            print(f'{name} {label}: fake-quant {row["fake_quant"]:.4f}, its float64 twin '
                  f'{row["fake_quant_float64"]:.4f}, integer {row["integer"]:.4f}{onnx}',
                  flush=True)
        print(f'{name} features, largest ||a - b|| / ||b|| against fake-quant over levels '
              f'and images: ' + ', '.join(f'{k} {v:.3g}' for k, v in
                                          result['feature_differences'].items()), flush=True)
        print(f'{name} layers {result["layers"]}; eval s fake-quant '
              f'{result["fake_quant_seconds"]:.1f}, integer {result["integer_seconds"]:.1f}',
              flush=True)
    with open(osp.join(args.out, 'results.json'), 'w') as f:
        json.dump(dict(command=' '.join(sys.argv), results=results), f, indent=2)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
