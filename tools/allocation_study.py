#!/usr/bin/env python
"""Does the group-size allocation earn its cost? igq vs igq-fixed on held-out images.

For each calibration image C of a split that the demo never evaluates (default: its
train split), calibrates a demo model with ``method='igq'`` on image C alone, computes
sensitivity tables in one or more ways (--variants), allocates groups under the budget
"every layer at G_avg" with each, and measures the fidelity kl (the demo's figure: mean
KL(p_float || p_quantized) per RoI of the float proposals, or per pixel) of every
allocation and of ``igq-fixed`` (G_avg in every layer, the same BOPs) on the same
held-out images, which follow the largest C. Prints, per calibration image, each
variant's kl and on how many held-out images it beats igq-fixed, then the kl of every
variant per calibration image and their mean.

Variants of the sensitivity search:
  calib    the default: KL on the calibration image, one layer quantized at a time;
  flip     on the calibration image and its horizontal flip;
  augment  on the image, its flip and two rescaled copies (-/+ 32 px);
  others   on --search-images other images of the split;
  context  on the calibration image with every other layer quantized at G_avg;
  fisher   on the calibration image, the diagonal-Fisher estimate of the calib
           tables (--fisher-samples label draws per item);
  fisher-full  the same label draws, scored with the sampled full Fisher
           1/2 mean_s (g_s . dx)^2 (couplings kept; sensitivity='fisher-full').

For every variant other than calib (when calib runs too) it also prints the agreement
with calib's tables (mean Spearman rank correlation over the candidates, per layer kind,
on the layers calib measures) and the layers it allocates another G, and for every
variant the seconds of its search, also in float forwards of the calibration image.

    python tools/allocation_study.py --model mask-rcnn --bits 4 --eval-images 48 \\
        --calib-index 0 1 2 3 4 5 --variants calib fisher fisher-full
"""
import argparse
import copy
import json
import math
import os
import os.path as osp
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from igq_demo.evaluation import load_config, prepared_runner
from igq_demo.tasks import TASKS, task_of
from igq_plugin.mm import calibrate_mm_model, take_calibration_batches
from igq_plugin.mm import build_predictor, predict_forward
from igq_plugin.nn import QuantState, float_run, igq_quantizers, set_quant_state
from igq_plugin.quant import QuantMode, quant_mode, set_mode
from igq_plugin.search import (FISHER_ESTIMATORS, allocate_groups, check_sensitivity,
                               fisher_tables, kl_divergence, model_costs, sensitivity_tables)
from igq_plugin.search import reference_groups

VARIANTS = ('calib', 'flip', 'augment', 'others', 'context', *FISHER_ESTIMATORS)


def augmented_views(batch: dict) -> list[dict]:
    """The image, its horizontal flip and two rescaled copies (-/+ 32 px), as batches."""
    views = [batch, dict(inputs=torch.flip(batch['inputs'], dims=[-1]),
                         data_samples=batch['data_samples'])]
    height = batch['inputs'].shape[-2]
    for size in (height - 32, height + 32):
        samples = [copy.deepcopy(s) for s in batch['data_samples']]
        for sample in samples:
            sample.set_metainfo(dict(img_shape=(size, size), batch_input_shape=(size, size),
                                     pad_shape=(size, size)))
        views.append(dict(inputs=F.interpolate(batch['inputs'], size=(size, size),
                                               mode='bilinear', align_corners=False),
                          data_samples=samples))
    return views


def per_image_kl(predictor, reference) -> list[float]:
    """Mean KL per image of the model (in its current mode) against ``reference``."""
    with torch.no_grad():
        outputs = predictor.predict(None)
    return [float(kl_divergence(r, o).mean()) for r, o in zip(reference, outputs)]


def context_tables(model, layers, predictor, g_avg):
    """Omega_l(G) with every other layer quantized at G_avg (one full forward each)."""
    with float_run(model):
        reference = [r.clone() for r in predictor.predict(None)]
    costs = model_costs(layers)
    for name, quantizer in layers.items():
        quantizer.set_groups(reference_groups(costs[name], g_avg))
    tables = {}
    with torch.no_grad(), quant_mode(model, QuantMode.QUANTIZED):
        for name, quantizer in layers.items():
            active, tables[name] = int(quantizer.groups), {}
            for groups in quantizer.candidates:
                quantizer.set_groups(groups)
                tables[name][groups] = sum(per_image_kl(predictor, reference)) / len(reference)
            quantizer.set_groups(active)
    return tables


def variant_tables(variant, model, layers, calib, search, args):
    """The sensitivity tables of one search variant (the model in ``CALIBRATING``)."""
    if variant in FISHER_ESTIMATORS:
        with float_run(model):
            predictor = build_predictor(model, calib)
        return fisher_tables(model, layers, predictor, args.fisher_samples,
                             full=variant == 'fisher-full')
    if variant == 'context':
        with float_run(model):
            predictor = build_predictor(model, calib, reuse_prefix=False)
        return context_tables(model, layers, predictor, args.g_avg)
    images = {'calib': calib, 'flip': augmented_views(calib[0])[:2],
              'augment': augmented_views(calib[0]), 'others': search}[variant]
    with float_run(model):
        predictor = build_predictor(model, images)
    return sensitivity_tables(model, layers, predictor)


def study(model, calib, evals, search, args) -> dict:
    """igq-fixed and every variant's allocation, calibrated on ``calib``, measured on
    ``evals``: ``{name: dict(kl=[per image], allocation={layer: G})}``."""
    calibrate_mm_model(model, calib, progress=None)
    layers = igq_quantizers(model)
    costs = model_costs(layers)
    allocations = {'igq-fixed': {n: reference_groups(costs[n], args.g_avg) for n in layers}}
    set_quant_state(model, QuantState.CALIBRATING)  # float runs of single layers follow
    set_mode(model, QuantMode.FLOAT)
    searches = {}
    for variant in args.variants:
        start = time.perf_counter()
        tables = variant_tables(variant, model, layers, calib, search, args)
        searches[variant] = dict(seconds=time.perf_counter() - start, tables=tables)
        allocations[variant] = allocate_groups(layers, tables, args.g_avg).groups
    set_mode(model, QuantMode.QUANTIZED)
    set_quant_state(model, QuantState.READY)
    with float_run(model):
        predictor = build_predictor(model, evals, reuse_prefix=False)
        reference = [r.clone() for r in predictor.predict(None)]
    results = {}
    for name, allocation in allocations.items():
        for layer, groups in allocation.items():
            layers[layer].set_groups(groups)
        results[name] = dict(kl=per_image_kl(predictor, reference), allocation=allocation,
                             **searches.get(name, {}))
    return results


def float_forward_seconds(model, batch, repeats=3) -> float:
    """The unit of search cost: the fastest of ``repeats`` float test forwards of ``batch``."""
    times = []
    with float_run(model), torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            predict_forward(model, batch)
            times.append(time.perf_counter() - start)
    return min(times)


def layer_kind(name: str) -> str:
    """What a quantizer's layer is, for the per-kind summaries."""
    if name.endswith('softmax.quantizer'):
        return 'softmax'
    if name.endswith(('_quantizer.q', '_quantizer.k', '_quantizer.v')):
        return 'q/k/v'
    part = name.split('.')[0]
    for key, kind in (('qkv.input', 'qkv input'), ('in_proj_input', 'qkv input'),
                      ('proj.input', 'attn proj input'), ('ffn.layers.0', 'ffn fc1 input'),
                      ('ffn.layers.1', 'ffn fc2 input'), ('downsample', 'patch merging')):
        if key in name:
            return f'{part} {kind}'
    return part


def compare_tables(exact: dict, other: dict, exact_groups: dict, other_groups: dict):
    """Per layer kind, the mean Spearman rank correlation of ``other``'s tables with
    ``exact``'s over the candidates (layers whose exact table is not constant), and
    the layers whose allocated G differs: ``({kind: (mean, layers)}, [layers])``."""
    from scipy.stats import spearmanr
    per_kind = defaultdict(list)
    for name, table in exact.items():
        groups = sorted(table)
        values = [table[g] for g in groups]
        if len(set(values)) == 1:
            continue
        others = [other[name][g] for g in groups]
        rho = float('nan') if len(set(others)) == 1 else spearmanr(values, others)[0]
        per_kind[layer_kind(name)].append(rho)
        per_kind['all'].append(rho)
    summary = {kind: (sum(v) / len(v), len(v)) for kind, v in per_kind.items()}
    return summary, sorted(n for n in exact_groups if exact_groups[n] != other_groups[n])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='mask-rcnn',
                        choices=sorted(m for task in TASKS.values() for m in task.models))
    parser.add_argument('--data', help="dataset root (default: the model's demo dataset)")
    parser.add_argument('--split', default='train')
    parser.add_argument('--bits', type=int, default=4)
    parser.add_argument('--g-avg', type=int, default=8)
    parser.add_argument('--bounds', default='envelope')
    parser.add_argument('--calib-index', type=int, nargs='+', default=[0],
                        help='calibration images, each used alone')
    parser.add_argument('--eval-images', type=int, default=16,
                        help='held-out images, after the largest calibration index')
    parser.add_argument('--search-images', type=int, default=4,
                        help='images of the "others" variant, after the held-out ones')
    parser.add_argument('--variants', nargs='+', default=['calib'], choices=VARIANTS)
    parser.add_argument('--fisher-samples', type=int, default=None,
                        help='label draws per item of the fisher and fisher-full variants '
                             '(default: each estimator\'s, 4 and 16)')
    parser.add_argument('--out', default='work_dirs/allocation_study')
    args = parser.parse_args(argv)
    for variant in set(args.variants) & set(FISHER_ESTIMATORS):  # before the set-up
        check_sensitivity(variant, args.fisher_samples)
    task = task_of(args.model)
    spec = task.models[args.model]
    root = (args.data or task.default_data).rstrip('/') + '/'
    options = dict(task.split_options(root, args.split))
    options.update({'log_level': 'WARNING', 'model.backbone.quant.method': 'igq',
                    'model.backbone.quant.w_bits': args.bits,
                    'model.backbone.quant.a_bits': args.bits,
                    'model.backbone.quant.groups': args.g_avg,
                    'model.backbone.quant.bounds': args.bounds})
    os.makedirs(args.out, exist_ok=True)
    runner = prepared_runner(load_config(spec.quant_config, options), spec.checkpoint,
                             osp.join(args.out, 'runs'))
    model = runner.model
    first = max(args.calib_index) + 1
    batches = take_calibration_batches(runner.test_dataloader,
                                       first + args.eval_images + args.search_images, model)
    evals = batches[first:first + args.eval_images]
    search = batches[first + args.eval_images:]
    summary = {}
    for index in args.calib_index:
        results = study(model, [batches[index]], evals, search, args)
        unit = float_forward_seconds(model, batches[index])
        base = results['igq-fixed']['kl']
        for name, result in results.items():
            kl = result['kl']
            wins = sum(v < b for v, b in zip(kl, base))
            print(f'calibration image {index}: {name:11s} kl {sum(kl) / len(kl):.6f}, below '
                  f'igq-fixed on {wins}/{len(kl)} held-out images', flush=True)
        for name in args.variants:
            result = results[name]
            result['float_forward_seconds'] = unit
            print(f'calibration image {index}: {name:11s} search {result["seconds"]:.2f} s = '
                  f'{result["seconds"] / unit:.1f} float forwards ({unit * 1e3:.1f} ms each)')
            if name == 'calib' or 'calib' not in results:
                continue
            kinds, changed = compare_tables(results['calib']['tables'], result['tables'],
                                            results['calib']['allocation'],
                                            result['allocation'])
            result.update(spearman=kinds, changed=changed)
            print(f'calibration image {index}: {name:11s} vs calib: another G in '
                  f'{len(changed)}/{len(result["allocation"])} layers; Spearman over the '
                  f'candidates: ' + ', '.join(f'{kind} {rho:.2f} ({count})' for kind, (rho, count)
                                              in sorted(kinds.items())), flush=True)
        summary[index] = {name: sum(r['kl']) / len(r['kl']) for name, r in results.items()}
        with open(osp.join(args.out, f'study_w{args.bits}_calib{index}.json'), 'w') as f:
            json.dump(results, f, indent=1)
    print(f'W{args.bits}/A{args.bits} G_avg {args.g_avg}, bounds {args.bounds}: mean kl on '
          f'{args.eval_images} held-out {args.split} images, calibration images '
          f'{args.calib_index}')
    for name in summary[args.calib_index[0]]:
        values = [summary[i][name] for i in args.calib_index]
        print(f'  {name:11s} ' + ' '.join(f'{v:.6f}' for v in values) +
              f'  mean {sum(values) / len(values):.6f}')
    if 'calib' in summary[args.calib_index[0]]:  # paired with the exact search, image by image
        for name in summary[args.calib_index[0]]:
            if name == 'calib':
                continue
            pairs = [(summary[i][name], summary[i]['calib']) for i in args.calib_index]
            ratio = sum(math.log(v / c) for v, c in pairs) / len(pairs)
            print(f'  {name:11s} vs calib: kl at most calib\'s on '
                  f'{sum(v <= c for v, c in pairs)}/{len(pairs)} calibration images, mean log '
                  f'ratio {100 * ratio:+.2f} %')
    with open(osp.join(args.out, f'summary_w{args.bits}.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
