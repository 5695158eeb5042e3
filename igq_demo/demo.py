"""The embedded demo: float vs every activation quantizer on the generated data.

``tools/demo.py`` is the command line; this module does the work for every task of
:mod:`igq_demo.tasks` (detection: COCO mAP; segmentation: mIoU / aAcc).
"""
from __future__ import annotations

import json
import os
import os.path as osp
from dataclasses import dataclass, field

from mmengine.logging import print_log

from igq_plugin.nn import check_runs
from igq_plugin.quantizers import METHODS
from igq_plugin.report import format_table

from .evaluation import allocation_of, channel_range_statistics, load_config, run_test
from .pretrained_like import OutlierProfile, write_variant_checkpoint
from .plots import plot_channel_ranges, plot_groups_per_layer, plot_metrics_by_method
from .tasks import TASKS, DemoTask


# The float models the demo quantizes: the demo models as trained, or their
# pretrained-like stress variant (channel outliers, same function; .pretrained_like).
VARIANTS = ('plain', 'pretrained-like')

# What is quantized (detection): the project's default, and the protocol of the
# detection peers' published code (every Conv2d / Linear of the detector).
PROTOCOLS = {
    'backbone-neck': {},
    'full': {'model.backbone.quant.rpn_head': True, 'model.backbone.quant.roi_head': True},
}


@dataclass
class DemoSettings:
    """What the demo runs (see ``tools/demo.py --help``)."""

    task: str = 'det'
    model: str | None = None  # None: the task's first model
    checkpoint: str | None = None
    data: str | None = None  # None: the task's generated dataset
    out: str = 'work_dirs/demo'
    methods: tuple[str, ...] = METHODS
    bits: tuple[int, ...] = (4, 6)
    g_avg: int = 8
    calib_images: int = 1
    fidelity_images: int = 16  # val images after the calibration images
    variation_images: int = 8
    protocol: str = 'backbone-neck'
    variant: str = 'plain'
    extra: dict = field(default_factory=dict)

    @property
    def spec(self) -> DemoTask:
        return TASKS[self.task]

    @property
    def model_name(self) -> str:
        return self.model or next(iter(self.spec.models))

    @property
    def data_root(self) -> str:
        return self.data or self.spec.default_data

    @property
    def checkpoint_path(self) -> str:
        return self.checkpoint or self.spec.models[self.model_name].checkpoint

    def validate(self) -> None:
        """Check every setting before any long work starts."""
        if self.task not in TASKS:
            raise ValueError(f'task={self.task!r}: allowed are {sorted(TASKS)}')
        if self.model_name not in self.spec.models:
            raise ValueError(f'model={self.model!r} is not a {self.task} demo model: allowed '
                             f'are {sorted(self.spec.models)}')
        if self.variant not in VARIANTS:
            raise ValueError(f'variant={self.variant!r}: allowed are {VARIANTS}')
        if self.protocol not in PROTOCOLS:
            raise ValueError(f'protocol={self.protocol!r}: allowed are {sorted(PROTOCOLS)}')
        if self.protocol != 'backbone-neck' and self.task != 'det':
            raise ValueError(f'protocol={self.protocol!r} applies to detectors; a {self.task} '
                             f'demo quantizes backbone and decode head (backbone-neck)')
        check_runs(self.methods, self.bits, self.g_avg)
        if self.calib_images < 1:
            raise ValueError(f'calib_images={self.calib_images}: need at least 1')
        if self.fidelity_images < 1:
            raise ValueError(f'fidelity_images={self.fidelity_images}: need at least 1')
        if not osp.isfile(self.checkpoint_path):
            raise FileNotFoundError(f'demo checkpoint {self.checkpoint_path!r} does not exist; '
                                    f'train it with `make demo-models` or pass --checkpoint')


def prepare_data(settings: DemoSettings) -> str:
    """The dataset root: the default dataset is generated unless a current copy exists;
    any other ``--data`` must already hold a dataset of the task."""
    task, root = settings.spec, settings.data_root
    if root != task.default_data:
        if not osp.exists(osp.join(root, task.val_marker)):
            raise FileNotFoundError(f'data={root!r} has no {task.val_marker}: not a {task.name} '
                                    f'dataset of this demo (omit --data to use the generated '
                                    f'{task.default_data})')
        return root
    if not task.is_current(root, **task.dataset_args):
        print_log(f'generating the synthetic dataset in {root}', logger='current')
        task.generate(root, **task.dataset_args)
    return root


def _record(task: DemoTask, method, w_bits, a_bits, g_avg, result, gbops) -> dict:
    metrics = {column: round(float(result.metrics[key]), 4)
               for column, key in task.metrics.items()}
    fidelity = result.fidelity
    return dict(method=method, w_bits=w_bits, a_bits=a_bits, g_avg=g_avg, **metrics,
                kl=None if fidelity is None else float(f'{fidelity.kl:.4g}'),
                feat_err=None if fidelity is None else float(f'{fidelity.feature_error:.4g}'),
                gbops=round(gbops, 4), calib_seconds=round(result.calib_seconds, 2),
                eval_seconds=round(result.eval_seconds, 2))


def output_dir(settings: DemoSettings) -> str:
    """``out`` for the detection demo's first model, ``out/<task or model>`` otherwise;
    ``/full`` appended for the full-detector protocol."""
    root = settings.out if settings.variant == 'plain' else osp.join(settings.out,
                                                                      settings.variant)
    if settings.task == 'det':
        out = root if settings.model_name == 'mask-rcnn' else osp.join(root,
                                                                        settings.model_name)
        return out if settings.protocol == 'backbone-neck' else osp.join(out,
                                                                          settings.protocol)
    return osp.join(root, settings.task, settings.model_name)


def variant_checkpoint(settings: DemoSettings) -> str:
    """The float checkpoint of ``settings.variant``: the demo model itself, or its
    pretrained-like variant (made once, kept in ``<out>/variants/``)."""
    checkpoint = settings.checkpoint_path
    if settings.variant == 'plain':
        return checkpoint
    path = osp.join(settings.out, 'variants', f'{settings.model_name}_{settings.variant}.pth')
    if not osp.isfile(path) or osp.getmtime(path) < osp.getmtime(checkpoint):
        from mmengine.registry import MODELS, init_default_scope
        from mmengine.runner import CheckpointLoader
        cfg = load_config(settings.spec.models[settings.model_name].float_config)
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        model = MODELS.build(cfg.model).eval()
        state = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
        model.load_state_dict(state.get('state_dict', state))
        write_variant_checkpoint(model, path, OutlierProfile(), osp.basename(checkpoint))
        print_log(f'wrote the pretrained-like variant of {checkpoint} to {path}',
                  logger='current')
    return path


def run_demo(settings: DemoSettings) -> list[dict]:
    """Evaluate float and every (method, bits) and write results, table and plots."""
    settings.validate()
    task = settings.spec
    data = prepare_data(settings)
    needed = settings.calib_images + settings.fidelity_images
    if task.count_val(data) < needed:
        raise ValueError(f'{data} has {task.count_val(data)} val images; calib_images + '
                         f'fidelity_images = {needed} are needed')
    model = task.models[settings.model_name]
    checkpoint = variant_checkpoint(settings)
    out = output_dir(settings)
    os.makedirs(out, exist_ok=True)
    # test images loaded in this process: shutting down a Runner's persistent loader
    # worker waited out torch's 5 s join timeout every time here (a minute over the
    # demo's 13 runs); loading the small images in-process costs under a second per run
    options = dict(task.data_options(data.rstrip('/') + '/'), log_level='WARNING',
                   **{'test_dataloader.num_workers': 0,
                      'test_dataloader.persistent_workers': False}, **settings.extra)
    quant_options = dict(options, **PROTOCOLS[settings.protocol])  # the float run has none
    records, allocations, macs = [], {}, 0
    for bits in settings.bits:
        for method in settings.methods:
            quant = {'model.backbone.quant.method': method, 'model.backbone.quant.w_bits': bits,
                     'model.backbone.quant.a_bits': bits,
                     'model.backbone.quant.groups': settings.g_avg,
                     'custom_hooks.0.num_images': settings.calib_images}
            cfg = load_config(model.quant_config, dict(quant_options, **quant))
            result = run_test(cfg, checkpoint, osp.join(out, 'runs', f'{method}_w{bits}a{bits}'),
                              fidelity_images=(settings.calib_images, settings.fidelity_images))
            macs = macs or result.report.macs
            if allocation_of(result.report):
                allocations[bits] = allocation_of(result.report)
            g_avg = {'per-tensor': 1, 'repq': 1, 'upper-bound': None}.get(method, settings.g_avg)
            records.append(_record(task, method, bits, bits, g_avg, result, result.report.gbops))
            print(_one_line(records[-1], task), flush=True)
    float_result = run_test(load_config(model.float_config, options), checkpoint,
                            osp.join(out, 'runs', 'float'))
    records.insert(0, _record(task, 'float', 32, 32, None, float_result, macs * 32 * 32 / 1e9))
    _write_outputs(records, out, settings, data)
    if allocations:
        plot_groups_per_layer({f'W{b}/A{b}': allocation for b, allocation in allocations.items()},
                              osp.join(out, 'groups_per_layer.png'), settings.g_avg,
                              f'Chosen G per layer (igq), G_avg = {settings.g_avg}')
    ranges = channel_range_statistics(
        load_config(model.quant_config, dict(quant_options,
                                             **{'model.backbone.quant.method': 'igq'})),
        checkpoint, osp.join(out, 'runs', 'variation'), settings.variation_images)
    plot_channel_ranges(ranges, osp.join(out, 'channel_range_variation.png'),
                        min(settings.variation_images, task.count_val(data)))
    with open(osp.join(out, 'channel_ranges.json'), 'w') as f:
        json.dump(ranges, f, indent=2)
    return records


def _write_outputs(records: list[dict], out: str, settings: DemoSettings, data: str) -> None:
    task = settings.spec
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(records, f, indent=2)
    parts = {'backbone-neck': 'backbone and neck' if task.name == 'det'
             else 'backbone and decode head',
             'full': 'backbone, neck, RPN and RoI heads'}[settings.protocol]
    header = (f'# IGQ demo: {settings.model_name}, synthetic {task.name} val '
              f'({task.count_val(data)} images), {settings.calib_images} calibration '
              f'image(s), G_avg = {settings.g_avg}; quantized: {parts}\n\n'
              f'kl: mean KL(p_float || p_quantized) per {_KL_ITEMS[task.name]}, '
              f'feat_err: relative squared error of the neck outputs; both on val images '
              f'{settings.calib_images}..{settings.calib_images + settings.fidelity_images - 1} '
              f'(not the calibration images).\n\n')
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(header + _markdown(records, task.columns, list(task.metrics)))
    plot_metrics_by_method(records, list(task.metrics), task.metric_range,
                           osp.join(out, 'ap_by_method.png' if task.name == 'det'
                                    else 'miou_by_method.png'),
                           f'{", ".join(task.metrics)} on the synthetic val split by '
                           f'activation quantizer')
    print(format_table(records, task.columns), flush=True)  # the demo's terminal output


_KL_ITEMS = {'det': 'RoI of the float proposals', 'seg': 'pixel of the decode-head logits'}


def _one_line(record: dict, task: DemoTask) -> str:
    """The terminal line of one finished run."""
    metrics = ' '.join(f'{m} {record[m]}' for m in task.metrics)
    return (f"{record['method']} W{record['w_bits']}/A{record['a_bits']}: {metrics}, "
            f"kl {record['kl']}, feat_err {record['feat_err']}, {record['gbops']} GBOPs "
            f"(calibration {record['calib_seconds']} s, evaluation {record['eval_seconds']} s)")


def _markdown(records: list[dict], columns: list[str], metrics: list[str]) -> str:
    """The results table, with each metric's change from the float row after it."""
    reference = next((r for r in records if r['method'] == 'float'), None)
    shown = [c for column in columns
             for c in ([column, f'd_{column}'] if column in metrics and reference else [column])]
    lines = ['| ' + ' | '.join(shown) + ' |', '|' + '---|' * len(shown)]
    for r in records:
        cells = []
        for c in shown:
            if c.startswith('d_') and c[2:] in metrics:
                cells.append('-' if r is reference else f'{r[c[2:]] - reference[c[2:]]:+.4f}')
            else:
                cells.append('-' if r[c] is None else str(r[c]))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
