#!/usr/bin/env python
"""Side-by-side table of demo runs (e.g. plain vs pretrained-like), mean ± std.

Reads the ``results.json`` the demo wrote in each folder and prints one markdown table:
a row per (method, bits), a column group per folder (every metric and ``kl``), each
cell the mean ± std over calibration draws. docs/results.md's tables were printed by

    python tools/side_by_side.py plain=work_dirs/demo pretrained-like=work_dirs/demo/pretrained-like
"""
import argparse
import json
import os.path as osp
import sys

from igq_demo.draws import format_spread, significant_digits
from igq_demo.tasks import TASKS


def load(folder: str) -> dict:
    path = osp.join(folder, 'results.json')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist: run tools/demo.py --out ... first')
    with open(path) as f:
        results = json.load(f)
    if not isinstance(results, dict) or 'summary' not in results:
        raise ValueError(f'{path} is not a results file of tools/demo.py (no summary)')
    return results


def side_by_side(named: dict[str, dict], columns: list[str]) -> str:
    """The markdown table of ``{label: results}`` (``results.json`` contents)."""
    tasks = {results['settings']['task'] for results in named.values()}
    if len(tasks) != 1:
        raise ValueError(f'the folders hold results of different tasks: {sorted(tasks)}')
    task = TASKS[tasks.pop()]
    metrics = columns or list(task.metrics)
    digits = significant_digits(task.metric_range)
    keys = list(dict.fromkeys((r['method'], r['w_bits']) for results in named.values()
                              for r in results['summary']))
    header = ['method', 'bits'] + [f'{label} {column}' for label in named
                                   for column in (*metrics, 'kl')]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for method, bits in keys:
        cells = [method, 'float' if method == 'float' else f'W{bits}/A{bits}']
        for results in named.values():
            row = next((r for r in results['summary']
                        if (r['method'], r['w_bits']) == (method, bits)), None)
            for column in (*metrics, 'kl'):
                if row is None:
                    cells.append('')
                    continue
                cells.append(format_spread(row.get(column), row.get(f'{column}_std'),
                                           digits if column in metrics else 4))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folders', nargs='+', help='LABEL=FOLDER (a tools/demo.py output)')
    parser.add_argument('--metrics', nargs='*', default=[],
                        help="metric columns (default: the task's, e.g. bbox_mAP segm_mAP)")
    args = parser.parse_args(argv)
    named = {}
    for item in args.folders:
        label, sep, folder = item.partition('=')
        if not sep or not label or not folder:
            print(f'error: {item!r}: expected LABEL=FOLDER', file=sys.stderr)
            return 2
        try:
            named[label] = load(folder)
        except (FileNotFoundError, ValueError) as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
    print(side_by_side(named, args.metrics), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
