#!/usr/bin/env python
"""Write the synthetic semantic-segmentation shapes dataset (mmseg folder layout).

Example:
    python tools/make_synthetic_seg.py --out data/synthetic_seg --seed 0 \\
        --num-train 400 --num-val 100 --image-size 128 --skip-if-current

See ``igq_demo.synthetic_seg`` for the layout and the labels.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

try:
    from igq_demo import synthetic_coco, synthetic_seg
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from igq_demo import synthetic_coco, synthetic_seg


def _image_size(text: str):
    try:
        return synthetic_coco.parse_image_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True,
                        help="output directory (new, empty, or made by this tool)")
    parser.add_argument("--seed", type=int, default=0, help="non-negative base seed")
    parser.add_argument("--num-train", type=int, default=400,
                        help="number of training images (>= 1)")
    parser.add_argument("--num-val", type=int, default=100,
                        help="number of validation images (>= 1)")
    parser.add_argument("--image-size", type=_image_size, default=(128, 128),
                        help="S (square) or H,W; each side in "
                             f"[{synthetic_coco.MIN_IMAGE_SIDE}, "
                             f"{synthetic_coco.MAX_IMAGE_SIDE}] (default 128)")
    parser.add_argument("--skip-if-current", action="store_true",
                        help="do nothing when --out already holds this exact dataset")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    kwargs = dict(seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                  image_size=args.image_size)
    if args.skip_if_current and synthetic_seg.dataset_is_current(args.out, **kwargs):
        print(f"{args.out}: already current, nothing to do")
        return 0
    start = time.perf_counter()
    try:
        synthetic_seg.generate_dataset(args.out, **kwargs)
    except ValueError as exc:
        parser.error(str(exc))
    import json
    with open(os.path.join(args.out, "meta.json"), encoding="utf-8") as fh:
        splits = json.load(fh)["splits"]
    height, width = args.image_size
    fg = {s: 1.0 - splits[s]["pixels"][0] / sum(splits[s]["pixels"]) for s in splits}
    print(f"{args.out}: {splits['train']['images']} train / {splits['val']['images']} val "
          f"images ({height}x{width}, seed {args.seed}; foreground "
          f"{100 * fg['train']:.1f}% / {100 * fg['val']:.1f}% of the pixels) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
