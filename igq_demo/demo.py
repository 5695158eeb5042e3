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

from .draws import DRAW_FREE, format_spread, significant_digits, summarize
from .evaluation import allocation_of, channel_range_statistics, load_config, run_test
from .pretrained_like import OutlierProfile, write_variant_checkpoint
from .plots import plot_channel_ranges, plot_groups_per_layer, plot_metrics_by_method
from .splits import CALIBRATION_POOL, SPLITS, calibration_pool_options, split_options
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
    calib_images: int | None = None  # None: the hook's default (the paper's pixel count)
    draws: int = 5  # independent calibration draws per (method, bits)
    split: str = 'val'  # evaluated: 'val' or 'holdout' (train images outside the pool)
    fidelity_images: int = 16  # the evaluated split's first images
    variation_images: int = 8
    protocol: str = 'backbone-neck'
    variant: str = 'plain'
    # ``--cfg-options`` of the quantized runs, applied after the demo's own keys (e.g.
    # ``model.backbone.quant.a_bits=16``: weights-only quantization)
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
        if self.calib_images is not None and (isinstance(self.calib_images, bool) or not
                                              isinstance(self.calib_images, int) or
                                              not 1 <= self.calib_images <= CALIBRATION_POOL):
            raise ValueError(f'calib_images={self.calib_images!r}: allowed are 1 to '
                             f'{CALIBRATION_POOL} (the calibration pool) or None')
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise ValueError(f'draws={self.draws!r}: need at least 1 calibration draw')
        if self.split not in SPLITS:
            raise ValueError(f'split={self.split!r}: allowed are {SPLITS}')
        if self.fidelity_images < 1:
            raise ValueError(f'fidelity_images={self.fidelity_images}: need at least 1')
        if not osp.isfile(self.checkpoint_path):
            raise FileNotFoundError(f'demo checkpoint {self.checkpoint_path!r} does not exist; '
                                    f'train it with `make demo-models` or pass --checkpoint')


def settings_error(runs: list[DemoSettings]) -> str | None:
    """The first invalid setting of ``runs`` as an ``error: ...`` line, or ``None``
    (the command lines check every run before any long work starts)."""
    try:
        for settings in runs:
            settings.validate()
    except (ValueError, FileNotFoundError) as error:
        return f'error: {error}'
    return None


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


def output_dir(settings: DemoSettings) -> str:
    """``out`` for the detection demo's first model, ``out/<task or model>`` otherwise;
    ``out/<variant>`` for a variant, ``/holdout`` for the held-out split, ``/full``
    appended for the full-detector protocol."""
    root = settings.out if settings.variant == 'plain' else osp.join(settings.out,
                                                                      settings.variant)
    root = root if settings.split == 'val' else osp.join(root, settings.split)
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
    """Evaluate float and every (method, bits, calibration draw); write the per-draw
    results, the mean ± std table and the plots. Returns the summary records."""
    settings.validate()
    task = settings.spec
    data = prepare_data(settings).rstrip('/') + '/'
    model = task.models[settings.model_name]
    checkpoint = variant_checkpoint(settings)
    out = output_dir(settings)
    os.makedirs(out, exist_ok=True)
    # test images loaded in this process: shutting down a Runner's persistent loader
    # worker waited out torch's 5 s join timeout every time here (a minute over the
    # demo's runs); loading the small images in-process costs under a second per run
    options = dict(split_options(task, data, settings.split, out), log_level='WARNING',
                   **{'test_dataloader.num_workers': 0,
                      'test_dataloader.persistent_workers': False})
    quant_options = dict(options, **PROTOCOLS[settings.protocol], **calibration_pool_options(data))
    if settings.calib_images is not None:
        quant_options['custom_hooks.0.num_images'] = settings.calib_images
    records, allocations, macs = [], {}, 0
    for bits in settings.bits:
        for method in settings.methods:
            for draw in range(1 if method in DRAW_FREE else settings.draws):
                quant = {'model.backbone.quant.method': method,
                         'model.backbone.quant.w_bits': bits,
                         'model.backbone.quant.a_bits': bits,
                         'model.backbone.quant.groups': settings.g_avg,
                         'custom_hooks.0.draw': draw}
                cfg = load_config(model.quant_config,
                                  {**quant_options, **quant, **settings.extra})
                w_bits, a_bits = cfg.model.backbone.quant.w_bits, cfg.model.backbone.quant.a_bits
                result = run_test(cfg, checkpoint,
                                  osp.join(out, 'runs', f'{method}_w{w_bits}a{a_bits}',
                                           f'draw{draw}'),
                                  fidelity_images=(0, settings.fidelity_images))
                macs = macs or result.report.macs
                if draw == 0 and allocation_of(result.report):
                    allocations[bits] = allocation_of(result.report)
                g_avg = {'per-tensor': 1, 'repq': 1, 'upper-bound': None}.get(method,
                                                                             settings.g_avg)
                records.append(_record(task, method, w_bits, a_bits, g_avg, result,
                                       result.report.gbops, draw,
                                       result.report.num_images))
                print(_one_line(records[-1], task), flush=True)
    float_result = run_test(load_config(model.float_config, options), checkpoint,
                            osp.join(out, 'runs', 'float'))
    records.insert(0, _record(task, 'float', 32, 32, None, float_result, macs * 32 * 32 / 1e9))
    summary = summarize(records, list(task.metrics))
    _write_outputs(records, summary, out, settings)
    if allocations:
        plot_groups_per_layer({f'W{b}/A{b}': allocation for b, allocation in allocations.items()},
                              osp.join(out, 'groups_per_layer.png'), settings.g_avg,
                              f'Chosen G per layer (igq, draw 0), G_avg = {settings.g_avg}')
    ranges = channel_range_statistics(
        load_config(model.quant_config, dict(quant_options,
                                             **{'model.backbone.quant.method': 'igq'})),
        checkpoint, osp.join(out, 'runs', 'variation'), settings.variation_images)
    plot_channel_ranges(ranges, osp.join(out, 'channel_range_variation.png'),
                        settings.variation_images)
    with open(osp.join(out, 'channel_ranges.json'), 'w') as f:
        json.dump(ranges, f, indent=2)
    return summary


def _record(task: DemoTask, method, w_bits, a_bits, g_avg, result, gbops, draw=None,
            calib_images=None) -> dict:
    if not result.metrics:
        # mmdet's CocoMetric returns no metrics when the model detected nothing at all
        # (it logs "The testing results of the whole dataset is empty"): mAP 0
        print_log(f'{method} W{w_bits}/A{a_bits}: no detections on the evaluated images, '
                  f'mAP 0', logger='current')
    metrics = {column: round(float(result.metrics[key] if result.metrics else 0.0), 4)
               for column, key in task.metrics.items()}
    fidelity = result.fidelity
    return dict(method=method, w_bits=w_bits, a_bits=a_bits, g_avg=g_avg, draw=draw,
                calib_images=calib_images, **metrics,
                kl=None if fidelity is None else float(f'{fidelity.kl:.4g}'),
                feat_err=None if fidelity is None else float(f'{fidelity.feature_error:.4g}'),
                gbops=round(gbops, 4), calib_seconds=round(result.calib_seconds, 2),
                eval_seconds=round(result.eval_seconds, 2))


def _write_outputs(records: list[dict], summary: list[dict], out: str,
                   settings: DemoSettings) -> None:
    task = settings.spec
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(dict(settings=_settings_record(settings), summary=summary, runs=records), f,
                  indent=2)
    parts = {'backbone-neck': 'backbone and neck' if task.name == 'det'
             else 'backbone and decode head',
             'full': 'backbone, neck, RPN and RoI heads'}[settings.protocol]
    images = next((r['calib_images'] for r in records if r.get('calib_images')), None)
    evaluated = {'val': 'val split',
                 'holdout': f'held-out train images (from {CALIBRATION_POOL} on)'}[settings.split]
    header = (f'# IGQ demo: {settings.model_name} ({settings.variant}), synthetic {task.name} '
              f'{evaluated}; quantized: {parts}; G_avg = {settings.g_avg}\n\n'
              f'Calibration: {images} train images per draw (from the first '
              f'{CALIBRATION_POOL}); every metric is the mean ± sample std over '
              f'{settings.draws} independent draws (upper-bound and float need none). '
              f'kl: mean KL(p_float || p_quantized) per {_KL_ITEMS[task.name]}, feat_err: '
              f'relative squared error of the neck outputs; both on the first '
              f'{settings.fidelity_images} evaluated images.\n\n')
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(header + _markdown(summary, task.columns, list(task.metrics),
                                   significant_digits(task.metric_range)))
    plot_metrics_by_method(summary, list(task.metrics), task.metric_range,
                           osp.join(out, 'ap_by_method.png' if task.name == 'det'
                                    else 'miou_by_method.png'),
                           f'{settings.model_name} ({settings.variant}): {", ".join(task.metrics)}'
                           f' on the {evaluated}, mean ± std over {settings.draws} draws')
    print(format_table([_table_row(r, task) for r in summary], task.columns + ['draws']),
          flush=True)  # the demo's terminal output


def _settings_record(settings: DemoSettings) -> dict:
    return dict(task=settings.task, model=settings.model_name, variant=settings.variant,
                split=settings.split, protocol=settings.protocol, draws=settings.draws,
                calib_images=settings.calib_images, g_avg=settings.g_avg,
                bits=list(settings.bits), methods=list(settings.methods))


_KL_ITEMS = {'det': 'RoI of the float proposals', 'seg': 'pixel of the decode-head logits'}


def _table_row(record: dict, task: DemoTask) -> dict:
    digits = significant_digits(task.metric_range)
    row = dict(record)
    for column in (*task.metrics, 'kl', 'feat_err'):
        spread_digits = digits if column in task.metrics else 4
        row[column] = format_spread(record[column], record.get(f'{column}_std'), spread_digits)
    return row


def _one_line(record: dict, task: DemoTask) -> str:
    """The terminal line of one finished run."""
    metrics = ' '.join(f'{m} {record[m]}' for m in task.metrics)
    draw = '' if record.get('draw') is None else f' draw {record["draw"]}'
    return (f"{record['method']} W{record['w_bits']}/A{record['a_bits']}{draw}: {metrics}, "
            f"kl {record['kl']}, feat_err {record['feat_err']}, {record['gbops']} GBOPs "
            f"(calibration {record['calib_seconds']} s, evaluation {record['eval_seconds']} s)")


def _markdown(records: list[dict], columns: list[str], metrics: list[str],
              digits: int = 3) -> str:
    """The results table: each metric as mean ± std over draws, then its change from the
    float row; kl and feat_err likewise as mean ± std."""
    reference = next((r for r in records if r['method'] == 'float'), None)
    shown = [c for column in columns
             for c in ([column, f'd_{column}'] if column in metrics and reference else [column])]
    shown.insert(shown.index('g_avg') + 1, 'draws')
    lines = ['| ' + ' | '.join(shown) + ' |', '|' + '---|' * len(shown)]
    for r in records:
        cells = []
        for c in shown:
            if c.startswith('d_') and c[2:] in metrics:
                cells.append('-' if r is reference
                             else f'{r[c[2:]] - reference[c[2:]]:+.{digits}f}')
            elif c in metrics:
                cells.append(format_spread(r[c], r.get(f'{c}_std'), digits))
            elif c in ('kl', 'feat_err'):
                cells.append(format_spread(r[c], r.get(f'{c}_std'), 4))
            elif isinstance(r.get(c), float):
                cells.append(f'{r[c]:.4g}')
            else:
                cells.append('-' if r.get(c) is None else str(r[c]))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
