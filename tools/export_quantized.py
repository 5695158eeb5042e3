#!/usr/bin/env python
"""Export a quantized mm detector / segmentor to one deployable file.

    python tools/export_quantized.py CONFIG float.pth model.igq.safetensors [--state S]

CONFIG is a quantized config (``IGQBackbone`` + ``IGQCalibrationHook``, e.g.
configs/demo/igq-w4a4_mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py). The model is
built and loaded as the stock ``tools/test.py`` does, calibrated by the config's hook
(or given the calibrated state ``--state``, e.g. a ``work_dir/igq_state.pth``), and
written to ``*.igq.safetensors``. Then evaluate it without the float checkpoint:

    python .../mmdet/.mim/tools/test.py CONFIG model.igq.safetensors

Prints the file's size against the float16 checkpoint of the same model (backbone +
neck, and the whole model) and, with ``--sizes-json``, writes them to a JSON file.
"""
import argparse
import json
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

from igq_plugin.export import EXPORTABLE_METHODS, SUFFIX, architecture, file_sizes
from igq_plugin.mm import IGQCalibrationHook, export_mm_model
from igq_plugin.mm.state_io import weights_fingerprint

PARTS = ('backbone.', 'neck.')


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', help='the float checkpoint')
    parser.add_argument('output', help=f'the file to write (*{SUFFIX})')
    parser.add_argument('--state', help='a calibrated state (igq_state.pth) instead of '
                                        'calibrating')
    parser.add_argument('--work-dir', default='work_dirs/export_quantized')
    parser.add_argument('--sizes-json', help='also write the size figures to this file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, as in tools/test.py')
    return parser.parse_args(argv)


def float16_bytes(model, prefix: str = '') -> int:
    """Bytes of the model's float tensors stored as float16 (the float16 checkpoint)."""
    return sum(2 * _count(shape) for name, shape in architecture(model).items()
               if name.startswith(prefix))


def _count(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def size_table(model, path: str) -> dict:
    """File tensors against float16, for backbone + neck and the whole model."""
    sizes = file_sizes(path, PARTS)
    quantized_parts = sum(sizes.get(p, 0) for p in PARTS)
    float_parts = sum(float16_bytes(model, p) for p in PARTS)
    whole_float = float16_bytes(model)
    return dict(file_bytes=sizes['file'], tensor_bytes=sizes['tensors'],
                backbone_neck_bytes=quantized_parts, backbone_neck_float16_bytes=float_parts,
                backbone_neck_ratio=quantized_parts / float_parts,
                whole_float16_bytes=whole_float, whole_ratio=sizes['file'] / whole_float)


def main(argv=None) -> int:
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            print(f'error: {what} {path!r} does not exist', file=sys.stderr)
            return 2
    if not args.output.endswith(SUFFIX):
        print(f'error: output {args.output!r} must end with {SUFFIX!r}', file=sys.stderr)
        return 2
    if args.checkpoint.endswith(SUFFIX):
        print(f'error: {args.checkpoint!r} is already a quantized model; pass the float '
              f'checkpoint', file=sys.stderr)
        return 2
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    hooks = [h for h in cfg.get('custom_hooks', []) if h.get('type') == 'IGQCalibrationHook']
    if len(hooks) != 1:
        print(f'error: {args.config} has {len(hooks)} IGQCalibrationHook entries in '
              f'custom_hooks; a quantized config has one', file=sys.stderr)
        return 2
    method = cfg.model.get('backbone', {}).get('quant', {}).get('method', 'igq')
    if method not in EXPORTABLE_METHODS:  # before the calibration, not after it
        print(f'error: method={method!r} cannot be exported: exportable are '
              f'{EXPORTABLE_METHODS}', file=sys.stderr)
        return 2
    hooks[0].update(save_state=False, export=False,
                    **({'state_file': args.state} if args.state else {}))
    cfg.work_dir, cfg.load_from, cfg.launcher = args.work_dir, args.checkpoint, 'none'
    runner = Runner.from_cfg(cfg)
    runner.call_hook('before_run')
    runner.load_or_resume()
    model = runner.model
    weights_hash = weights_fingerprint(model)
    hook = next(h for h in runner.hooks if isinstance(h, IGQCalibrationHook))
    hook.before_test(runner)  # calibrates (or loads --state): the model is now quantized
    export_mm_model(model, args.output, cfg.model, weights_hash, cfg.get('default_scope'))
    sizes = size_table(model, args.output)
    print(f'wrote {args.output}: {sizes["file_bytes"] / 2**20:.2f} MiB, '
          f'{sizes["whole_ratio"]:.3f}x the float16 model '
          f'({sizes["whole_float16_bytes"] / 2**20:.2f} MiB); backbone + neck '
          f'{sizes["backbone_neck_bytes"] / 2**20:.2f} MiB, '
          f'{sizes["backbone_neck_ratio"]:.3f}x float16')
    if args.sizes_json:
        with open(args.sizes_json, 'w') as handle:
            json.dump(dict(sizes, config=args.config), handle, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
