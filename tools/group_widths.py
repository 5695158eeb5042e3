#!/usr/bin/env python
"""How IGQ spends its groups: the allocated G and the group widths of every channel
quantizer in calibrated state files (``igq_state.pth`` of ``method='igq'``).

For each state, the channel quantizers are split into the post-LayerNorm inputs (names
matching ``--post-norm``: Swin / ViT ``qkv``, the MLP's first Linear, patch merging's
``reduction``) and the others. Per group it prints the mean allocated G, and how many of
those G groups are wide: a group range at least ``--wide`` times the narrowest group's of
the same quantizer (with ``bounds='envelope'`` the widest member of a group sets its
range, so a few massive channels take groups of their own rather than clip). The last two
columns measure the sign / zero-point handling: every group's range is widened to
contain 0 (so that 0 is a code), which costs a group whose range lies on one side of 0
the share ``(width with 0 - width) / width with 0`` of its codes; printed as the mean
share over groups and the groups that lose more than 10 % of their codes.

    python tools/group_widths.py \\
        plain=work_dirs/demo/pretrained-like/holdout/runs/igq_w4a4/draw0/igq_state.pth
"""
import argparse
import re
import sys

import torch

POST_NORM = r'(qkv|ffn\.layers\.0\.0|mlp\.fc1|reduction)\.input_quantizer\.$'


def group_widths(buffers: dict) -> dict[str, tuple[int, torch.Tensor, torch.Tensor]]:
    """``{quantizer prefix: (G, [G] group widths, [G] share of codes lost to 0)}`` of
    every channel IGQ quantizer."""
    found = {}
    for key in buffers:
        if not key.endswith('group_upper'):
            continue
        prefix = key[:-len('group_upper')]
        if prefix + 'candidate_groups' not in buffers or 'softmax' in prefix:
            continue
        candidates = buffers[prefix + 'candidate_groups'].tolist()
        groups = int(buffers[prefix + 'groups'])
        row = candidates.index(groups)
        lower = buffers[prefix + 'group_lower'][row, :groups]
        upper = buffers[prefix + 'group_upper'][row, :groups]
        with_zero = upper.clamp(min=0) - lower.clamp(max=0)
        lost = 1 - (upper - lower) / with_zero.clamp_min(1e-12)
        found[prefix] = (groups, (upper - lower).float(), lost.float())
    return found


def summary(found: dict, pattern: str, wide: float) -> list[dict]:
    rows = []
    for kind, select in (('post-LayerNorm inputs', True), ('other channel inputs', False)):
        parts = [(g, w, lost) for name, (g, w, lost) in found.items()
                 if bool(re.search(pattern, name)) == select]
        if not parts:
            continue
        wide_groups = [int((w >= wide * w.min().clamp_min(1e-12)).sum()) for _, w, _ in parts]
        lost = torch.cat([lost for _, _, lost in parts])
        rows.append(dict(kind=kind, layers=len(parts),
                         mean_g=sum(g for g, _, _ in parts) / len(parts),
                         mean_wide=sum(wide_groups) / len(parts),
                         max_ratio=max(float(w.max() / w.min().clamp_min(1e-12))
                                       for _, w, _ in parts),
                         mean_lost=float(lost.mean()), lossy_groups=int((lost > 0.1).sum()),
                         groups=lost.numel()))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('states', nargs='+', help='LABEL=PATH of an igq_state.pth')
    parser.add_argument('--post-norm', default=POST_NORM,
                        help='regular expression of the post-LayerNorm input quantizers')
    parser.add_argument('--wide', type=float, default=10.0,
                        help='a group is wide at this multiple of the narrowest group')
    args = parser.parse_args(argv)
    if args.wide <= 1:
        parser.error(f'--wide={args.wide}: must be above 1')
    print(f'| state | inputs | layers | mean G | groups >= {args.wide:g}x the narrowest | '
          f'widest / narrowest | codes lost to 0, mean | groups losing > 10 % |')
    print('|---|---|---|---|---|---|---|---|')
    for item in args.states:
        label, sep, path = item.partition('=')
        if not sep:
            parser.error(f'{item!r}: expected LABEL=PATH')
        state = torch.load(path, map_location='cpu', weights_only=False)
        if not isinstance(state, dict) or 'buffers' not in state:
            parser.error(f'{path} is not a state file of the calibration hook (no buffers)')
        found = group_widths(state['buffers'])
        if not found:
            parser.error(f'{path} holds no IGQ group quantizer (method igq / igq-fixed)')
        for row in summary(found, args.post_norm, args.wide):
            print(f"| {label} | {row['kind']} | {row['layers']} | {row['mean_g']:.1f} | "
                  f"{row['mean_wide']:.1f} | {row['max_ratio']:.0f}x | "
                  f"{100 * row['mean_lost']:.1f} % | {row['lossy_groups']} of "
                  f"{row['groups']} |")
    return 0


if __name__ == '__main__':
    sys.exit(main())
