#!/usr/bin/env python
"""Per-layer quantization errors of every activation quantizer on held-out images.

Calibrates each method on the first --calib-images images of a split (default: the
demo's train split, so that the val split used for mAP is never looked at) and
measures, on the next --eval-images images, the relative error of every quantizer's
output and of the neck (FPN) outputs against the float model, and the mean per-RoI KL
of the class distributions on the float model's proposals (the demo's fidelity
figure). Prints one row per method: the neck error, the KL and the mean error per
layer kind.

    python tools/quant_errors.py --bits 4 --methods per-tensor static-group igq-fixed
"""
import argparse
import json
import os.path as osp
import sys

from igq_demo.tasks import DET
from igq_plugin.mm.evaluation import load_config, quantization_errors
from igq_plugin.quant import METHODS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--detector', default='mask-rcnn', choices=sorted(DET.models))
    parser.add_argument('--checkpoint', help='float checkpoint (default: the demo model)')
    parser.add_argument('--data', default='data/synthetic_coco', help='dataset root')
    parser.add_argument('--split', default='train', help='images to calibrate and measure on')
    parser.add_argument('--methods', nargs='+', default=list(METHODS))
    parser.add_argument('--bounds', nargs='+', default=['envelope'],
                        help='IGQ group bounds to compare (envelope, mean)')
    parser.add_argument('--bits', type=int, default=4)
    parser.add_argument('--groups', type=int, default=8)
    parser.add_argument('--calib-images', type=int, default=1)
    parser.add_argument('--eval-images', type=int, default=8)
    parser.add_argument('--out', default='work_dirs/quant_errors')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f'unknown methods {unknown}: allowed are {list(METHODS)}')
    model = DET.models[args.detector]
    quant_config, default_checkpoint = model.quant_config, model.checkpoint
    checkpoint = args.checkpoint or default_checkpoint
    annotations = osp.join(args.data, 'annotations', f'instances_{args.split}.json')
    for path in (checkpoint, annotations):
        if not osp.isfile(path):
            parser.error(f'{path} does not exist')
    rows = []
    for method in args.methods:
        for bounds in (args.bounds if method.startswith('igq') else ['-']):
            options = {'test_dataloader.dataset.data_root': args.data.rstrip('/') + '/',
                       'test_dataloader.dataset.ann_file': f'annotations/instances_{args.split}.json',
                       'test_dataloader.dataset.data_prefix.img': f'{args.split}/',
                       'test_evaluator.ann_file': annotations,
                       'log_level': 'WARNING', 'model.backbone.quant.method': method,
                       'model.backbone.quant.w_bits': args.bits,
                       'model.backbone.quant.a_bits': args.bits,
                       'model.backbone.quant.groups': args.groups}
            if bounds != '-':
                options['model.backbone.quant.bounds'] = bounds
            cfg = load_config(quant_config, options)
            errors = quantization_errors(cfg, checkpoint, osp.join(args.out, 'runs'),
                                         args.calib_images, args.eval_images)
            rows.append(dict(method=method, bounds=bounds, **errors))
            kinds = ' '.join(f'{k}={v:.4f}' for k, v in errors['kinds'].items())
            print(f'{method:13s} {bounds:9s} neck {errors["neck"]:.4f} kl {errors["kl"]:.4g} | '
                  f'{kinds}', flush=True)
    with open(osp.join(args.out, 'quant_errors.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
