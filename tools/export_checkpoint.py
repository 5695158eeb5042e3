#!/usr/bin/env python
"""Export a trained mmengine checkpoint as a small float16 ``state_dict`` file.

    python tools/export_checkpoint.py work_dirs/demo_models/mask-rcnn/epoch_12.pth \
        demo_models/mask-rcnn_swin-demo.pth

Keeps only the weights (no optimizer or message hub), stored as float16 to halve the
size; mmengine loads them into the float32 model. Prints the file's sha256.
"""
import argparse
import hashlib
import os
import os.path as osp
import sys

import torch

from igq_plugin.mm.checkpoint import load_local_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoint')
    parser.add_argument('output')
    args = parser.parse_args(argv)
    if not osp.isfile(args.checkpoint):
        print(f'error: checkpoint {args.checkpoint!r} does not exist', file=sys.stderr)
        return 2
    state = load_local_checkpoint(args.checkpoint, map_location='cpu')
    weights = state.get('state_dict', state)
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    os.makedirs(osp.dirname(args.output) or '.', exist_ok=True)
    torch.save(dict(state_dict=half, meta=dict(source=osp.basename(args.checkpoint))),
               args.output)
    digest = hashlib.sha256(open(args.output, 'rb').read()).hexdigest()
    print(f'{digest}  {args.output}  ({osp.getsize(args.output) / 2**20:.1f} MiB)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
