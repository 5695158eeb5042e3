#!/usr/bin/env python
"""The embedded demo: quantize the demo Swin detector with every method and compare.

Generates the synthetic COCO data (cached), evaluates the float demo detector and,
at each bit-width, every activation quantizer through the IGQ calibration hook and
mmdet's CocoMetric; prints a table and writes results.json, results.md and PNG plots
to --out.

    python tools/demo.py --detector mask-rcnn      # or cascade
"""
import argparse
import sys

from igq_plugin.mm.demo import DETECTORS, DemoSettings, run_demo
from igq_plugin.quant import METHODS


def parse_args(argv=None) -> DemoSettings:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--detector', default='mask-rcnn', choices=sorted(DETECTORS))
    parser.add_argument('--checkpoint', help='float checkpoint (default: the committed demo model)')
    parser.add_argument('--data', default='data/synthetic_coco', help='dataset root')
    parser.add_argument('--out', default='work_dirs/demo', help='output directory')
    parser.add_argument('--methods', nargs='+', default=list(METHODS),
                        help=f'activation quantizers, from {list(METHODS)}')
    parser.add_argument('--bits', nargs='+', type=int, default=[4, 6], help='W/A bit-widths')
    parser.add_argument('--g-avg', type=int, default=8, help='G (fixed) or G_avg (igq)')
    parser.add_argument('--calib-images', type=int, default=1, help='calibration images')
    args = parser.parse_args(argv)
    return DemoSettings(detector=args.detector, checkpoint=args.checkpoint, data=args.data,
                        out=args.out, methods=tuple(args.methods), bits=tuple(args.bits),
                        g_avg=args.g_avg, calib_images=args.calib_images)


def main(argv=None) -> int:
    settings = parse_args(argv)
    try:
        settings.validate()
    except (ValueError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    run_demo(settings)
    return 0


if __name__ == '__main__':
    sys.exit(main())
