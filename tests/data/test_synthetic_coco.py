"""Tests for the synthetic COCO shapes dataset (fast: a few seconds)."""
import collections
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from igq_demo import synthetic_coco as sc
from igq_demo.synthetic_coco import (CLASSES, dataset_is_current, generate_dataset,
                             generate_image, parse_image_size)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = dict(seed=3, num_train=12, num_val=4, image_size=(96, 128))


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("syn") / "ds")
    paths = generate_dataset(root, **ARGS)
    return root, paths


@pytest.fixture(scope="module")
def many_images():
    """60 images of 128x128 straight from generate_image."""
    return [generate_image(np.random.default_rng([11, i]), 128) for i in range(60)]


# ----------------------------------------------------------------- determinism
def test_same_args_give_identical_bytes(dataset, tmp_path):
    root, _ = dataset
    generate_dataset(str(tmp_path / "again"), **ARGS)
    first, second = _files(root), _files(str(tmp_path / "again"))
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.endswith(".jpg")]) == ARGS["num_train"] + ARGS["num_val"]
    for key in first:
        assert first[key] == second[key], key


def test_splits_do_not_depend_on_each_others_counts(dataset, tmp_path):
    root, _ = dataset
    other = str(tmp_path / "fewer_val")
    generate_dataset(other, **dict(ARGS, num_val=2))
    for name in ("annotations/instances_train.json", "train/000001.jpg", "train/000012.jpg",
                 "val/000001.jpg", "val/000002.jpg"):
        with open(os.path.join(root, name), "rb") as a, open(os.path.join(other, name), "rb") as b:
            assert a.read() == b.read(), name
    assert not os.path.exists(os.path.join(other, "val", "000003.jpg"))


def test_different_seed_gives_different_data(dataset, tmp_path):
    root, _ = dataset
    other = str(tmp_path / "seed4")
    generate_dataset(other, **dict(ARGS, seed=4))
    with open(os.path.join(root, "train/000001.jpg"), "rb") as a, \
            open(os.path.join(other, "train/000001.jpg"), "rb") as b:
        assert a.read() != b.read()


# ----------------------------------------------------------------- annotations
@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_loads_and_masks_match_boxes(dataset, split):
    root, paths = dataset
    coco = COCO(paths[f"{split}_ann"])
    height, width = ARGS["image_size"]
    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == list(range(1, len(CLASSES) + 1))
    assert tuple(c["name"] for c in cats) == CLASSES
    images = coco.dataset["images"]
    assert [im["id"] for im in images] == list(range(1, ARGS[f"num_{split}"] + 1))
    for im in images:
        assert (im["height"], im["width"]) == (height, width)
        assert os.path.isfile(os.path.join(paths[f"{split}_img_dir"], im["file_name"]))
    anns = coco.dataset["annotations"]
    assert anns and len({a["id"] for a in anns}) == len(anns)
    for ann in anns:
        assert ann["iscrowd"] == 0
        assert isinstance(ann["segmentation"]["counts"], str)
        mask = coco.annToMask(ann).astype(bool)
        assert mask.shape == (height, width)
        area = int(mask.sum())
        assert area >= sc.MIN_AREA and area == ann["area"]
        assert area == int(mask_utils.area(ann["segmentation"]))
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0
        assert x + w <= width and y + h <= height
        inside = np.zeros_like(mask)
        inside[int(y):int(y + h), int(x):int(x + w)] = True
        assert not (mask & ~inside).any()
        # Tight box: the mask touches all four sides.
        assert mask[int(y)].any() and mask[int(y + h) - 1].any()
        assert mask[:, int(x)].any() and mask[:, int(x + w) - 1].any()
        np.testing.assert_allclose(mask_utils.toBbox(ann["segmentation"]), ann["bbox"])


def test_generate_image_outputs(many_images):
    for image, anns in many_images:
        assert image.dtype == np.uint8 and image.shape == (128, 128, 3)
        assert 1 <= len(anns) <= 6
        for ann in anns:
            assert 1 <= ann["category_id"] <= len(CLASSES)
            assert sc.MIN_AREA <= ann["area"] <= ann["full_area"]


def test_occlusion_reduces_earlier_masks(many_images):
    occluded = 0
    for _, anns in many_images:
        masks = np.stack([mask_utils.decode(a["segmentation"]) for a in anns]).astype(int)
        assert masks.sum(axis=0).max() <= 1, "visible masks must not overlap"
        occluded += sum(a["area"] < a["full_area"] for a in anns)
        # The last drawn object is never occluded.
        assert anns[-1]["area"] == anns[-1]["full_area"]
    assert occluded >= 10


def test_some_masks_split_into_several_parts(many_images):
    from scipy import ndimage
    parts = [ndimage.label(mask_utils.decode(a["segmentation"]))[1]
             for _, anns in many_images for a in anns]
    assert min(parts) >= 1 and max(parts) >= 2


def test_class_balance_and_object_sizes():
    counts = collections.Counter()
    rel_sizes = []
    for i in range(150):
        _, anns = generate_image(np.random.default_rng([5, i]), 96)
        counts.update(a["category_id"] for a in anns)
        rel_sizes += [max(a["bbox"][2:]) / 96 for a in anns if a["area"] == a["full_area"]]
    mean = sum(counts.values()) / len(CLASSES)
    assert sorted(counts) == list(range(1, len(CLASSES) + 1))
    for cat, n in counts.items():
        assert 0.7 * mean <= n <= 1.3 * mean, (CLASSES[cat - 1], n, mean)
    rel_sizes = np.array(rel_sizes)
    assert rel_sizes.max() <= 0.7
    assert (rel_sizes < 0.15).any() and (rel_sizes > 0.35).any()


def test_channel_statistics_vary_between_images(many_images):
    means = np.array([img.reshape(-1, 3).mean(0) for img, _ in many_images]) / 255
    stds = np.array([img.reshape(-1, 3).std(0) for img, _ in many_images]) / 255
    assert means.mean(1).std() > 0.08          # brightness
    assert stds.mean(1).max() > 2.5 * stds.mean(1).min()   # contrast
    cast = means / means.mean(1, keepdims=True)
    assert cast.std(0).min() > 0.05            # per-channel colour cast
    assert len(sc.available_backgrounds()) >= 5


# ----------------------------------------------------------------- meta / cache
def test_meta_and_dataset_is_current(dataset, tmp_path):
    root, paths = dataset
    with open(paths["meta"]) as fh:
        meta = json.load(fh)
    assert meta["args"] == dict(ARGS, image_size=list(ARGS["image_size"]))
    for split in ("train", "val"):
        assert meta["splits"][split]["sha256"] == sc._sha256(paths[f"{split}_ann"])
    assert dataset_is_current(root, **ARGS)
    assert dataset_is_current(root, **dict(ARGS, image_size="96,128"))
    for change in (dict(seed=4), dict(num_train=11), dict(num_val=5),
                   dict(image_size=96), dict(num_train=0)):
        assert not dataset_is_current(root, **dict(ARGS, **change)), change
    assert not dataset_is_current(str(tmp_path / "missing"), **ARGS)

    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    assert dataset_is_current(copy, **ARGS)
    os.remove(os.path.join(copy, "val", "000002.jpg"))
    assert not dataset_is_current(copy, **ARGS)
    shutil.rmtree(copy)
    shutil.copytree(root, copy)
    with open(os.path.join(copy, "annotations", "instances_train.json"), "ab") as fh:
        fh.write(b" ")
    assert not dataset_is_current(copy, **ARGS)


def test_regenerating_own_dataset_removes_stale_images_only(tmp_path):
    root = str(tmp_path / "ds")
    generate_dataset(root, seed=0, num_train=5, num_val=2, image_size=64)
    with open(os.path.join(root, "notes.txt"), "w") as fh:
        fh.write("mine")
    generate_dataset(root, seed=0, num_train=3, num_val=2, image_size=64)
    assert sorted(os.listdir(os.path.join(root, "train"))) == [
        "000001.jpg", "000002.jpg", "000003.jpg"]
    assert open(os.path.join(root, "notes.txt")).read() == "mine"
    assert dataset_is_current(root, seed=0, num_train=3, num_val=2, image_size=64)
    assert not dataset_is_current(root, seed=0, num_train=5, num_val=2, image_size=64)


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, pattern", [
    (dict(num_train=0), "num_train.*>= 1.*0"),
    (dict(num_val=0), "num_val.*>= 1.*0"),
    (dict(num_train=-3), "num_train"),
    (dict(num_val=2.5), "num_val.*int"),
    (dict(num_train=True), "num_train.*int"),
    (dict(seed=-1), "seed.*non-negative"),
    (dict(image_size=63), r"63.*\[64, 2048\]"),
    (dict(image_size=2049), r"2049.*\[64, 2048\]"),
    (dict(image_size=(64, 4096)), "4096"),
    (dict(image_size=(64, 64, 64)), "pair"),
    (dict(image_size="big"), "big"),
    (dict(image_size=64.0), "image_size"),
])
def test_bad_arguments_raise(tmp_path, kwargs, pattern):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=pattern):
        generate_dataset(str(out), **dict(dict(num_train=1, num_val=1, image_size=64), **kwargs))
    assert not out.exists()


def test_parse_image_size():
    assert parse_image_size(256) == (256, 256)
    assert parse_image_size("256") == (256, 256)
    assert parse_image_size("128,160") == (128, 160)
    assert parse_image_size("128x160") == (128, 160)
    assert parse_image_size((100, 200)) == (100, 200)


def test_refuses_foreign_non_empty_dir(tmp_path):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not made by"):
        generate_dataset(str(out), num_train=1, num_val=1, image_size=64)
    assert sorted(os.listdir(out)) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_unwritable_or_file_out_dir(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_dataset(str(afile), num_train=1, num_val=1, image_size=64)
    with pytest.raises(ValueError, match="not writable"):
        generate_dataset(str(afile / "sub"), num_train=1, num_val=1, image_size=64)
    assert afile.read_text() == "x"


# ----------------------------------------------------------------- CLI
def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_coco", os.path.join(REPO, "tools", "make_synthetic_coco.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_in_process(tmp_path, capsys):
    cli = _load_cli()
    out = str(tmp_path / "cli")
    argv = ["--out", out, "--seed", "1", "--num-train", "2", "--num-val", "1",
            "--image-size", "64,96"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count("\n") == 1
    assert dataset_is_current(out, seed=1, num_train=2, num_val=1, image_size=(64, 96))
    assert cli.main(argv + ["--skip-if-current"]) == 0
    assert "already current" in capsys.readouterr().out
    for bad, pattern in ((["--num-val", "0"], "num_val"),
                         (["--image-size", "32"], r"32.*\[64, 2048\]")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["--out", str(tmp_path / "bad")] + bad)
        assert exc.value.code == 2
        assert re.search(pattern, capsys.readouterr().err)


def test_cli_subprocess(tmp_path):
    out = str(tmp_path / "sub")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "make_synthetic_coco.py"),
         "--out", out, "--num-train", "1", "--num-val", "1", "--image-size", "64"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(os.path.join(out, "annotations", "instances_val.json"))
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "make_synthetic_coco.py"),
         "--out", out, "--num-train", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "num_train must be >= 1, got 0" in proc.stderr


# ----------------------------------------------------------------- mmdet (venv only)
def test_loads_with_mmdet_coco_dataset(dataset):
    pytest.importorskip("mmdet")
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules()
    root, paths = dataset
    ds = CocoDataset(
        data_root=root, ann_file="annotations/instances_train.json",
        data_prefix=dict(img="train/"), metainfo=dict(classes=CLASSES),
        pipeline=[dict(type="LoadImageFromFile"),
                  dict(type="LoadAnnotations", with_bbox=True, with_mask=True)])
    assert len(ds) == ARGS["num_train"]
    coco = COCO(paths["train_ann"])
    item = ds[0]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[1]))
    assert item["img"].shape == (96, 128, 3)
    assert len(item["gt_bboxes"]) == len(anns)
    np.testing.assert_array_equal(
        item["gt_masks"].masks, np.stack([coco.annToMask(a) for a in anns]))
    assert list(item["gt_bboxes_labels"]) == [a["category_id"] - 1 for a in anns]
