"""The embedded demo: float vs every activation quantizer on the synthetic COCO data.

``tools/demo.py`` is the command line; this module does the work.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from dataclasses import dataclass, field

from mmengine.logging import print_log

from ..data import dataset_is_current, generate_dataset
from ..quant import METHODS
from ..report import format_table
from ..report.plots import plot_ap_by_method, plot_channel_ranges, plot_groups_per_layer
from .evaluation import allocation_of, channel_range_statistics, load_config, run_test

DETECTORS = {
    'mask-rcnn': ('configs/demo/mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py',
                  'configs/demo/igq-w4a4_mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py',
                  'demo_models/mask-rcnn_swin-demo.pth'),
    'cascade': ('configs/demo/cascade-mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py',
                'configs/demo/igq-w4a4_cascade-mask-rcnn_swin-demo-p4-w7_fpn_synthetic-coco.py',
                'demo_models/cascade-mask-rcnn_swin-demo.pth'),
}
DEFAULT_DATA = 'data/synthetic_coco'
DATASET_ARGS = dict(seed=0, num_train=400, num_val=100, image_size=(192, 192))
COLUMNS = ['method', 'w_bits', 'a_bits', 'g_avg', 'bbox_mAP', 'segm_mAP', 'gbops',
           'calib_seconds', 'eval_seconds']


@dataclass
class DemoSettings:
    """What the demo runs (see ``tools/demo.py --help``)."""

    detector: str = 'mask-rcnn'
    checkpoint: str | None = None
    data: str = DEFAULT_DATA
    out: str = 'work_dirs/demo'
    methods: tuple[str, ...] = METHODS
    bits: tuple[int, ...] = (4, 6)
    g_avg: int = 8
    calib_images: int = 1
    variation_images: int = 8
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Check every setting before any long work starts."""
        if self.detector not in DETECTORS:
            raise ValueError(f'detector={self.detector!r}: allowed are {sorted(DETECTORS)}')
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f'unknown method(s) {unknown}: allowed are {list(METHODS)}')
        for bits in self.bits:
            if not 2 <= bits <= 16:
                raise ValueError(f'bits={bits}: allowed are 2..16')
        if self.calib_images < 1:
            raise ValueError(f'calib_images={self.calib_images}: need at least 1')
        if not osp.isfile(self.checkpoint_path):
            raise FileNotFoundError(f'demo checkpoint {self.checkpoint_path!r} does not exist; '
                                    f'train it with `make demo-models` or pass --checkpoint')

    @staticmethod
    def num_val_images(data: str) -> int:
        with open(osp.join(data, 'annotations', 'instances_val.json')) as f:
            return len(json.load(f)['images'])

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint or DETECTORS[self.detector][2]


def prepare_data(settings: DemoSettings) -> str:
    """The dataset root: the default synthetic dataset is generated unless a current
    copy exists; any other ``--data`` must already hold COCO annotations."""
    if settings.data != DEFAULT_DATA:
        ann = osp.join(settings.data, 'annotations', 'instances_val.json')
        if not osp.isfile(ann):
            raise FileNotFoundError(f'data={settings.data!r} has no {ann}: not a COCO dataset '
                                    f'(omit --data to use the generated {DEFAULT_DATA})')
        return settings.data
    if not dataset_is_current(settings.data, **DATASET_ARGS):
        print_log(f'generating the synthetic dataset in {settings.data}', logger='current')
        generate_dataset(settings.data, **DATASET_ARGS)
    return settings.data


def _data_options(root: str) -> dict:
    root = root.rstrip('/') + '/'
    return {'test_dataloader.dataset.data_root': root,
            'test_evaluator.ann_file': root + 'annotations/instances_val.json',
            'log_level': 'WARNING'}


def _record(method, w_bits, a_bits, g_avg, result, gbops) -> dict:
    return dict(method=method, w_bits=w_bits, a_bits=a_bits, g_avg=g_avg,
                bbox_mAP=round(float(result.metrics['coco/bbox_mAP']), 4),
                segm_mAP=round(float(result.metrics['coco/segm_mAP']), 4),
                gbops=round(gbops, 4), calib_seconds=round(result.calib_seconds, 2),
                eval_seconds=round(result.eval_seconds, 2))


def run_demo(settings: DemoSettings) -> list[dict]:
    """Evaluate float and every (method, bits) and write results, table and plots."""
    settings.validate()
    data = prepare_data(settings)
    float_config, quant_config, _ = DETECTORS[settings.detector]
    checkpoint = settings.checkpoint_path
    out = osp.join(settings.out, settings.detector) if settings.detector != 'mask-rcnn' \
        else settings.out
    os.makedirs(out, exist_ok=True)
    options = dict(_data_options(data), **settings.extra)
    records, allocations, macs = [], {}, 0
    for bits in settings.bits:
        for method in settings.methods:
            quant = {'model.backbone.quant.method': method, 'model.backbone.quant.w_bits': bits,
                     'model.backbone.quant.a_bits': bits,
                     'model.backbone.quant.groups': settings.g_avg,
                     'custom_hooks.0.num_images': settings.calib_images}
            cfg = load_config(quant_config, dict(options, **quant))
            result = run_test(cfg, checkpoint, osp.join(out, 'runs', f'{method}_w{bits}a{bits}'))
            macs = macs or result.report.macs
            if allocation_of(result.report):
                allocations[bits] = allocation_of(result.report)
            g_avg = {'per-tensor': 1, 'upper-bound': None}.get(method, settings.g_avg)
            records.append(_record(method, bits, bits, g_avg, result, result.report.gbops))
            print_log(format_table([records[-1]], COLUMNS), logger='current')
    float_result = run_test(load_config(float_config, options), checkpoint,
                            osp.join(out, 'runs', 'float'))
    records.insert(0, _record('float', 32, 32, None, float_result, macs * 32 * 32 / 1e9))
    _write_outputs(records, out, settings)
    allocation = allocations.get(min(settings.bits))
    if allocation:
        plot_groups_per_layer(allocation, osp.join(out, 'groups_per_layer.png'),
                              f'Chosen G per layer, W{min(settings.bits)}/A{min(settings.bits)}, '
                              f'G_avg = {settings.g_avg}')
    ranges = channel_range_statistics(
        load_config(quant_config, dict(options, **{'model.backbone.quant.method': 'igq'})),
        checkpoint, osp.join(out, 'runs', 'variation'), settings.variation_images)
    plot_channel_ranges(ranges, osp.join(out, 'channel_range_variation.png'),
                        min(settings.variation_images, settings.num_val_images(data)))
    with open(osp.join(out, 'channel_ranges.json'), 'w') as f:
        json.dump(ranges, f, indent=2)
    return records


def _write_outputs(records: list[dict], out: str, settings: DemoSettings) -> None:
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(records, f, indent=2)
    table = format_table(records, COLUMNS)
    header = (f'# IGQ demo: {settings.detector}, synthetic COCO val '
              f'({settings.num_val_images(settings.data)} images), '
              f'{settings.calib_images} calibration image(s), G_avg = {settings.g_avg}\n\n')
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(header + _markdown(records))
    plot_ap_by_method(records, osp.join(out, 'ap_by_method.png'))
    print(table, flush=True)  # the demo's terminal output


def _markdown(records: list[dict]) -> str:
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    lines += ['| ' + ' | '.join('-' if r[c] is None else str(r[c]) for c in COLUMNS) + ' |'
              for r in records]
    return '\n'.join(lines) + '\n'
