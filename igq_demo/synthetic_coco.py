"""Deterministic synthetic COCO-format instance-segmentation dataset.

Every image is a cluttered, photographic background (random crops of the
photographs shipped with scikit-image, tinted, re-lit and mixed with procedural
gradients and noise, at half their contrast) on which 1-4 geometric objects are drawn. The object's
shape alone decides its class: fill colours, shading, textures, outlines and
drop shadows are randomised per object. Objects have different sizes (about 15%
to 50% of the shorter image side), aspect ratios and rotations, may be cut by
the image border, and overlap: an object drawn later occludes the ones drawn
before it, and the earlier objects' masks are reduced accordingly. Finally a
per-image global photometric transform (contrast, brightness, per-channel
gains / colour cast, gamma, desaturation, blur, sensor noise) makes the
channel statistics (and therefore network activation ranges) vary strongly
from image to image.

Annotations are standard COCO ``instances`` json files with compressed-RLE
segmentations (``counts`` is a str), ``bbox`` ``[x, y, w, h]`` and ``area``
computed from the visible mask, ``iscrowd`` 0 and categories numbered from 1 in
the order of :data:`CLASSES`. They load with ``pycocotools.coco.COCO`` and with
MMDetection's ``CocoDataset`` (``metainfo=dict(classes=CLASSES)``).

Layout written by :func:`generate_dataset`::

    out_dir/
        annotations/instances_train.json
        annotations/instances_val.json
        train/000001.jpg ...
        val/000001.jpg ...
        meta.json

Output is a pure function of ``(seed, num_train, num_val, image_size)`` (and of
the installed numpy / scikit-image / Pillow versions): every image uses its own
random generator seeded from ``(seed, split, index)``, so the training split
does not depend on the number of validation images and vice versa.

This module only depends on numpy, scipy, Pillow, scikit-image and pycocotools.
"""
from __future__ import annotations

import colorsys
import functools
import hashlib
import json
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

__all__ = [
    "CLASSES",
    "FORMAT_VERSION",
    "MIN_IMAGE_SIDE",
    "MAX_IMAGE_SIDE",
    "MIN_AREA",
    "parse_image_size",
    "generate_image",
    "generate_split",
    "generate_dataset",
    "dataset_is_current",
    "available_backgrounds",
]

#: Class names; category ids are ``CLASSES.index(name) + 1``.
CLASSES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "bar")

#: Bumped whenever the generator's output changes for the same arguments.
FORMAT_VERSION = 2

#: Allowed range (inclusive) of the image height and width, in pixels.
MIN_IMAGE_SIDE = 64
MAX_IMAGE_SIDE = 2048

#: Visible remainders of objects smaller than this many pixels are dropped.
MIN_AREA = 30

#: Object size (longest unrotated extent) as a fraction of the shorter side.
SIZE_RANGE = (0.15, 0.5)

#: An object may be occluded down to this fraction of its in-image area.
MIN_VISIBLE_FRACTION = 0.3

_GENERATOR = "igq_demo.synthetic_coco"
_SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}
_IMAGE_EXT = ".jpg"
_JPEG_QUALITY = 92
_IMAGE_NAME_RE = re.compile(r"^\d{6}\.jpg$")
_SUPERSAMPLE = 2
# Minimum RGB distance between an object's main colour and the mean of what lies
# underneath it (keeps objects visible without making colour a class cue).
_MIN_COLOUR_DISTANCE = 0.45

# Photographs / textures of skimage.data that ship with the wheel (no network).
# ``coins`` is used as an object texture only: as a background its many
# unlabelled round objects would be label noise for ``circle``.
_PHOTO_NAMES = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "brick",
    "grass", "gravel", "moon", "hubble_deep_field", "immunohistochemistry",
    "retina", "cell", "clock", "text", "page",
)
_TEXTURE_NAMES = ("brick", "grass", "gravel", "moon", "coins", "camera", "cell")

ImageSize = Union[int, str, Sequence[int]]


# --------------------------------------------------------------------------- #
# Argument validation
# --------------------------------------------------------------------------- #
def parse_image_size(image_size: ImageSize) -> Tuple[int, int]:
    """Normalise an image size argument to ``(height, width)``.

    Args:
        image_size: One int (square image), a ``(height, width)`` pair, or a
            string ``"S"``, ``"H,W"`` or ``"HxW"``.

    Returns:
        ``(height, width)`` as Python ints.

    Raises:
        ValueError: If the value cannot be parsed or a side is outside
            ``[MIN_IMAGE_SIDE, MAX_IMAGE_SIDE]``.
    """
    original = image_size
    if isinstance(image_size, str):
        parts = [p.strip() for p in re.split(r"[,xX]", image_size.strip())]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ValueError(
                f"image_size {original!r} is not an int or 'H,W' pair of ints"
            ) from None
    elif isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        values = [int(image_size)]
    else:
        try:
            values = list(image_size)  # type: ignore[arg-type]
        except TypeError:
            raise ValueError(
                f"image_size {original!r} is not an int or (height, width) pair"
            ) from None
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                   for v in values):
            raise ValueError(
                f"image_size {original!r} must contain ints, got {values!r}"
            )
        values = [int(v) for v in values]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(
            f"image_size {original!r} must be one int or a (height, width) pair"
        )
    for v in values:
        if not MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE:
            raise ValueError(
                f"image_size {original!r}: side {v} is outside the allowed range "
                f"[{MIN_IMAGE_SIDE}, {MAX_IMAGE_SIDE}]"
            )
    return values[0], values[1]


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _normalise_args(seed: Any, num_train: Any, num_val: Any,
                    image_size: ImageSize) -> Dict[str, Any]:
    height, width = parse_image_size(image_size)
    return {
        "seed": _check_seed(seed),
        "num_train": _check_count("num_train", num_train),
        "num_val": _check_count("num_val", num_val),
        "image_size": [height, width],
    }


# --------------------------------------------------------------------------- #
# Background sources
# --------------------------------------------------------------------------- #
@functools.lru_cache(maxsize=1)
def _load_sources() -> Tuple[Tuple[Tuple[str, Image.Image], ...],
                             Tuple[Tuple[str, np.ndarray], ...]]:
    """Load the scikit-image photographs once per process.

    Returns:
        ``(photos, textures)``: photos are ``(name, PIL RGB or L image)``
        pairs; textures are ``(name, float32 array (h, w))`` with mean 1.
    """
    import skimage.data as skdata  # local: keep module import cheap

    photos: List[Tuple[str, Image.Image]] = []
    textures: List[Tuple[str, np.ndarray]] = []
    for name in dict.fromkeys(_PHOTO_NAMES + _TEXTURE_NAMES):
        try:
            arr = np.asarray(getattr(skdata, name)())
        except Exception:  # missing in this version / needs a download
            continue
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 64:
            continue
        if arr.ndim == 3:
            arr = arr[..., :3]
            pil = Image.fromarray(np.ascontiguousarray(arr), mode="RGB")
        else:
            pil = Image.fromarray(arr, mode="L")
        if name in _PHOTO_NAMES:
            photos.append((name, pil))
        if name in _TEXTURE_NAMES:
            gray = arr.astype(np.float32)
            if gray.ndim == 3:
                gray = gray.mean(axis=2)
            # Keep only the local structure: divide by a heavy blur.
            low = ndimage.uniform_filter(gray, size=31) + 8.0
            tex = gray / low
            tex /= max(float(tex.mean()), 1e-6)
            textures.append((name, tex.astype(np.float32)))
    return tuple(photos), tuple(textures)


def available_backgrounds() -> Tuple[str, ...]:
    """Names of the ``skimage.data`` photographs usable as backgrounds here."""
    return tuple(name for name, _ in _load_sources()[0])


def _resize_float(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float array ``(h, w)`` or ``(h, w, c)``."""
    if arr.ndim == 2:
        return np.asarray(
            Image.fromarray(arr.astype(np.float32), mode="F").resize(
                (width, height), Image.BILINEAR), dtype=np.float32)
    return np.stack([_resize_float(arr[..., c], height, width)
                     for c in range(arr.shape[2])], axis=-1)


def _photo_crop(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random crop of a random photograph, rescaled and tinted.

    Returns:
        float32 array ``(height, width, 3)`` in ``[0, 1]`` (before clipping).
    """
    photos, _ = _load_sources()
    if not photos:
        return np.full((height, width, 3), rng.uniform(0.2, 0.8), np.float32)
    _, pil = photos[int(rng.integers(len(photos)))]
    pw, ph = pil.size
    aspect = width / height
    frac = rng.uniform(0.3, 1.0)
    ch = frac * min(ph, pw / aspect)
    cw = ch * aspect
    x0 = rng.uniform(0.0, pw - cw)
    y0 = rng.uniform(0.0, ph - ch)
    crop = pil.resize((width, height), Image.BILINEAR,
                      box=(x0, y0, x0 + cw, y0 + ch))
    img = np.asarray(crop, dtype=np.float32) / 255.0
    if img.ndim == 2:  # grayscale photo: random tint
        tint = rng.uniform(0.55, 1.2, size=3).astype(np.float32)
        img = img[..., None] * tint
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.2:
        img = img[::-1]
    return np.ascontiguousarray(img, dtype=np.float32)


def _low_freq_noise(rng: np.random.Generator, height: int, width: int,
                    channels: int) -> np.ndarray:
    """Smooth random field ``(height, width, channels)``, roughly unit std."""
    gh = int(rng.integers(3, 9))
    gw = max(2, int(round(gh * width / height)))
    coarse = rng.normal(size=(gh, gw, channels)).astype(np.float32)
    return _resize_float(coarse, height, width)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Cluttered textured background.

    Returns:
        float32 array ``(height, width, 3)``, values roughly in ``[0, 1]``.
    """
    img = _photo_crop(rng, height, width)
    if rng.random() < 0.5:  # mix in a second photograph
        alpha = rng.uniform(0.2, 0.5)
        img = (1.0 - alpha) * img + alpha * _photo_crop(rng, height, width)
    # Halve the photograph's own contrast: clutter stays, objects stay learnable in a
    # short CPU training.
    mean = img.mean(axis=(0, 1), keepdims=True)
    img = mean + 0.5 * (img - mean)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ang = rng.uniform(0.0, 2.0 * math.pi)
    ramp = (math.cos(ang) * (xx / width - 0.5) + math.sin(ang) * (yy / height - 0.5))
    illum = 1.0 + rng.uniform(-0.6, 0.6) * ramp
    img = img * illum[..., None]
    if rng.random() < 0.7:  # blotchy colour variation
        img = img + rng.uniform(0.02, 0.1) * _low_freq_noise(rng, height, width, 3)
    return img


# --------------------------------------------------------------------------- #
# Shapes
# --------------------------------------------------------------------------- #
def _points_in_polygon(x: np.ndarray, y: np.ndarray,
                       vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for arrays of points of any shape."""
    inside = np.zeros(x.shape, dtype=bool)
    j = len(vx) - 1
    for i in range(len(vx)):
        xi, yi, xj, yj = vx[i], vy[i], vx[j], vy[j]
        if yi != yj:
            crosses = (yi > y) != (yj > y)
            x_int = (xj - xi) * (y - yi) / (yj - yi) + xi
            inside ^= crosses & (x < x_int)
        j = i
    return inside


def _sample_shape(rng: np.random.Generator, cls: str, size: float) -> Dict[str, Any]:
    """Random geometry of one object in its local (unrotated) frame.

    Args:
        rng: Random generator.
        cls: Class name from :data:`CLASSES`.
        size: Longest unrotated extent in pixels.

    Returns:
        Dict with ``kind`` (``ellipse``/``ring``/``rect``/``poly``), the shape
        parameters and ``radius`` (bounding radius in pixels).
    """
    half = size / 2.0
    if cls in ("circle", "ring"):
        a = half
        b = a / rng.uniform(1.0, 1.3)
        geo: Dict[str, Any] = {"kind": "ellipse", "a": a, "b": b, "radius": a}
        if cls == "ring":
            r = rng.uniform(0.45, 0.68)
            geo.update(kind="ring", ia=a * r, ib=b * r)
        return geo
    if cls in ("square", "bar"):
        aspect = rng.uniform(1.0, 1.25) if cls == "square" else rng.uniform(3.2, 6.0)
        w = size
        h = max(size / aspect, 4.0 if cls == "bar" else 1.0)
        return {"kind": "rect", "hw": w / 2.0, "hh": h / 2.0,
                "radius": math.hypot(w, h) / 2.0}
    if cls == "triangle":
        base = np.deg2rad(np.array([90.0, 210.0, 330.0]))
        angles = base + np.deg2rad(rng.uniform(-14.0, 14.0, size=3))
        squash = rng.uniform(0.8, 1.2)
        vx = half * np.cos(angles)
        vy = half * np.sin(angles) * squash
        vy -= (vy.max() + vy.min()) / 2.0
        return {"kind": "poly", "vx": vx, "vy": vy,
                "radius": float(np.hypot(vx, vy).max())}
    if cls == "star":
        points = 5
        inner = rng.uniform(0.38, 0.55)
        k = np.arange(2 * points)
        radii = np.where(k % 2 == 0, half, half * inner)
        angles = math.pi / 2 + k * math.pi / points
        squash = rng.uniform(0.85, 1.15)
        vx = radii * np.cos(angles)
        vy = radii * np.sin(angles) * squash
        return {"kind": "poly", "vx": vx, "vy": vy,
                "radius": float(np.hypot(vx, vy).max())}
    raise ValueError(f"unknown class {cls!r}; known: {CLASSES}")


def _inside(geo: Mapping[str, Any], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of local-frame points ``(u, v)`` (any equal shapes)."""
    kind = geo["kind"]
    if kind in ("ellipse", "ring"):
        res = (u / geo["a"]) ** 2 + (v / geo["b"]) ** 2 <= 1.0
        if kind == "ring":
            res &= (u / geo["ia"]) ** 2 + (v / geo["ib"]) ** 2 > 1.0
        return res
    if kind == "rect":
        return (np.abs(u) <= geo["hw"]) & (np.abs(v) <= geo["hh"])
    return _points_in_polygon(u, v, geo["vx"], geo["vy"])


def _rasterise(geo: Mapping[str, Any], cx: float, cy: float, theta: float,
               height: int, width: int
               ) -> Optional[Tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Anti-aliased coverage of a placed shape.

    Args:
        geo: Output of :func:`_sample_shape`.
        cx, cy: Centre in pixel coordinates (pixel ``j`` spans ``[j, j+1)``).
        theta: Rotation in radians.
        height, width: Image size.

    Returns:
        ``None`` when the shape misses the image, else ``(y0, x0, alpha, u,
        v)``: the window's top-left corner, the coverage ``alpha`` float32
        ``(h, w)`` in ``[0, 1]`` and local-frame coordinates ``u, v`` float32
        ``(h, w)`` of the window's pixel centres.
    """
    r = geo["radius"]
    y0, y1 = max(0, int(math.floor(cy - r)) - 1), min(height, int(math.ceil(cy + r)) + 2)
    x0, x1 = max(0, int(math.floor(cx - r)) - 1), min(width, int(math.ceil(cx + r)) + 2)
    if y1 <= y0 or x1 <= x0:
        return None
    c, s = math.cos(theta), math.sin(theta)

    def local(ys: np.ndarray, xs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        dx, dy = xs[None, :] - cx, ys[:, None] - cy
        return (c * dx + s * dy).astype(np.float32), (-s * dx + c * dy).astype(np.float32)

    ss = _SUPERSAMPLE
    h, w = y1 - y0, x1 - x0
    ys = y0 + (np.arange(h * ss, dtype=np.float64) + 0.5) / ss
    xs = x0 + (np.arange(w * ss, dtype=np.float64) + 0.5) / ss
    su, sv = local(ys, xs)
    alpha = _inside(geo, su, sv).reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float32)
    u, v = local(y0 + np.arange(h) + 0.5, x0 + np.arange(w) + 0.5)
    return y0, x0, alpha, u, v


# --------------------------------------------------------------------------- #
# Object appearance
# --------------------------------------------------------------------------- #
def _random_colour(rng: np.random.Generator,
                   avoid: Optional[np.ndarray] = None) -> np.ndarray:
    """Random RGB colour ``(3,)``; with ``avoid`` (``(3,)``), try to keep away from it."""
    for _ in range(8):
        rgb = np.asarray(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.2, 1.0),
                                             rng.uniform(0.25, 1.0)), dtype=np.float32)
        if avoid is None or float(np.linalg.norm(rgb - avoid)) >= _MIN_COLOUR_DISTANCE:
            break
    return rgb


def _object_fill(rng: np.random.Generator, u: np.ndarray, v: np.ndarray,
                 radius: float, under: np.ndarray) -> np.ndarray:
    """Colour of an object over its window.

    Args:
        rng: Random generator.
        u, v: Local-frame pixel coordinates, float32 ``(h, w)``.
        radius: Bounding radius of the shape in pixels.
        under: Mean colour ``(3,)`` of the image under the object.

    Returns:
        float32 array ``(h, w, 3)``.
    """
    colour = _random_colour(rng, avoid=under)
    style = rng.random()
    if style < 0.2:  # two-colour stripes
        period = rng.uniform(0.25, 0.7) * radius + 2.0
        ang = rng.uniform(0.0, math.pi)
        t = (math.cos(ang) * u + math.sin(ang) * v) / period
        stripe = (np.sin(2 * math.pi * t) > 0).astype(np.float32)[..., None]
        fill = colour * stripe + _random_colour(rng) * (1.0 - stripe)
    elif style < 0.35:  # radial two-colour gradient
        t = np.clip(np.hypot(u, v) / max(radius, 1.0), 0.0, 1.0)[..., None]
        fill = colour * (1.0 - t) + _random_colour(rng) * t
    else:
        fill = np.broadcast_to(colour, u.shape + (3,)).astype(np.float32)
    # Directional shading, as if lit from one side.
    ang = rng.uniform(0.0, 2.0 * math.pi)
    shade = 1.0 + rng.uniform(0.0, 0.35) * (math.cos(ang) * u + math.sin(ang) * v) / max(radius, 1.0)
    fill = fill * shade[..., None]
    _, textures = _load_sources()
    if textures and rng.random() < 0.5:  # surface texture
        _, tex = textures[int(rng.integers(len(textures)))]
        h, w = u.shape
        scale = rng.uniform(0.5, 2.0)
        th = min(tex.shape[0], max(2, int(round(h * scale))))
        tw = min(tex.shape[1], max(2, int(round(w * scale))))
        ty = int(rng.integers(0, tex.shape[0] - th + 1))
        tx = int(rng.integers(0, tex.shape[1] - tw + 1))
        patch = _resize_float(tex[ty:ty + th, tx:tx + tw], h, w)
        strength = rng.uniform(0.15, 0.6)
        fill = fill * (1.0 + strength * (patch - 1.0))[..., None]
    fill = fill + rng.normal(0.0, rng.uniform(0.0, 0.03), size=fill.shape).astype(np.float32)
    return fill.astype(np.float32)


def _paint_object(rng: np.random.Generator, img: np.ndarray, y0: int, x0: int,
                  alpha: np.ndarray, u: np.ndarray, v: np.ndarray,
                  radius: float) -> None:
    """Composite one object (with optional drop shadow and outline) in place.

    Args:
        rng: Random generator.
        img: float32 image ``(H, W, 3)``, modified in place.
        y0, x0: Top-left corner of the object's window.
        alpha: Coverage float32 ``(h, w)``.
        u, v: Local-frame coordinates float32 ``(h, w)``.
        radius: Bounding radius in pixels.
    """
    height, width = img.shape[:2]
    h, w = alpha.shape
    if rng.random() < 0.3:  # soft drop shadow on whatever lies underneath
        pad = int(max(4, 0.15 * radius)) + 4
        canvas = np.zeros((h + 2 * pad, w + 2 * pad), np.float32)
        dy, dx = (int(v_) for v_ in rng.integers(-pad // 2, pad // 2 + 1, size=2))
        canvas[pad + dy:pad + dy + h, pad + dx:pad + dx + w] = alpha
        shadow = ndimage.gaussian_filter(canvas, rng.uniform(1.0, 3.0)) * rng.uniform(0.3, 0.6)
        sy0, sx0 = y0 - pad, x0 - pad
        cy0, cx0 = max(0, sy0), max(0, sx0)
        cy1, cx1 = min(height, sy0 + canvas.shape[0]), min(width, sx0 + canvas.shape[1])
        img[cy0:cy1, cx0:cx1] *= (1.0 - shadow[cy0 - sy0:cy1 - sy0, cx0 - sx0:cx1 - sx0])[..., None]
    region = img[y0:y0 + h, x0:x0 + w]
    solid = alpha >= 0.5
    under = np.clip(region[solid].mean(axis=0), 0.0, 1.0) if solid.any() else None
    fill = _object_fill(rng, u, v, radius, under)
    if rng.random() < 0.35:  # darker or lighter rim
        width_px = int(rng.integers(1, 3))
        rim = solid & ~ndimage.binary_erosion(solid, iterations=width_px)
        factor = rng.uniform(0.35, 0.7) if rng.random() < 0.7 else rng.uniform(1.3, 1.6)
        fill[rim] *= factor
    a = alpha[..., None]
    region *= 1.0 - a
    region += a * fill


def _photometric(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Per-image global photometric variation (camera / exposure / white balance).

    Args:
        rng: Random generator.
        img: float32 image ``(H, W, 3)``.

    Returns:
        uint8 image ``(H, W, 3)``.
    """
    img = np.clip(img, 0.0, 1.0)
    if rng.random() < 0.15:  # partial desaturation
        gray = img.mean(axis=2, keepdims=True)
        k = rng.uniform(0.5, 1.0)
        img = (1.0 - k) * img + k * gray
    mean = img.mean(axis=(0, 1), keepdims=True)
    contrast = math.exp(rng.uniform(math.log(0.6), math.log(1.5)))
    img = (img - mean) * contrast + mean
    exposure = math.exp(rng.uniform(math.log(0.55), math.log(1.6)))
    img = img * exposure + rng.uniform(-0.1, 0.1)
    gains = rng.uniform(0.7, 1.3, size=3).astype(np.float32)
    img = img * gains + rng.uniform(-0.06, 0.06, size=3).astype(np.float32)
    img = np.clip(img, 0.0, 1.0)
    gamma = math.exp(rng.uniform(math.log(0.7), math.log(1.45)))
    img = img ** gamma
    if rng.random() < 0.2:
        img = ndimage.gaussian_filter(img, sigma=(rng.uniform(0.4, 1.0),) * 2 + (0.0,))
    sigma = rng.uniform(0.0, 0.035)
    if sigma > 0:
        img = img + rng.normal(0.0, sigma, size=img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- #
# Images and annotations
# --------------------------------------------------------------------------- #
def _encode(mask: np.ndarray) -> Dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": rle["counts"].decode("ascii")}


def generate_image(rng: np.random.Generator, image_size: ImageSize
                   ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Draw one synthetic image and its instance annotations.

    Args:
        rng: Random generator; the output is a deterministic function of its
            state and of ``image_size``.
        image_size: ``(height, width)``, one int, or a string (see
            :func:`parse_image_size`).

    Returns:
        ``(image, annotations)``: ``image`` is uint8 ``(H, W, 3)`` RGB;
        ``annotations`` is a list (in drawing order, 1-4 entries) of dicts
        with the COCO keys ``category_id`` (1-based index into
        :data:`CLASSES`), ``segmentation`` (compressed RLE, ``counts`` a str,
        ``size`` ``[H, W]``), ``area`` (visible pixels), ``bbox``
        (``[x, y, w, h]`` of the visible mask, floats) and ``iscrowd`` (0),
        plus ``full_area``: the object's in-image pixel count before
        occlusion by later objects. Visible masks of different annotations
        never overlap; remainders under :data:`MIN_AREA` pixels are dropped.
    """
    height, width = parse_image_size(image_size)
    img = _background(rng, height, width)
    side = min(height, width)
    num_objects = int(rng.integers(1, 5))
    visible: List[np.ndarray] = []     # (H, W) bool, reduced by later objects
    full_areas: List[int] = []
    categories: List[int] = []
    for _ in range(num_objects):
        for _attempt in range(10):
            cls_idx = int(rng.integers(len(CLASSES)))
            size = rng.uniform(*SIZE_RANGE) * side
            geo = _sample_shape(rng, CLASSES[cls_idx], size)
            margin = 0.3 * geo["radius"]
            cx = rng.uniform(margin, width - margin)
            cy = rng.uniform(margin, height - margin)
            theta = rng.uniform(0.0, 2.0 * math.pi)
            raster = _rasterise(geo, cx, cy, theta, height, width)
            if raster is None:
                continue
            y0, x0, alpha, u, v = raster
            local = alpha >= 0.5
            full = int(local.sum())
            if full < MIN_AREA:
                continue
            mask = np.zeros((height, width), dtype=bool)
            mask[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]] = local
            if any(int((vis & ~mask).sum()) < MIN_VISIBLE_FRACTION * fa
                   for vis, fa in zip(visible, full_areas)):
                continue  # would hide an earlier object almost entirely
            break
        else:
            continue
        _paint_object(rng, img, y0, x0, alpha, u, v, geo["radius"])
        for vis in visible:
            vis &= ~mask
        visible.append(mask)
        full_areas.append(full)
        categories.append(cls_idx + 1)
    image = _photometric(rng, img)

    annotations: List[Dict[str, Any]] = []
    for mask, full, cat in zip(visible, full_areas, categories):
        area = int(mask.sum())
        if area < MIN_AREA:
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        x0, y0 = int(cols[0]), int(rows[0])
        bbox = [float(x0), float(y0), float(cols[-1] + 1 - x0), float(rows[-1] + 1 - y0)]
        annotations.append({
            "category_id": cat,
            "segmentation": _encode(mask),
            "area": float(area),
            "bbox": bbox,
            "iscrowd": 0,
            "full_area": full,
        })
    return image, annotations


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_CODE[split], int(index)])


def generate_split(seed: int, split: str, num_images: int, image_size: ImageSize,
                   image_dir: Optional[str] = None) -> Dict[str, Any]:
    """Generate one split and return its COCO dict.

    Args:
        seed: Non-negative base seed.
        split: ``"train"`` or ``"val"``.
        num_images: Number of images (>= 1).
        image_size: See :func:`parse_image_size`.
        image_dir: When given, images are written there as ``NNNNNN.jpg``.

    Returns:
        COCO ``instances`` dict (``info``, ``licenses``, ``images``,
        ``annotations``, ``categories``). Image ids and annotation ids start at 1.
    """
    seed = _check_seed(seed)
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    num_images = _check_count("num_images", num_images)
    height, width = parse_image_size(image_size)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for index in range(num_images):
        image_id = index + 1
        file_name = f"{image_id:06d}{_IMAGE_EXT}"
        image, anns = generate_image(_image_rng(seed, split, index), (height, width))
        if image_dir is not None:
            Image.fromarray(image).save(os.path.join(image_dir, file_name),
                                        quality=_JPEG_QUALITY)
        images.append({"id": image_id, "file_name": file_name,
                       "height": height, "width": width})
        for ann in anns:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": ann["category_id"],
                "segmentation": ann["segmentation"],
                "area": ann["area"],
                "bbox": ann["bbox"],
                "iscrowd": 0,
            })
    return {
        "info": {"description": f"IGQ synthetic shapes ({split})",
                 "version": str(FORMAT_VERSION), "generator": _GENERATOR,
                 "seed": seed},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(CLASSES)],
    }


# --------------------------------------------------------------------------- #
# Dataset on disk
# --------------------------------------------------------------------------- #
def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_meta(out_dir: str, generator: str = _GENERATOR) -> Optional[Dict[str, Any]]:
    """``meta.json`` of a dataset written by ``generator`` (``None`` otherwise)."""
    try:
        with open(os.path.join(out_dir, "meta.json"), "r", encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != generator:
        return None
    return meta


def _prepare_out_dir(out_dir: str, generator: str = _GENERATOR) -> None:
    """Check that ``out_dir`` can be (re)written without destroying foreign data."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"out_dir {out_dir!r} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and \
            _read_meta(out_dir, generator) is None:
        raise ValueError(
            f"out_dir {out_dir!r} is a non-empty directory that was not made by "
            f"{generator} (no valid meta.json); choose an empty or new directory")
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, ".write_probe")
        with open(probe, "wb") as fh:
            fh.write(b"")
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"out_dir {out_dir!r} is not writable: {exc}") from None


def generate_dataset(out_dir: str, seed: int = 0, num_train: int = 400,
                     num_val: int = 100, image_size: ImageSize = (256, 256)
                     ) -> Dict[str, str]:
    """Write the synthetic dataset (images, COCO json, meta.json) to ``out_dir``.

    ``out_dir`` must be new, empty, or a dataset previously written by this
    function (which is then overwritten; stale images of ours are removed,
    other files are left alone). ``meta.json`` is written last, so an
    interrupted run is never reported as current by :func:`dataset_is_current`.

    Args:
        out_dir: Output directory.
        seed: Non-negative base seed.
        num_train: Number of training images (>= 1).
        num_val: Number of validation images (>= 1).
        image_size: ``(height, width)``, one int (square) or ``"H,W"``; each
            side in ``[MIN_IMAGE_SIDE, MAX_IMAGE_SIDE]``.

    Returns:
        Paths: ``root``, ``train_ann``, ``val_ann``, ``train_img_dir``,
        ``val_img_dir``, ``meta``.

    Raises:
        ValueError: On invalid arguments, or when ``out_dir`` is not a
            writable directory, or is a non-empty directory not made by this
            generator.
    """
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise ValueError(f"out_dir must be a non-empty path, got {out_dir!r}")
    out_dir = os.fspath(out_dir)
    args = _normalise_args(seed, num_train, num_val, image_size)
    _prepare_out_dir(out_dir)
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)  # dataset is inconsistent until rewritten

    ann_dir = os.path.join(out_dir, "annotations")
    os.makedirs(ann_dir, exist_ok=True)
    paths = {"root": out_dir, "meta": meta_path}
    meta_files: Dict[str, Any] = {}
    counts: Dict[str, Any] = {}
    for split in _SPLITS:
        img_dir = os.path.join(out_dir, split)
        os.makedirs(img_dir, exist_ok=True)
        coco = generate_split(args["seed"], split, args[f"num_{split}"],
                              args["image_size"], image_dir=img_dir)
        keep = {im["file_name"] for im in coco["images"]}
        for name in sorted(os.listdir(img_dir)):
            if _IMAGE_NAME_RE.match(name) and name not in keep:
                os.remove(os.path.join(img_dir, name))
        ann_rel = f"annotations/instances_{split}.json"
        ann_path = os.path.join(out_dir, ann_rel)
        data = json.dumps(coco, separators=(",", ":")).encode("utf-8")
        with open(ann_path, "wb") as fh:
            fh.write(data)
        meta_files[split] = {"annotations": ann_rel, "images": f"{split}/",
                             "sha256": hashlib.sha256(data).hexdigest()}
        counts[split] = {"images": len(coco["images"]),
                         "annotations": len(coco["annotations"])}
        paths[f"{split}_ann"] = ann_path
        paths[f"{split}_img_dir"] = img_dir

    import PIL
    import skimage
    meta = {
        "generator": _GENERATOR,
        "format_version": FORMAT_VERSION,
        "args": args,
        "classes": list(CLASSES),
        "splits": meta_files,
        "counts": counts,
        "backgrounds": list(available_backgrounds()),
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
                       num_val: int = 100, image_size: ImageSize = (256, 256)) -> bool:
    """Whether ``out_dir`` holds a complete dataset made with these arguments.

    Checks ``meta.json`` (generator, :data:`FORMAT_VERSION`, arguments,
    classes), the sha256 of both annotation files, and that every image the
    annotation files list exists. Invalid arguments give ``False``.

    Args:
        out_dir: Dataset directory.
        seed, num_train, num_val, image_size: As for :func:`generate_dataset`.

    Returns:
        ``True`` when the dataset can be reused as is.
    """
    try:
        args = _normalise_args(seed, num_train, num_val, image_size)
    except ValueError:
        return False
    out_dir = os.fspath(out_dir)
    meta = _read_meta(out_dir)
    if (meta is None or meta.get("format_version") != FORMAT_VERSION
            or meta.get("args") != args or meta.get("classes") != list(CLASSES)):
        return False
    try:
        for split in _SPLITS:
            info = meta["splits"][split]
            ann_path = os.path.join(out_dir, info["annotations"])
            if _sha256(ann_path) != info["sha256"]:
                return False
            with open(ann_path, "r", encoding="utf-8") as fh:
                coco = json.load(fh)
            img_dir = os.path.join(out_dir, split)
            if len(coco["images"]) != args[f"num_{split}"]:
                return False
            if not all(os.path.isfile(os.path.join(img_dir, im["file_name"]))
                       for im in coco["images"]):
                return False
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True
