#!/usr/bin/env python
"""Group bounds (envelope, mean, mse) on synthetic tensors with instance-varying outliers.

Generates seeded ViT-like activations ``[1, T, C]`` per instance: every channel has a
base scale that moves from instance to instance, a few outlier channels are much wider
and their width varies strongly between instances, and some instances carry a few
tokens with very large values in the outlier channels (as ViT's "massive activations"
do); and softmax maps whose sharpness varies per head and instance. Calibrates an IGQ
quantizer with each ``bounds`` option on the first --calib-instances instances and
reports the relative squared error ``||q(x) - x||^2 / ||x||^2`` on --test-instances new
ones, per bit-width and G. Needs only the core (torch).

    python tools/bounds_study.py --bits 4 6 --groups 1 4 8 12 16
"""
import argparse
import json
import sys

import torch

from igq_plugin.quant import quant_mode
from igq_plugin.quantizers import GROUP_BOUNDS, IGQQuantizer


def channel_instances(count: int, seed: int, tokens: int = 196, channels: int = 192,
                      outliers: int = 12) -> list[torch.Tensor]:
    """``count`` activations ``[1, T, C]`` with instance-varying (outlier) channel ranges."""
    structure = torch.Generator().manual_seed(0)  # the same "layer" for every seed
    base = torch.rand(channels, generator=structure) * 0.8 + 0.2
    outlier = torch.randperm(channels, generator=structure)[:outliers]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        scale = base * torch.exp(0.3 * torch.randn(channels, generator=gen))
        scale[outlier] *= 8 * torch.exp(0.7 * torch.randn(outliers, generator=gen))
        x = torch.randn(1, tokens, channels, generator=gen) * scale
        if bool(torch.rand((), generator=gen) < 0.5):  # a few massive tokens
            rows = torch.randint(0, tokens, (3,), generator=gen)
            x[0, rows[:, None], outlier[None]] *= 6
        out.append(x)
    return out


def softmax_instances(count: int, seed: int, heads: int = 6, tokens: int = 49
                      ) -> list[torch.Tensor]:
    """``count`` attention maps ``[heads, T, T]`` whose sharpness varies per head and map."""
    gen = torch.Generator().manual_seed(seed)
    maps = []
    for _ in range(count):
        temperature = torch.exp(torch.randn(heads, 1, 1, generator=gen) * 0.8) * 2
        maps.append(torch.softmax(torch.randn(heads, tokens, tokens, generator=gen)
                                  * temperature, dim=-1))
    return maps


def relative_error(quantizer: IGQQuantizer, tensors: list[torch.Tensor]) -> float:
    with quant_mode(quantizer, 'quantized'):
        error = sum(float((quantizer(x) - x).pow(2).sum()) for x in tensors)
    return error / sum(float(x.pow(2).sum()) for x in tensors)


def study(bits: int, groups: int, bounds: str, kind: str, calib: list[torch.Tensor],
          test: list[torch.Tensor]) -> float:
    channels = calib[0].shape[-1] if kind == 'channel' else None
    quantizer = IGQQuantizer(bits, channels, kind=kind, groups=groups, bounds=bounds)
    with quant_mode(quantizer, 'calibrate'):
        for x in calib:
            quantizer(x)
    quantizer.finalize()
    return relative_error(quantizer, test)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--bits', type=int, nargs='+', default=[4, 6])
    parser.add_argument('--groups', type=int, nargs='+', default=[1, 4, 8, 12, 16])
    parser.add_argument('--calib-instances', type=int, nargs='+', default=[1, 4])
    parser.add_argument('--test-instances', type=int, default=64)
    parser.add_argument('--out', help='write the rows as JSON here')
    args = parser.parse_args(argv)
    generators = {'channel': channel_instances, 'softmax': softmax_instances}
    rows = []
    print('kind     calib  bits  G   ' + '  '.join(f'{b:>9s}' for b in GROUP_BOUNDS))
    for kind, make in generators.items():
        test = make(args.test_instances, seed=1000)
        for count in args.calib_instances:
            calib = make(count, seed=1)
            for bits in args.bits:
                for groups in args.groups:
                    errors = {b: study(bits, groups, b, kind, calib, test)
                              for b in GROUP_BOUNDS}
                    rows.append(dict(kind=kind, calib_instances=count, bits=bits,
                                     groups=groups, **errors))
                    best = min(errors, key=errors.get)
                    print(f'{kind:8s} {count:5d} {bits:5d} {groups:3d}  ' + '  '.join(
                        f'{errors[b]:9.5f}' for b in GROUP_BOUNDS) + f'  best {best}',
                        flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
