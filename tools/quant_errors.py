#!/usr/bin/env python
"""Per-layer quantization errors of every activation quantizer on held-out images.

Calibrates each method on --calib-images images of a split (default: the demo's
train split, so that the val split used for the metrics is never looked at; from
image --calib-start on) and measures, on the next --eval-images images, the relative
error of every quantizer's output and of the neck outputs against the float model,
and the mean KL of the class distributions (per RoI on the float model's proposals for
a detector, per pixel for a segmentor: the demo's fidelity figure). Prints one row per
method: the neck error, the KL and the mean error per layer kind.

    python tools/quant_errors.py --bits 4 --methods per-tensor static-group igq-fixed
    python tools/quant_errors.py --model upernet-vit --methods igq-fixed --bounds envelope mse
"""
import argparse
import json
import os.path as osp
import sys

from igq_demo.evaluation import load_config, quantization_errors
from igq_demo.tasks import TASKS, task_of
from igq_plugin.quantizers import METHODS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    models = sorted(m for task in TASKS.values() for m in task.models)
    parser.add_argument('--model', '--detector', dest='model', default='mask-rcnn',
                        choices=models, help='demo model')
    parser.add_argument('--checkpoint', help='float checkpoint (default: the demo model)')
    parser.add_argument('--data', help="dataset root (default: the model's demo dataset)")
    parser.add_argument('--split', default='train', help='images to calibrate and measure on')
    parser.add_argument('--methods', nargs='+', default=list(METHODS))
    parser.add_argument('--bounds', nargs='+', default=['envelope'],
                        help='IGQ group bounds to compare (envelope, mean, mse)')
    parser.add_argument('--bits', type=int, default=4)
    parser.add_argument('--groups', type=int, default=8)
    parser.add_argument('--calib-images', type=int, default=1)
    parser.add_argument('--calib-start', type=int, default=0,
                        help='index of the first calibration image in the split')
    parser.add_argument('--eval-images', type=int, default=8)
    parser.add_argument('--out', default='work_dirs/quant_errors')
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f'unknown methods {unknown}: allowed are {list(METHODS)}')
    task = task_of(args.model)
    model = task.models[args.model]
    checkpoint = args.checkpoint or model.checkpoint
    root = (args.data or task.default_data).rstrip('/') + '/'
    if not osp.isfile(checkpoint):
        parser.error(f'{checkpoint} does not exist')
    if not osp.exists(osp.join(root, task.val_marker)):
        parser.error(f'{root} is not a {task.name} dataset of this demo (no {task.val_marker})')
    rows = []
    for method in args.methods:
        for bounds in (args.bounds if method.startswith('igq') else ['-']):
            options = dict(task.split_options(root, args.split))
            options.update({'log_level': 'WARNING', 'model.backbone.quant.method': method,
                            'model.backbone.quant.w_bits': args.bits,
                            'model.backbone.quant.a_bits': args.bits,
                            'model.backbone.quant.groups': args.groups})
            if bounds != '-':
                options['model.backbone.quant.bounds'] = bounds
            cfg = load_config(model.quant_config, options)
            errors = quantization_errors(cfg, checkpoint, osp.join(args.out, 'runs'),
                                         args.calib_images, args.eval_images, args.calib_start)
            rows.append(dict(method=method, bounds=bounds, **errors))
            kinds = ' '.join(f'{k}={v:.4f}' for k, v in errors['kinds'].items())
            print(f'{method:13s} {bounds:9s} neck {errors["neck"]:.4f} kl {errors["kl"]:.4g} | '
                  f'{kinds}', flush=True)
    with open(osp.join(args.out, 'quant_errors.json'), 'w') as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
