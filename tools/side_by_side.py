#!/usr/bin/env python
"""Side-by-side table of demo runs (e.g. plain vs pretrained-like), mean ± std.

Reads the ``results.json`` the demo wrote in each folder and prints one markdown table:
a row per (method, bits), a column group per folder (every metric and ``kl``), each
cell the mean ± std over calibration draws. docs/results.md's tables were printed by

    python tools/side_by_side.py plain=work_dirs/demo pretrained-like=work_dirs/demo/pretrained-like

``LABEL=FOLDER1,FOLDER2`` merges the rows of several outputs of one setting (e.g. a
method run on its own with ``--methods``); a (method, bits) row comes from the first
folder that has it.
"""
import argparse
import json
import os.path as osp
import sys

from igq_demo.draws import format_spread, significant_digits
from igq_demo.tasks import TASKS
from igq_plugin.quantizers import METHODS


def load(folder: str) -> dict:
    path = osp.join(folder, 'results.json')
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} does not exist: run tools/demo.py --out ... first')
    with open(path) as f:
        results = json.load(f)
    if not isinstance(results, dict) or 'summary' not in results:
        raise ValueError(f'{path} is not a results file of tools/demo.py (no summary)')
    return results


def load_merged(folders: list[str]) -> dict:
    """The results of several folders of one task, summaries merged (first wins)."""
    merged = load(folders[0])
    seen = {row_key(r) for r in merged['summary']}
    for folder in folders[1:]:
        results = load(folder)
        if results['settings']['task'] != merged['settings']['task']:
            raise ValueError(f'{folder} holds {results["settings"]["task"]} results, '
                             f'{folders[0]} {merged["settings"]["task"]} results')
        for row in results['summary']:
            if row_key(row) not in seen:
                merged['summary'].append(row)
                seen.add(row_key(row))
    return merged


def row_key(row: dict) -> tuple[str, int, int]:
    """``(method, w_bits, a_bits)`` of a summary row: one table row per setting (a run
    with ``--cfg-options model.backbone.quant.w_bits=16`` is not the W4/A4 row)."""
    return row['method'], row['w_bits'], row.get('a_bits', row['w_bits'])


def _row_order(key: tuple[str, int, int]) -> tuple:
    """float first, then by bits, then in the order of ``METHODS``."""
    method, w_bits, a_bits = key
    order = METHODS.index(method) if method in METHODS else len(METHODS)
    return (method != 'float', a_bits, w_bits, order, method)


def side_by_side(named: dict[str, dict], columns: list[str]) -> str:
    """The markdown table of ``{label: results}`` (``results.json`` contents)."""
    tasks = {results['settings']['task'] for results in named.values()}
    if len(tasks) != 1:
        raise ValueError(f'the folders hold results of different tasks: {sorted(tasks)}')
    task = TASKS[tasks.pop()]
    metrics = columns or list(task.metrics)
    digits = significant_digits(task.metric_range)
    keys = sorted(dict.fromkeys(row_key(r) for results in named.values()
                                for r in results['summary']), key=_row_order)
    header = ['method', 'bits'] + [f'{label} {column}' for label in named
                                   for column in (*metrics, 'kl')]
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for key in keys:
        method, w_bits, a_bits = key
        cells = [method, 'float' if method == 'float' else f'W{w_bits}/A{a_bits}']
        for results in named.values():
            row = next((r for r in results['summary'] if row_key(r) == key), None)
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
    parser.add_argument('folders', nargs='+',
                        help='LABEL=FOLDER or LABEL=FOLDER1,FOLDER2 (tools/demo.py outputs)')
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
            named[label] = load_merged(folder.split(','))
        except (FileNotFoundError, ValueError) as error:
            print(f'error: {error}', file=sys.stderr)
            return 2
    print(side_by_side(named, args.metrics), end='')
    return 0


if __name__ == '__main__':
    sys.exit(main())
