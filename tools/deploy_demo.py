#!/usr/bin/env python
"""The deployment check of the demo models: export, delete the float weights, evaluate.

    python tools/deploy_demo.py --models mask-rcnn upernet-vit --bits 4 6
    python tools/deploy_demo.py --variant pretrained-like --method igq-reparam --bits 4

For every demo model and bit-width, with the stock ``tools/test.py`` of mmdet / mmseg
run as a user runs it (a subprocess each):

1. fake-quant: ``test.py QUANT_CONFIG float.pth`` (the hook calibrates on its default
   train images);
2. export: ``tools/export_quantized.py QUANT_CONFIG float.pth model.igq.safetensors``
   from a copy of the float checkpoint, which is then deleted;
3. deployed: ``test.py QUANT_CONFIG model.igq.safetensors`` (no float checkpoint
   anywhere in the run directory, no calibration).

``--method`` picks the exported method (``igq`` by default) and ``--variant`` the float
checkpoint (the demo model, or its pretrained-like stress variant, made by
``tools/make_pretrained_like.py`` on first use). Writes ``deploy.json`` and ``deploy.md``
(metrics of 1 and 3, file sizes against float16) to ``--out``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

from igq_demo.demo import VARIANTS, DemoSettings, prepare_data, variant_checkpoint
from igq_demo.tasks import task_of
from igq_plugin.export import EXPORTABLE_METHODS

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

MODELS = ('mask-rcnn', 'cascade', 'upernet-vit', 'upernet-swin')


def stock_test_script(task: str) -> str:
    import importlib
    library = importlib.import_module('mmdet' if task == 'det' else 'mmseg')
    return osp.join(osp.dirname(library.__file__), '.mim', 'tools', 'test.py')


def run(command: list[str], log: str) -> None:
    with open(log, 'w') as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    if result.returncode:
        raise RuntimeError(f'{" ".join(command)} failed (exit {result.returncode}); see {log}')


def test_metrics(work_dir: str, metrics: dict) -> dict:
    """The metrics mmengine wrote for the test run in ``work_dir``."""
    found = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))
    if not found:
        raise RuntimeError(f'no test results in {work_dir}')
    with open(found[-1]) as handle:
        values = json.load(handle)
    return {name: values[key] for name, key in metrics.items()}


def run_label(model: str, bits: int, method: str, variant: str) -> str:
    """``mask-rcnn_w4a4`` (igq, plain), ``mask-rcnn_pretrained-like_igq-reparam_w4a4``."""
    parts = [model] + ([variant] if variant != 'plain' else []) + \
        ([method] if method != 'igq' else [])
    return '_'.join(parts + [f'w{bits}a{bits}'])


def check_one(model: str, bits: int, out: str, method: str = 'igq',
              variant: str = 'plain') -> dict:
    task = task_of(model)
    spec = task.models[model]
    checkpoint = variant_checkpoint(DemoSettings(task=task.name, model=model, variant=variant))
    options = ['--cfg-options', f'model.backbone.quant.method={method}',
               f'model.backbone.quant.w_bits={bits}', f'model.backbone.quant.a_bits={bits}']
    test = stock_test_script(task.name)
    run_dir = osp.join(out, run_label(model, bits, method, variant))
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    python = sys.executable
    run([python, test, spec.quant_config, checkpoint, '--work-dir',
         osp.join(run_dir, 'fake-quant'), *options], osp.join(run_dir, 'fake-quant.log'))
    float_copy = osp.join(run_dir, 'float.pth')
    shutil.copyfile(checkpoint, float_copy)
    exported = osp.join(run_dir, 'model.igq.safetensors')
    sizes_json = osp.join(run_dir, 'sizes.json')
    run([python, 'tools/export_quantized.py', spec.quant_config, float_copy, exported,
         '--work-dir', osp.join(run_dir, 'export'), '--sizes-json', sizes_json, *options],
        osp.join(run_dir, 'export.log'))
    os.remove(float_copy)  # the deployed run has no float checkpoint to fall back on
    run([python, test, spec.quant_config, exported, '--work-dir',
         osp.join(run_dir, 'deployed'), *options], osp.join(run_dir, 'deployed.log'))
    with open(sizes_json) as handle:
        sizes = json.load(handle)
    return dict(model=model, bits=bits, method=method, variant=variant,
                fake_quant=test_metrics(osp.join(run_dir, 'fake-quant'), task.metrics),
                deployed=test_metrics(osp.join(run_dir, 'deployed'), task.metrics),
                sizes=sizes)


def markdown(rows: list[dict]) -> str:
    lines = ['| model | method | W/A | metric | fake-quant | from the file | file MiB | '
             'backbone+neck / float16 | whole / float16 |',
             '|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        sizes = row['sizes']
        model = row['model'] + (f' ({row["variant"]})' if row['variant'] != 'plain' else '')
        for metric, value in row['fake_quant'].items():
            lines.append(f'| {model} | {row["method"]} | {row["bits"]}/{row["bits"]} | {metric} | '
                         f'{value:.4g} | {row["deployed"][metric]:.4g} | '
                         f'{sizes["file_bytes"] / 2**20:.2f} | '
                         f'{sizes["backbone_neck_ratio"]:.3f} | {sizes["whole_ratio"]:.3f} |')
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--models', nargs='+', default=['mask-rcnn', 'upernet-vit'],
                        choices=MODELS)
    parser.add_argument('--bits', nargs='+', type=int, default=[4, 6], choices=[4, 6, 8])
    parser.add_argument('--method', default='igq', choices=EXPORTABLE_METHODS)
    parser.add_argument('--variant', default='plain', choices=VARIANTS)
    parser.add_argument('--out', default='work_dirs/deploy')
    args = parser.parse_args(argv)
    for model in args.models:
        settings = DemoSettings(task=task_of(model).name, model=model, variant=args.variant)
        settings.validate()
        prepare_data(settings)
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for model in args.models:
        for bits in args.bits:
            rows.append(check_one(model, bits, args.out, args.method, args.variant))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    with open(osp.join(args.out, 'deploy.json'), 'w') as handle:
        json.dump(rows, handle, indent=1)
    with open(osp.join(args.out, 'deploy.md'), 'w') as handle:
        handle.write(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
