#!/usr/bin/env python
"""Make the pretrained-like stress variant of a float mm checkpoint (same function).

    python tools/make_pretrained_like.py \\
        configs/demo/mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py \\
        demo_models/mask-rcnn_swin-demo.pth work_dirs/variants/mask-rcnn_pretrained-like.pth

Every LayerNorm -> Linear pair of the backbone gets per-channel factors on the
LayerNorm's affine and their inverse on the Linear's input columns (see
``igq_demo/pretrained_like.py`` for the distribution and its sources). The float model
computes the same function; the tool checks it on ``--check-images`` val images (the
backbone's outputs before and after, ``max|a - b| / max|b|``) and prints the widest /
median post-LayerNorm channel range before and after. The variant is saved in float32
(float16 would round the rescaled weights and change the function).
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys

import torch
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import CheckpointLoader, Runner

from igq_demo.pretrained_like import (OutlierProfile, post_norm_range_ratios,
                                      write_variant_checkpoint)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='the float config of the model')
    parser.add_argument('checkpoint', help='the float checkpoint')
    parser.add_argument('output', help='the variant checkpoint to write')
    defaults = OutlierProfile()
    parser.add_argument('--fraction', type=float, default=defaults.fraction)
    parser.add_argument('--low', type=float, default=defaults.low)
    parser.add_argument('--high', type=float, default=defaults.high)
    parser.add_argument('--sigma', type=float, default=defaults.sigma)
    parser.add_argument('--seed', type=int, default=defaults.seed)
    parser.add_argument('--check-images', type=int, default=4,
                        help='val images of the same-function check (0: none)')
    return parser.parse_args(argv)


def build_float_model(cfg: Config, checkpoint: str) -> torch.nn.Module:
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model).eval()
    state = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    model.load_state_dict(state.get('state_dict', state))
    return model


def check_images(cfg: Config, model, count: int) -> list[torch.Tensor]:
    loader = Runner.build_dataloader(dict(cfg.test_dataloader, num_workers=0,
                                          persistent_workers=False))
    images = []
    for data in loader:
        images.extend(model.data_preprocessor(data, False)['inputs'].split(1))
        if len(images) >= count:
            break
    return images[:count]


def backbone_outputs(model, images) -> list[torch.Tensor]:
    with torch.no_grad():
        return [level for image in images for level in model.backbone(image)]


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = [f'{what} {path!r} does not exist' for what, path in
               (('config', args.config), ('checkpoint', args.checkpoint)) if not osp.isfile(path)]
    try:
        profile = OutlierProfile(args.fraction, args.low, args.high, args.sigma, args.seed)
    except ValueError as error:
        missing.append(str(error))
    if missing:  # every bad argument at once, before any model is built
        print('error: ' + '; '.join(missing), file=sys.stderr)
        return 2
    cfg = Config.fromfile(args.config)
    model = build_float_model(cfg, args.checkpoint)
    images = check_images(cfg, model, args.check_images) if args.check_images else []
    forward = lambda m, image: m.backbone(image)  # noqa: E731
    before_ratios = post_norm_range_ratios(model, images, forward) if images else {}
    before = backbone_outputs(model, images)
    factors = write_variant_checkpoint(model, args.output, profile,
                                       osp.basename(args.checkpoint))
    after = backbone_outputs(model, images)
    after_ratios = post_norm_range_ratios(model, images, forward) if images else {}
    error = max((float((a - b).abs().max() / b.abs().max()) for a, b in zip(after, before)),
                default=0.0)
    report = dict(output=args.output, layernorms=len(factors), profile=profile.as_dict(),
                  backbone_max_relative_difference=error, check_images=len(images))
    if images:
        report['widest_over_median_range_before'] = _summary(before_ratios.values())
        report['widest_over_median_range_after'] = _summary(after_ratios.values())
    print(json.dumps(report, indent=1))
    return 0


def _summary(values) -> dict:
    values = sorted(values)
    return dict(min=round(values[0], 2), median=round(values[len(values) // 2], 2),
                max=round(values[-1], 2))


if __name__ == '__main__':
    sys.exit(main())
