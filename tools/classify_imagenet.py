#!/usr/bin/env python
"""Top-1 of a timm ViT / DeiT / Swin classifier, float and quantized (the paper's protocol).

Evaluates a timm model on an ImageNet-format folder (``DATA/val/<class>/*.jpg``) in float
and, at each bit-width, with every activation quantizer, calibrating on
``--calib-images`` (default 32, the paper's protocol) images drawn at random (seeded) from
``DATA/train``. The weights come from ``--checkpoint`` (a state dict file); nothing is
downloaded. Prints a table and writes ``results.json`` and ``results.md`` to ``--out``.

    python tools/classify_imagenet.py --model vit_small_patch16_224 \\
        --checkpoint vit_small.pth --data /data/imagenet --out work_dirs/imagenet
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import os.path as osp
import sys
import time

import torch

from igq_plugin import ClassifierPredictor, QuantConfig, calibrate_model, quantize_model
from igq_plugin.nn import check_runs
from igq_plugin.quantizers import METHODS
from igq_plugin.report import format_table

COLUMNS = ['method', 'w_bits', 'a_bits', 'g_avg', 'top1', 'top5', 'gbops', 'calib_seconds',
           'eval_seconds']


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='timm model name, e.g. deit_small_patch16_224')
    parser.add_argument('--checkpoint', required=True, help='float state dict of that model')
    parser.add_argument('--data', required=True, help='folder with train/<class>/ and val/<class>/')
    parser.add_argument('--out', default='work_dirs/imagenet', help='output directory')
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        help=f'activation quantizers, from {list(METHODS)}')
    parser.add_argument('--bits', nargs='+', type=int, default=[4, 6], help='W/A bit-widths')
    parser.add_argument('--g-avg', type=int, default=12, help='G (fixed) or G_avg (igq)')
    parser.add_argument('--calib-images', type=int, default=32,
                        help='calibration images drawn from train (the paper: 32)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the calibration draw')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--max-val', type=int, default=None, help='evaluate the first N val images')
    parser.add_argument('--model-args', nargs='*', default=[], metavar='KEY=VALUE',
                        help='extra timm.create_model arguments (e.g. img_size=64 depth=2)')
    return parser.parse_args(argv)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_args(args: argparse.Namespace) -> dict:
    """Every setting checked before any long work; returns the model arguments."""
    check_runs(args.methods, args.bits, args.g_avg)
    if args.calib_images < 1:
        raise ValueError(f'--calib-images {args.calib_images}: need at least 1')
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'--checkpoint {args.checkpoint!r} does not exist')
    for split in ('train', 'val'):
        if not osp.isdir(osp.join(args.data, split)):
            raise FileNotFoundError(f'--data {args.data!r} has no {split}/ folder '
                                    f'(expected {split}/<class>/*.jpg)')
    model_args = {}
    for item in args.model_args:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ValueError(f'--model-args {item!r}: expected KEY=VALUE')
        model_args[key] = _value(value)
    return model_args


def build_model(name: str, checkpoint: str, model_args: dict) -> torch.nn.Module:
    """The timm model with the checkpoint's weights (every key must fit)."""
    import timm
    model = timm.create_model(name, pretrained=False, **model_args)
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    state = state.get('state_dict', state.get('model', state)) if isinstance(state, dict) else state
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f'--checkpoint does not fit {name}: missing {result.missing_keys[:6]}, '
                         f'unexpected {result.unexpected_keys[:6]}')
    return model.eval()


def datasets(model: torch.nn.Module, root: str):
    """``(train, val)`` ImageFolders with the model's own evaluation transform."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder
    config = resolve_data_config({}, model=model)
    # a model built with another img_size (--model-args) keeps its default config's size
    size = getattr(getattr(model, 'patch_embed', None), 'img_size', None)
    if size is not None:
        config['input_size'] = (3, *size)
    transform = create_transform(**config)
    return (ImageFolder(osp.join(root, 'train'), transform),
            ImageFolder(osp.join(root, 'val'), transform), config)


def pixel_range(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of the normalised input: pixels in [0, 1], then ``(x - mean) / std``."""
    mean, std = torch.tensor(config['mean']), torch.tensor(config['std'])
    return (0 - mean) / std, (1 - mean) / std


def calibration_batches(train, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` random (seeded) training images, one ``[1, 3, H, W]`` batch each."""
    if count > len(train):
        raise ValueError(f'--calib-images {count} but train/ holds {len(train)} images')
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return [train[int(i)][0].unsqueeze(0) for i in order[:count]]


def evaluate(model: torch.nn.Module, val, batch_size: int, limit: int | None) -> dict:
    """Top-1 / top-5 accuracy (%) on the first ``limit`` val images."""
    indices = range(len(val) if limit is None else min(limit, len(val)))
    subset = torch.utils.data.Subset(val, list(indices))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False)
    correct1 = correct5 = total = 0
    with torch.no_grad():
        for images, labels in loader:
            top = model(images).topk(min(5, model.num_classes), dim=-1).indices
            correct1 += int((top[:, 0] == labels).sum())
            correct5 += int((top == labels[:, None]).any(-1).sum())
            total += len(labels)
    return dict(top1=100.0 * correct1 / total, top5=100.0 * correct5 / total)


def forward(model, batch):
    return model(batch)


def quantized_run(float_model, method: str, bits: int, g_avg: int, batches, input_range):
    """Convert a copy of the model, calibrate it (and allocate for igq)."""
    model = copy.deepcopy(float_model)
    config = QuantConfig(method=method, w_bits=bits, a_bits=bits, groups=g_avg)
    quantize_model(model, config, input_range=input_range)
    predictor = ClassifierPredictor(model, batches, forward) if config.allocates else None
    return model, calibrate_model(model, batches, forward, predictor=predictor)


def _markdown(records: list[dict]) -> str:
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    lines += ['| ' + ' | '.join('-' if r[c] is None else str(r[c]) for c in COLUMNS) + ' |'
              for r in records]
    return '\n'.join(lines) + '\n'


def run(args: argparse.Namespace) -> list[dict]:
    model_args = check_args(args)
    float_model = build_model(args.model, args.checkpoint, model_args)
    train, val, data_config = datasets(float_model, args.data)
    batches = calibration_batches(train, args.calib_images, args.seed)
    input_range = pixel_range(data_config)
    start = time.perf_counter()
    records = [dict(method='float', w_bits=32, a_bits=32, g_avg=None, gbops=None,
                    calib_seconds=0.0, **evaluate(float_model, val, args.batch_size, args.max_val))]
    records[0]['eval_seconds'] = round(time.perf_counter() - start, 2)
    for bits in args.bits:
        for method in args.methods:
            model, report = quantized_run(float_model, method, bits, args.g_avg, batches,
                                          input_range)
            start = time.perf_counter()
            metrics = evaluate(model, val, args.batch_size, args.max_val)
            g_avg = {'per-tensor': 1, 'upper-bound': None}.get(method, args.g_avg)
            records.append(dict(method=method, w_bits=bits, a_bits=bits, g_avg=g_avg,
                                gbops=round(report.gbops, 4),
                                calib_seconds=round(report.seconds, 2),
                                eval_seconds=round(time.perf_counter() - start, 2), **metrics))
            print(format_table([records[-1]], COLUMNS), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'results.json'), 'w') as f:
        json.dump(records, f, indent=2)
    header = (f'# {args.model}: top-1 on {args.data}/val '
              f'({args.max_val or len(val)} images), {args.calib_images} calibration images '
              f'(seed {args.seed}), G_avg = {args.g_avg}\n\n')
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(header + _markdown(records))
    print(format_table(records, COLUMNS), flush=True)
    return records


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
    except (ValueError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    run(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
