#!/usr/bin/env python
"""Does the group-size allocation earn its cost? igq vs igq-fixed on held-out images.

Calibrates the demo detector (method ``igq``) on one image of a split that is not
evaluated (default: the demo's train split), computes sensitivity tables in several
ways, allocates groups under the same BOP budget with each, and measures the output
fidelity (mean per-RoI KL on the float proposals, as in the demo) of every allocation
and of ``igq-fixed`` (G_avg everywhere) on the next --eval-images images. Prints
per-variant KL, the paired per-image comparison with igq-fixed and how many layers
changed G.

    python tools/allocation_study.py --bits 4 --eval-images 16
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

import torch

from igq_demo.tasks import DET, SEG, task_of
from igq_plugin.mm.calibration import calibrate_mm_model, take_calibration_batches
from igq_plugin.mm.evaluation import _prepared_runner, load_config
from igq_plugin.mm.predictors import build_predictor
from igq_plugin.nn import QuantState, float_run, igq_quantizers, set_quant_state
from igq_plugin.quant import QuantMode, quant_mode, set_mode
from igq_plugin.search import allocate_groups, kl_divergence, sensitivity_tables
from igq_plugin.search.bops import reference_groups
from igq_plugin.search.model_costs import model_costs


def augmented_views(batch):
    """The calibration image, its horizontal flip and two rescaled copies (-/+ 32 px)."""
    import copy
    import torch.nn.functional as F
    height = batch['inputs'].shape[-2]
    sizes = (height - 32, height + 32)
    views = [batch]
    flipped = dict(inputs=torch.flip(batch['inputs'], dims=[-1]),
                   data_samples=batch['data_samples'])
    views.append(flipped)
    for size in sizes:
        inputs = F.interpolate(batch['inputs'], size=(size, size), mode='bilinear',
                               align_corners=False)
        samples = [copy.deepcopy(s) for s in batch['data_samples']]
        for s in samples:
            s.set_metainfo(dict(img_shape=(size, size), batch_input_shape=(size, size),
                                pad_shape=(size, size)))
        views.append(dict(inputs=inputs, data_samples=samples))
    return views


def monotone(tables):
    """Each table made non-increasing in G (running minimum from G=1 upwards)."""
    out = {}
    for name, table in tables.items():
        best, row = float('inf'), {}
        for g in sorted(table):
            best = min(best, table[g])
            row[g] = best
        out[name] = row
    return out


def per_image_kl(model, predictor, reference):
    with torch.no_grad():
        outputs = predictor.predict(None)
    return [float(kl_divergence(r, o).mean()) for r, o in zip(reference, outputs)]


def context_tables(model, layers, predictor, reference, g_avg):
    """Omega_l(G) with every other layer quantized at G_avg (one full forward each)."""
    tables = {}
    costs = model_costs(layers)
    for quantizer_name, q in layers.items():
        q.set_groups(reference_groups(costs[quantizer_name], g_avg))
    with torch.no_grad(), quant_mode(model, QuantMode.QUANTIZED):
        for name, quantizer in layers.items():
            active = int(quantizer.groups)
            table = {}
            for groups in quantizer.candidates:
                quantizer.set_groups(groups)
                outputs = predictor.predict(None)
                table[groups] = float(torch.stack([kl_divergence(r, o).mean()
                                                   for r, o in zip(reference, outputs)]).mean())
            quantizer.set_groups(active)
            tables[name] = table
    return tables


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='mask-rcnn',
                        choices=sorted(DET.models) + sorted(SEG.models))
    parser.add_argument('--data', help='dataset root (default: the task\'s generated one)')
    parser.add_argument('--split', default='train')
    parser.add_argument('--bits', type=int, default=4)
    parser.add_argument('--g-avg', type=int, default=8)
    parser.add_argument('--bounds', default='envelope')
    parser.add_argument('--eval-images', type=int, default=16)
    parser.add_argument('--calib-index', type=int, nargs='+', default=[0],
                        help='calibration images to repeat the study with (each alone); the '
                             'held-out images follow the largest index')
    parser.add_argument('--search-images', type=int, default=4,
                        help='held-out images of the "other images" sensitivity variant')
    parser.add_argument('--variants', nargs='+',
                        default=['calib', 'others', 'context'])
    parser.add_argument('--out', default='work_dirs/allocation_study')
    args = parser.parse_args(argv)
    task = task_of(args.model)
    model_spec = task.models[args.model]
    root = (args.data or task.default_data).rstrip('/') + '/'
    options = dict(task.split_options(root, args.split))
    options.update({'log_level': 'WARNING', 'model.backbone.quant.method': 'igq',
                    'model.backbone.quant.w_bits': args.bits,
                    'model.backbone.quant.a_bits': args.bits,
                    'model.backbone.quant.groups': args.g_avg,
                    'model.backbone.quant.bounds': args.bounds})
    cfg = load_config(model_spec.quant_config, options)
    os.makedirs(args.out, exist_ok=True)
    runner = _prepared_runner(cfg, model_spec.checkpoint, osp.join(args.out, 'runs'))
    model = runner.model
    n_eval, n_search = args.eval_images, args.search_images
    first = max(args.calib_index) + 1
    batches = take_calibration_batches(runner.test_dataloader, first + n_eval + n_search, model)
    evals, search = batches[first:first + n_eval], batches[first + n_eval:]
    summary = {}
    for index in args.calib_index:
        summary[index] = study(model, [batches[index]], evals, search, args, parser)
    print(f'W{args.bits}/A{args.bits} G_avg {args.g_avg} bounds {args.bounds}: mean KL on '
          f'{n_eval} held-out {args.split} images, calibration image(s) {args.calib_index}')
    names = list(next(iter(summary.values())))
    for name in names:
        values = [summary[i][name] for i in args.calib_index]
        print(f'  {name:10s} ' + ' '.join(f'{v:.6f}' for v in values) +
              f'  mean {sum(values) / len(values):.6f}', flush=True)
    return 0


def study(model, calib, evals, search, args, parser):
    n_eval = len(evals)
    start = time.perf_counter()
    report = calibrate_mm_model(model, calib, progress=None)
    print(f'calibrated in {time.perf_counter() - start:.1f} s', flush=True)
    layers = igq_quantizers(model)
    with float_run(model):
        eval_predictor = build_predictor(model, evals, reuse_prefix=False)
        reference = [r.clone() for r in eval_predictor.predict(None)]
    results, allocations = {}, {}
    costs = model_costs(layers)
    fixed = {name: reference_groups(costs[name], args.g_avg) for name in layers}
    allocations['igq-fixed'] = fixed
    allocations['calib'] = dict(report.allocation)
    tables = {}
    set_quant_state(model, QuantState.CALIBRATING)
    for variant in args.variants:
        if variant == 'calib':
            continue
        start = time.perf_counter()
        set_mode(model, QuantMode.FLOAT)
        if variant == 'others':
            with float_run(model):
                predictor = build_predictor(model, search)
            tables[variant] = sensitivity_tables(model, layers, predictor)
        elif variant in ('flip', 'augment'):
            views = augmented_views(calib[0])
            views = views[:2] if variant == 'flip' else views
            with float_run(model):
                predictor = build_predictor(model, views)
            tables[variant] = sensitivity_tables(model, layers, predictor)
        elif variant == 'monotone':
            with float_run(model):
                predictor = build_predictor(model, calib)
            tables[variant] = monotone(sensitivity_tables(model, layers, predictor))
        elif variant == 'context':
            with float_run(model):
                predictor = build_predictor(model, calib, reuse_prefix=False)
                ref = [r.clone() for r in predictor.predict(None)]
            tables[variant] = context_tables(model, layers, predictor, ref, args.g_avg)
        else:
            parser.error(f'unknown variant {variant}')
        allocations[variant] = allocate_groups(layers, tables[variant], args.g_avg).groups
        print(f'{variant}: tables in {time.perf_counter() - start:.1f} s', flush=True)
    set_mode(model, QuantMode.QUANTIZED)
    set_quant_state(model, QuantState.READY)
    for name, allocation in allocations.items():
        for layer, groups in allocation.items():
            layers[layer].set_groups(groups)
        results[name] = per_image_kl(model, eval_predictor, reference)
    base = results['igq-fixed']
    for name, values in results.items():
        wins = sum(v < b for v, b in zip(values, base))
        changed = sum(allocations[name][k] != fixed[k] for k in fixed)
        print(f'  {name:10s} kl {sum(values) / len(values):.6f}  better than igq-fixed on '
              f'{wins}/{len(values)} images; {changed} layers not at G_avg', flush=True)
    with open(osp.join(args.out, f'study_w{args.bits}_calib{id(calib)}.json'), 'w') as f:
        json.dump(dict(results=results, allocations=allocations, tables=tables), f, indent=1)
    return {name: sum(v) / len(v) for name, v in results.items()}


if __name__ == '__main__':
    sys.exit(main())
