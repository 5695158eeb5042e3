#!/usr/bin/env python
"""How many calibration images: metric vs count on held-out train images.

For each count, runs the demo (``igq_demo.demo.run_demo``) on the held-out train images
(train images outside the calibration pool; val is never looked at) with --draws
independent calibration draws, and writes one table and one plot of mean ± std per
(method, count) to --out. docs/results.md, "Calibration protocol", was made with

    python tools/calibration_study.py --variant pretrained-like
"""
import argparse
import json
import os
import os.path as osp
import sys

from igq_demo.demo import VARIANTS, DemoSettings, run_demo, settings_error
from igq_demo.draws import format_spread, significant_digits
from igq_demo.plots import plot_metric_by_count
from igq_demo.tasks import TASKS, task_of


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    models = sorted(m for task in TASKS.values() for m in task.models)
    parser.add_argument('--model', default='mask-rcnn', choices=models)
    parser.add_argument('--variant', default='pretrained-like', choices=VARIANTS)
    parser.add_argument('--counts', nargs='+', type=int, default=[1, 4, 8, 16, 27, 48],
                        help='calibration images per draw')
    parser.add_argument('--draws', type=int, default=3)
    parser.add_argument('--methods', nargs='+', default=['per-tensor', 'repq', 'igq-fixed',
                                                          'igq'])
    parser.add_argument('--bits', type=int, default=4, help='W/A bit-width')
    parser.add_argument('--out', default='work_dirs/calibration_study')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    task = task_of(args.model)
    out = osp.join(args.out, args.model, args.variant)
    runs = [DemoSettings(task=task.name, model=args.model, variant=args.variant,
                         split='holdout', methods=tuple(args.methods), bits=(args.bits,),
                         calib_images=count, draws=args.draws,
                         out=osp.join(out, f'n{count}'))
            for count in args.counts]
    error = settings_error(runs)
    if error:
        print(error, file=sys.stderr)
        return 2
    rows = []
    for count, settings in zip(args.counts, runs):
        for record in run_demo(settings):
            rows.append(dict(record, calib_images=count))
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'study.json'), 'w') as f:
        json.dump(rows, f, indent=2)
    metric = next(iter(task.metrics))
    digits = significant_digits(task.metric_range)
    table = [f'# {args.model} ({args.variant}), W{args.bits}/A{args.bits}: {metric} on held-out '
             f'train images, mean ± std over {args.draws} calibration draws', '',
             '| method | ' + ' | '.join(f'{c} images' for c in args.counts) + ' |',
             '|---|' + '---|' * len(args.counts)]
    for method in ['float', *args.methods]:
        cells = [format_spread(r[metric], r.get(f'{metric}_std'), digits)
                 for c in args.counts for r in rows
                 if r['calib_images'] == c and r['method'] == method]
        table.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    with open(osp.join(out, 'study.md'), 'w') as f:
        f.write('\n'.join(table) + '\n')
    print('\n'.join(table))
    plot_metric_by_count(rows, metric, task.metric_range, osp.join(out, 'study.png'),
                         f'{args.model} ({args.variant}) W{args.bits}/A{args.bits}: {metric} on '
                         f'held-out train images vs calibration images')
    return 0


if __name__ == '__main__':
    sys.exit(main())
