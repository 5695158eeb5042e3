"""Integer part: float vs fake-quant vs the integer executor, side by side, one run.

The model is the benchmark's Mask R-CNN Swin-T (random weights), W4/A4
``igq-fixed`` G=8, calibrated on one image at ``--calib-image-size``. The integer
variant is the same calibrated model deep-copied and converted by
:func:`igq_plugin.integer.to_integer_model`. Measured:

- backbone + neck (``extract_feat``) at ``--image-size``: median seconds of
  ``--feature-repeats`` x ``--images`` runs, round-robin over the three variants;
- per layer, on the inputs the fake-quant model's layers receive at that size (one
  qkv / fc1 / fc2 per stage and the largest FPN convolution): median seconds of the
  fake-quant layer and of the integer layer (3 runs each), and each one's largest
  error relative to the float64 reference (the same codes dequantized and multiplied
  in float64), ``max|y - ref| / max|ref|``.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from .common import (FLOAT, IGQ_FIXED_8, extract_features, float_state, log, make_batches,
                     prepared_variant, release, size_text, table, timed)

TITLE = 'Integer executor'
LAYERS = ('backbone.stages.{s}.blocks.0.attn.w_msa.qkv',
          'backbone.stages.{s}.blocks.0.ffn.layers.0.0',
          'backbone.stages.{s}.blocks.0.ffn.layers.1')
CONV = 'neck.fpn_convs.0.conv'


def layer_names() -> list[str]:
    return [name.format(s=stage) for stage in range(4) for name in LAYERS] + [CONV]


def run(args: argparse.Namespace, device: torch.device) -> dict:
    """Seconds of the three variants (backbone+neck) and of single layers."""
    from igq_plugin.integer import to_integer_model
    weights = float_state(args.seed, args.score_thr)
    float_model, _ = prepared_variant(FLOAT, weights, args.score_thr, args.seed, device,
                                      args.calib_image_size)
    log('integer, calibrating igq-fixed G=8')
    fake, _ = prepared_variant(IGQ_FIXED_8, weights, args.score_thr, args.seed, device,
                               args.calib_image_size)
    integer = copy.deepcopy(fake)
    record = to_integer_model(integer)
    batches = make_batches(fake, args.image_size, args.images, args.seed)
    models = {'float': float_model, 'fake-quant igq-fixed G=8': fake,
              'integer igq-fixed G=8': integer}
    for model in models.values():
        extract_features(model, batches[0])  # warm-up
    seconds = {name: [] for name in models}
    for index in range(args.images):
        for repeat in range(args.feature_repeats):
            log(f'integer, backbone+neck, image {index + 1}, repeat {repeat + 1}')
            for name, model in models.items():
                seconds[name].append(timed(lambda: extract_features(model, batches[index]),
                                           device)[0])
    rows = [dict(variant=name, seconds=values, median=statistics.median(values))
            for name, values in seconds.items()]
    for row in rows:
        row['ratio_to_float'] = row['median'] / rows[0]['median']
        row['ratio_to_fake_quant'] = row['median'] / rows[1]['median']
    layers = layer_rows(fake, integer, batches[0])
    del models, float_model, fake, integer
    release(device)
    return dict(image_size=list(args.image_size), images=args.images,
                feature_repeats=args.feature_repeats, backends=record.counts(), rows=rows,
                layers=layers)


def layer_rows(fake, integer, batch) -> list[dict]:
    """Per-layer seconds and float64-reference errors on the model's own inputs."""
    from igq_plugin.integer import activation_codes, dequantize_codes
    from igq_plugin.quant import quant_mode
    inputs, handles = {}, []
    for name in layer_names():
        def hook(module, args, name=name):
            inputs.setdefault(name, (args[0].detach().clone(),
                                     module.input_quantizer.num_instances))
        handles.append(fake.get_submodule(name).register_forward_pre_hook(hook))
    extract_features(fake, batch)
    for handle in handles:
        handle.remove()
    rows = []
    for name, (x, instances) in inputs.items():
        log(f'integer, layer {name}')
        quantized, executor = fake.get_submodule(name), integer.get_submodule(name)
        output_quantizer = executor._modules.pop('output_quantizer', None)
        quantized.input_quantizer.num_instances = instances
        executor.input_quantizer.num_instances = instances
        conv = name == CONV
        with torch.no_grad(), quant_mode(quantized, 'quantized'):
            x_hat = dequantize_codes(activation_codes(quantized.input_quantizer, x),
                                     instances).double()
            w_hat = quantized.weight_quantizer(quantized.weight).double()
            plain = (lambda a, w, b: F.conv2d(a, w, b, quantized.stride, quantized.padding)) \
                if conv else F.linear
            reference = plain(x_hat, w_hat, quantized.bias.double())
            fake_out = plain(quantized.input_quantizer(x), quantized.weight_quantizer(
                quantized.weight), quantized.bias)
            fake_seconds = median_seconds(lambda: plain(
                quantized.input_quantizer(x), quantized.weight_quantizer(quantized.weight),
                quantized.bias))
            integer_out = executor(x)
            integer_seconds = median_seconds(lambda: executor(x))
        if output_quantizer is not None:
            executor.output_quantizer = output_quantizer
        scale = reference.abs().max().item()
        rows.append(dict(layer=name, input_shape=list(x.shape), backend=executor.backend,
                         fake_quant_seconds=fake_seconds, integer_seconds=integer_seconds,
                         ratio=integer_seconds / fake_seconds,
                         fake_quant_error=(fake_out.double() - reference).abs().max().item()
                         / scale,
                         integer_error=(integer_out.double() - reference).abs().max().item()
                         / scale))
    return rows


def median_seconds(fn, repeats: int = 3) -> float:
    values = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        values.append(time.perf_counter() - start)
    return statistics.median(values)


def markdown(part: dict) -> str:
    """Two tables: backbone+neck per variant, and the single layers."""
    return '\n'.join([
        f'## {TITLE}: backbone+neck ({size_text(part["image_size"])}, median of '
        f'{part["feature_repeats"]} x {part["images"]} after 1 warm-up, round-robin)', '',
        f'Integer layers by backend: {part["backends"]}', '',
        table(['variant', 's/image (median)', 'x float', 'x fake-quant'],
              [(r['variant'], r['median'], r['ratio_to_float'], r['ratio_to_fake_quant'])
               for r in part['rows']]), '',
        f'## {TITLE}: single layers (inputs of the fake-quant model at that size)', '',
        table(['layer', 'input', 'backend', 'fake-quant s', 'integer s', 'x fake-quant',
               'fake-quant err vs fp64', 'integer err vs fp64'],
              [(r['layer'], 'x'.join(map(str, r['input_shape'])), r['backend'],
                r['fake_quant_seconds'], r['integer_seconds'], r['ratio'],
                r['fake_quant_error'], r['integer_error']) for r in part['layers']])])
