"""Deterministic synthetic semantic-segmentation dataset (mmseg folder layout).

The images are exactly those of :mod:`igq_demo.synthetic_coco` (same generator,
same per-image random streams, same JPEG encoding): 1-4 geometric objects of the
six kinds of :data:`igq_demo.synthetic_coco.CLASSES` drawn over photographic
backgrounds, with per-image exposure / contrast / colour changes. For a given
``(seed, image_size)`` image ``NNNNNN.jpg`` of a split here is byte-identical to
the same file of the COCO dataset.

The label map of an image paints the visible (occlusion-reduced) instance masks
that :func:`igq_demo.synthetic_coco.generate_image` returns, in drawing order, with
the class index of the object's shape: ``0`` background, ``1..6`` the classes in the
order of :data:`CLASSES` (``SEG_CLASSES[i]`` names label ``i``). The visible masks
never overlap, so the drawing order only matters as documented behaviour: a later
(occluding) object wins. ``255`` (mmseg's ignore index) is never written.

Caveat: ``synthetic_coco`` drops the annotation of an object whose visible remainder
is under :data:`igq_demo.synthetic_coco.MIN_AREA` pixels; such a remainder would
be labelled background here. With the default arguments this never happens (no
object of 300 images of seed 0, at 128 or 192 pixels, was dropped).

Layout written by :func:`generate_dataset` (what mmseg's ``BaseSegDataset`` reads
with ``img_suffix='.jpg'``, ``seg_map_suffix='.png'``)::

    out_dir/
        img_dir/train/000001.jpg ...     RGB, JPEG quality 92
        img_dir/val/000001.jpg ...
        ann_dir/train/000001.png ...     uint8 mode "L" label maps
        ann_dir/val/000001.png ...
        meta.json

Output is a pure function of ``(seed, num_train, num_val, image_size)`` (and of the
installed numpy / scikit-image / Pillow versions).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from igq_demo import synthetic_coco
from igq_demo.synthetic_coco import ImageSize, parse_image_size

__all__ = [
    "CLASSES",
    "SEG_CLASSES",
    "PALETTE",
    "FORMAT_VERSION",
    "IGNORE_INDEX",
    "generate_image",
    "label_map",
    "generate_split",
    "generate_dataset",
    "dataset_is_current",
]

#: Object classes (label ``i + 1`` is ``CLASSES[i]``), those of synthetic_coco.
CLASSES: Tuple[str, ...] = synthetic_coco.CLASSES

#: Names of the label values ``0 .. len(CLASSES)``: background first.
SEG_CLASSES: Tuple[str, ...] = ("background",) + CLASSES

#: RGB colour of every label value (for mmseg's visualiser / ``METAINFO``).
PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
    (245, 130, 48), (145, 30, 180))

#: mmseg's ignore index; not written by this generator.
IGNORE_INDEX = 255

#: Bumped whenever the output changes for the same arguments.
FORMAT_VERSION = 1

_GENERATOR = "igq_demo.synthetic_seg"
_SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}  # the same streams as synthetic_coco
_IMAGE_EXT = ".jpg"
_LABEL_EXT = ".png"
_JPEG_QUALITY = 92  # synthetic_coco's
_NAME_RE = re.compile(r"^\d{6}\.(jpg|png)$")

assert len(PALETTE) == len(SEG_CLASSES)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # Same seeding as synthetic_coco._image_rng: identical images for a seed.
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])


def label_map(annotations: Sequence[Dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Semantic label map of one image's instance annotations.

    Args:
        annotations: ``synthetic_coco.generate_image`` annotations in drawing order
            (``category_id`` 1-based, ``segmentation`` compressed RLE).
        height, width: Image size.

    Returns:
        uint8 ``(height, width)``: ``0`` background, else the ``category_id`` of the
        last-drawn annotation covering the pixel.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    for ann in annotations:
        rle = dict(ann["segmentation"])
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
        mask = mask_utils.decode(rle).astype(bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask of shape {mask.shape} in a {height}x{width} image")
        cat = int(ann["category_id"])
        if not 1 <= cat <= len(CLASSES):
            raise ValueError(f"category_id {cat} outside 1..{len(CLASSES)}")
        label[mask] = cat  # later objects occlude earlier ones
    return label


def generate_image(rng: np.random.Generator, image_size: ImageSize
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic image and its label map.

    Args:
        rng: Random generator (consumed exactly as by
            ``synthetic_coco.generate_image``).
        image_size: See :func:`igq_demo.synthetic_coco.parse_image_size`.

    Returns:
        ``(image, label)``: uint8 RGB ``(H, W, 3)`` (before JPEG encoding) and uint8
        ``(H, W)`` with values in ``0 .. len(CLASSES)``.
    """
    height, width = parse_image_size(image_size)
    image, anns = synthetic_coco.generate_image(rng, (height, width))
    return image, label_map(anns, height, width)


def _encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _encode_png(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def generate_split(seed: int, split: str, num_images: int, image_size: ImageSize,
                   img_dir: Optional[str] = None, ann_dir: Optional[str] = None
                   ) -> Dict[str, Any]:
    """Generate one split; optionally write its images and label maps.

    Args:
        seed: Non-negative base seed.
        split: ``"train"`` or ``"val"``.
        num_images: Number of images (>= 1).
        image_size: See :func:`igq_demo.synthetic_coco.parse_image_size`.
        img_dir, ann_dir: When given, ``NNNNNN.jpg`` / ``NNNNNN.png`` are written
            there (numbered from 1).

    Returns:
        Dict with ``files`` (names without extension), ``pixels`` (per-label pixel
        counts, a list of ``len(SEG_CLASSES)`` ints) and ``sha256`` (of all label
        PNG and image JPEG bytes, in order).
    """
    seed = synthetic_coco._check_seed(seed)
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    num_images = synthetic_coco._check_count("num_images", num_images)
    height, width = parse_image_size(image_size)
    digest = hashlib.sha256()
    pixels = np.zeros(len(SEG_CLASSES), dtype=np.int64)
    files: List[str] = []
    for index in range(num_images):
        stem = f"{index + 1:06d}"
        image, label = generate_image(_image_rng(seed, split, index), (height, width))
        jpg, png = _encode_jpeg(image), _encode_png(label)
        digest.update(jpg)
        digest.update(png)
        pixels += np.bincount(label.ravel(), minlength=len(SEG_CLASSES))[:len(SEG_CLASSES)]
        if img_dir is not None:
            with open(os.path.join(img_dir, stem + _IMAGE_EXT), "wb") as fh:
                fh.write(jpg)
        if ann_dir is not None:
            with open(os.path.join(ann_dir, stem + _LABEL_EXT), "wb") as fh:
                fh.write(png)
        files.append(stem)
    return {"files": files, "pixels": [int(p) for p in pixels], "sha256": digest.hexdigest()}


def _read_meta(out_dir: str) -> Optional[Dict[str, Any]]:
    return synthetic_coco._read_meta(out_dir, _GENERATOR)


def _prepare_out_dir(out_dir: str) -> None:
    synthetic_coco._prepare_out_dir(out_dir, _GENERATOR)


def _split_dirs(out_dir: str, split: str) -> Tuple[str, str]:
    return (os.path.join(out_dir, "img_dir", split), os.path.join(out_dir, "ann_dir", split))


def _split_digest(img_dir: str, ann_dir: str, files: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for stem in files:
        for path in (os.path.join(img_dir, stem + _IMAGE_EXT),
                     os.path.join(ann_dir, stem + _LABEL_EXT)):
            with open(path, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()


def generate_dataset(out_dir: str, seed: int = 0, num_train: int = 400,
                     num_val: int = 100, image_size: ImageSize = (128, 128)
                     ) -> Dict[str, str]:
    """Write the dataset (images, label maps, ``meta.json``) to ``out_dir``.

    ``out_dir`` must be new, empty, or written before by this function (it is then
    overwritten; stale ``NNNNNN.jpg|png`` files are removed). ``meta.json`` is
    written last, so an interrupted run is never reported current.

    Args:
        out_dir: Output directory.
        seed: Non-negative base seed.
        num_train, num_val: Number of images per split (>= 1).
        image_size: ``(height, width)``, one int, or ``"H,W"``.

    Returns:
        Paths: ``root``, ``meta`` and ``{train,val}_{img,ann}_dir``.

    Raises:
        ValueError: On invalid arguments or an unusable ``out_dir``.
    """
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise ValueError(f"out_dir must be a non-empty path, got {out_dir!r}")
    out_dir = os.fspath(out_dir)
    args = synthetic_coco._normalise_args(seed, num_train, num_val, image_size)
    _prepare_out_dir(out_dir)
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)
    paths = {"root": out_dir, "meta": meta_path}
    splits: Dict[str, Any] = {}
    for split in _SPLITS:
        img_dir, ann_dir = _split_dirs(out_dir, split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        info = generate_split(args["seed"], split, args[f"num_{split}"], args["image_size"],
                              img_dir=img_dir, ann_dir=ann_dir)
        keep = set(info["files"])
        for folder in (img_dir, ann_dir):
            for name in sorted(os.listdir(folder)):
                if _NAME_RE.match(name) and name[:6] not in keep:
                    os.remove(os.path.join(folder, name))
        splits[split] = {"images": len(info["files"]), "pixels": info["pixels"],
                         "sha256": info["sha256"]}
        paths[f"{split}_img_dir"] = img_dir
        paths[f"{split}_ann_dir"] = ann_dir

    import PIL
    import skimage
    meta = {
        "generator": _GENERATOR,
        "format_version": FORMAT_VERSION,
        "coco_format_version": synthetic_coco.FORMAT_VERSION,
        "args": args,
        "classes": list(SEG_CLASSES),
        "palette": [list(c) for c in PALETTE],
        "splits": splits,
        "versions": {"numpy": np.__version__, "scikit-image": skimage.__version__,
                     "pillow": PIL.__version__},
    }
    tmp = meta_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, meta_path)
    return paths


def dataset_is_current(out_dir: str, seed: int = 0, num_train: int = 400,
                       num_val: int = 100, image_size: ImageSize = (128, 128)) -> bool:
    """Whether ``out_dir`` holds a complete dataset made with these arguments.

    Checks ``meta.json`` (generator, format versions, arguments, classes) and the
    sha256 of every split's image and label bytes. Invalid arguments give ``False``.
    """
    try:
        args = synthetic_coco._normalise_args(seed, num_train, num_val, image_size)
    except ValueError:
        return False
    out_dir = os.fspath(out_dir)
    meta = _read_meta(out_dir)
    if (meta is None or meta.get("format_version") != FORMAT_VERSION
            or meta.get("coco_format_version") != synthetic_coco.FORMAT_VERSION
            or meta.get("args") != args or meta.get("classes") != list(SEG_CLASSES)):
        return False
    try:
        for split in _SPLITS:
            info = meta["splits"][split]
            if info["images"] != args[f"num_{split}"]:
                return False
            files = [f"{i + 1:06d}" for i in range(info["images"])]
            if _split_digest(*_split_dirs(out_dir, split), files) != info["sha256"]:
                return False
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True
