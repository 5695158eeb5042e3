#!/usr/bin/env python
"""The embedded demo: quantize the demo models with every method and compare.

Generates the synthetic data (cached), evaluates the float demo model and, at each
bit-width, every activation quantizer through the IGQ calibration hook and the task's
metric (detection: mmdet's CocoMetric, bbox / segm mAP; segmentation: mmseg's IoUMetric,
mIoU / aAcc); prints a table and writes results.json, results.md and PNG plots to --out
(segmentation: --out/seg/<model>).

    python tools/demo.py --task det --model mask-rcnn      # or cascade
    python tools/demo.py --protocol full                   # also RPN and RoI heads
    python tools/demo.py --task seg                        # both UperNet models
    python tools/demo.py --variant pretrained-like         # the channel-outlier variant
    python tools/demo.py --split holdout                   # held-out train images

Every method is calibrated on --draws independent draws of train images (IGQCalibrationHook
draw=0, 1, ...) and reported as mean ± std; no evaluated image is a calibration image.
"""
import argparse
import sys

from mmengine.config import DictAction

from igq_demo.demo import PROTOCOLS, VARIANTS, DemoSettings, run_demo, settings_error
from igq_demo.splits import SPLITS
from igq_demo.tasks import TASKS
from igq_plugin.quantizers import METHODS


def parse_args(argv=None) -> list[DemoSettings]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--task', default='det', choices=sorted(TASKS))
    models = sorted(m for task in TASKS.values() for m in task.models)
    parser.add_argument('--model', choices=models,
                        help='demo model (default: det: mask-rcnn; seg: every seg model)')
    parser.add_argument('--detector', dest='model', choices=sorted(TASKS['det'].models),
                        help='the same as --model for --task det')
    parser.add_argument('--checkpoint', help='float checkpoint (default: the committed demo model)')
    parser.add_argument('--data', help="dataset root (default: the task's generated dataset)")
    parser.add_argument('--out', default='work_dirs/demo', help='output directory')
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        help=f'activation quantizers, from {list(METHODS)}')
    parser.add_argument('--bits', nargs='+', type=int, default=[4, 6], help='W/A bit-widths')
    parser.add_argument('--g-avg', type=int, default=8, help='G (fixed) or G_avg (igq)')
    parser.add_argument('--calib-images', type=int, default=None,
                        help='train images per calibration draw (default: the hook\'s, as '
                             'many as the paper\'s one 800x1216 COCO image holds pixels: 27 '
                             'detection, 60 segmentation demo images)')
    parser.add_argument('--draws', type=int, default=5,
                        help='independent calibration draws per method and bit-width (the '
                             'tables give mean ± std over them)')
    parser.add_argument('--split', default='val', choices=SPLITS,
                        help='evaluated images: val, or holdout (train images outside the '
                             'calibration pool: where defaults are decided); output in '
                             '--out/holdout')
    parser.add_argument('--protocol', default='backbone-neck', choices=sorted(PROTOCOLS),
                        help='detection: what is quantized, backbone and neck (default) or '
                             'the full detector (also RPN and RoI heads, as the peers\' '
                             'published code); output in --out/full')
    parser.add_argument('--variant', default='plain', choices=VARIANTS,
                        help='the demo models as trained (plain) or their pretrained-like '
                             'stress variant: a few post-LayerNorm channels 10-100x the '
                             'median range, same float function (tools/make_pretrained_like.py);'
                             ' output in --out/pretrained-like')
    parser.add_argument('--fidelity-images', type=int, default=16,
                        help='evaluated images (the first ones of the split) of the kl / '
                             'feat_err columns')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='config overrides of the quantized runs, after the demo\'s own '
                             '(e.g. model.backbone.quant.a_bits=16: weights-only)')
    args = parser.parse_args(argv)
    if args.model is None:
        names = list(TASKS[args.task].models)[:1] if args.task == 'det' else list(
            TASKS[args.task].models)
    else:
        names = [args.model]
    if args.checkpoint and len(names) > 1:
        parser.error('--checkpoint needs --model (one model)')
    return [DemoSettings(task=args.task, model=name, checkpoint=args.checkpoint, data=args.data,
                         out=args.out, methods=tuple(args.methods), bits=tuple(args.bits),
                         g_avg=args.g_avg, calib_images=args.calib_images, draws=args.draws,
                         split=args.split, extra=dict(args.cfg_options),
                         fidelity_images=args.fidelity_images, protocol=args.protocol,
                         variant=args.variant)
            for name in names]


def main(argv=None) -> int:
    runs = parse_args(argv)
    error = settings_error(runs)
    if error:
        print(error, file=sys.stderr)
        return 2
    for settings in runs:
        run_demo(settings)
    return 0


if __name__ == '__main__':
    sys.exit(main())
