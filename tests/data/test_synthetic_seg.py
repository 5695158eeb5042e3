"""Tests for the synthetic semantic-segmentation shapes dataset (fast: a few seconds)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from igq_demo import synthetic_coco, synthetic_seg
from igq_demo.synthetic_seg import (CLASSES, PALETTE, SEG_CLASSES, dataset_is_current,
                                    generate_dataset, generate_image, label_map)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = dict(seed=3, num_train=6, num_val=3, image_size=(96, 128))


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
    root = str(tmp_path_factory.mktemp("seg") / "ds")
    paths = generate_dataset(root, **ARGS)
    return root, paths


# ----------------------------------------------------------------- labels
def test_classes_and_palette():
    assert SEG_CLASSES[0] == "background"
    assert SEG_CLASSES[1:] == synthetic_coco.CLASSES == CLASSES
    assert len(PALETTE) == len(SEG_CLASSES) == 7
    assert len(set(PALETTE)) == len(PALETTE)


@pytest.mark.parametrize("index", range(8))
def test_label_matches_coco_annotations(index):
    size = (80, 112)
    image, label = generate_image(np.random.default_rng([5, index]), size)
    ref_image, anns = synthetic_coco.generate_image(np.random.default_rng([5, index]), size)
    np.testing.assert_array_equal(image, ref_image)  # the same images as synthetic_coco
    assert image.shape == size + (3,) and image.dtype == np.uint8
    assert label.shape == size and label.dtype == np.uint8
    assert set(np.unique(label)) <= set(range(len(SEG_CLASSES)))
    assert 255 not in label
    expected = np.zeros(size, np.uint8)
    for ann in anns:
        expected[mask_utils.decode(ann["segmentation"]).astype(bool)] = ann["category_id"]
    np.testing.assert_array_equal(label, expected)
    assert {int(a["category_id"]) for a in anns} == set(np.unique(label)) - {0}


def test_later_objects_win_where_masks_overlap():
    a = np.zeros((8, 8), np.uint8)
    a[1:5, 1:5] = 1
    b = np.zeros((8, 8), np.uint8)
    b[3:7, 3:7] = 1
    anns = [{"category_id": 2, "segmentation": mask_utils.encode(np.asfortranarray(a))},
            {"category_id": 5, "segmentation": mask_utils.encode(np.asfortranarray(b))}]
    label = label_map(anns, 8, 8)
    assert label[2, 2] == 2 and label[4, 4] == 5 and label[6, 6] == 5 and label[0, 0] == 0


def test_label_map_rejects_bad_category():
    m = np.asfortranarray(np.ones((4, 4), np.uint8))
    with pytest.raises(ValueError):
        label_map([{"category_id": 7, "segmentation": mask_utils.encode(m)}], 4, 4)


def test_generate_image_is_deterministic():
    first = generate_image(np.random.default_rng([1, 2, 3]), 64)
    second = generate_image(np.random.default_rng([1, 2, 3]), 64)
    other = generate_image(np.random.default_rng([1, 2, 4]), 64)
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], other[0])


# ----------------------------------------------------------------- dataset on disk
def test_layout_and_file_formats(dataset):
    root, paths = dataset
    height, width = ARGS["image_size"]
    for split in ("train", "val"):
        n = ARGS[f"num_{split}"]
        names = [f"{i + 1:06d}" for i in range(n)]
        assert sorted(os.listdir(os.path.join(root, "img_dir", split))) == [
            s + ".jpg" for s in names]
        assert sorted(os.listdir(os.path.join(root, "ann_dir", split))) == [
            s + ".png" for s in names]
        assert paths[f"{split}_img_dir"] == os.path.join(root, "img_dir", split)
        for stem in names:
            img = Image.open(os.path.join(root, "img_dir", split, stem + ".jpg"))
            ann = Image.open(os.path.join(root, "ann_dir", split, stem + ".png"))
            assert img.mode == "RGB" and img.size == (width, height)
            assert ann.mode == "L" and ann.size == (width, height)
            lab = np.asarray(ann)
            assert lab.dtype == np.uint8 and lab.max() <= len(CLASSES)


def test_labels_on_disk_equal_generator_and_images_equal_coco(dataset, tmp_path):
    root, _ = dataset
    coco_root = str(tmp_path / "coco")
    synthetic_coco.generate_dataset(coco_root, **ARGS)
    for split, code in (("train", 0), ("val", 1)):
        for index in range(ARGS[f"num_{split}"]):
            stem = f"{index + 1:06d}"
            with open(os.path.join(root, "img_dir", split, stem + ".jpg"), "rb") as fh:
                ours = fh.read()
            with open(os.path.join(coco_root, split, stem + ".jpg"), "rb") as fh:
                assert fh.read() == ours  # byte-identical to the COCO dataset's image
            _, label = generate_image(np.random.default_rng([ARGS["seed"], code, index]),
                                      ARGS["image_size"])
            on_disk = np.asarray(Image.open(os.path.join(root, "ann_dir", split, stem + ".png")))
            np.testing.assert_array_equal(on_disk, label)


def test_same_args_give_identical_bytes(dataset, tmp_path):
    root, _ = dataset
    again = str(tmp_path / "again")
    generate_dataset(again, **ARGS)
    first, second = _files(root), _files(again)
    assert sorted(first) == sorted(second)
    for key in first:
        assert first[key] == second[key], key


def test_seed_changes_the_data(dataset, tmp_path):
    root, _ = dataset
    other = str(tmp_path / "seed4")
    generate_dataset(other, **dict(ARGS, seed=4))
    name = os.path.join("ann_dir", "train", "000001.png")
    with open(os.path.join(root, "img_dir", "train", "000001.jpg"), "rb") as a, \
            open(os.path.join(other, "img_dir", "train", "000001.jpg"), "rb") as b:
        assert a.read() != b.read()
    assert os.path.isfile(os.path.join(other, name))


def test_meta_and_dataset_is_current(dataset, tmp_path):
    root, paths = dataset
    with open(paths["meta"], encoding="utf-8") as fh:
        meta = json.load(fh)
    assert meta["classes"] == list(SEG_CLASSES)
    assert meta["args"]["image_size"] == list(ARGS["image_size"])
    height, width = ARGS["image_size"]
    for split in ("train", "val"):
        assert sum(meta["splits"][split]["pixels"]) == ARGS[f"num_{split}"] * height * width
        assert meta["splits"][split]["pixels"][0] > 0
    assert dataset_is_current(root, **ARGS)
    assert not dataset_is_current(root, **dict(ARGS, seed=4))
    assert not dataset_is_current(root, **dict(ARGS, num_val=4))
    assert not dataset_is_current(root, **dict(ARGS, image_size=96))
    assert not dataset_is_current(root, **dict(ARGS, num_train=0))  # invalid: False
    assert not dataset_is_current(str(tmp_path / "missing"), **ARGS)


def test_dataset_is_current_detects_a_changed_label(tmp_path):
    root = str(tmp_path / "ds")
    generate_dataset(root, **ARGS)
    assert dataset_is_current(root, **ARGS)
    path = os.path.join(root, "ann_dir", "val", "000002.png")
    lab = np.asarray(Image.open(path)).copy()
    lab[0, 0] = (int(lab[0, 0]) + 1) % 7
    Image.fromarray(lab, mode="L").save(path)
    assert not dataset_is_current(root, **ARGS)
    os.remove(path)
    assert not dataset_is_current(root, **ARGS)


def test_regenerating_removes_stale_files(tmp_path):
    root = str(tmp_path / "ds")
    generate_dataset(root, **dict(ARGS, num_train=5))
    generate_dataset(root, **dict(ARGS, num_train=2))
    assert sorted(os.listdir(os.path.join(root, "ann_dir", "train"))) == [
        "000001.png", "000002.png"]
    assert sorted(os.listdir(os.path.join(root, "img_dir", "train"))) == [
        "000001.jpg", "000002.jpg"]
    assert dataset_is_current(root, **dict(ARGS, num_train=2))


def test_refuses_foreign_directory_and_bad_args(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("keep me")
    with pytest.raises(ValueError):
        generate_dataset(str(foreign), **ARGS)
    assert (foreign / "x.txt").read_text() == "keep me"
    with pytest.raises(ValueError):
        generate_dataset(str(tmp_path / "a"), **dict(ARGS, num_train=0))
    with pytest.raises(ValueError):
        generate_dataset(str(tmp_path / "b"), **dict(ARGS, image_size=32))
    with pytest.raises(ValueError):
        synthetic_seg.generate_split(0, "test", 1, 64)


def test_cli_writes_and_skips(tmp_path):
    out = str(tmp_path / "cli")
    cmd = [sys.executable, os.path.join(REPO, "tools", "make_synthetic_seg.py"), "--out", out,
           "--seed", "1", "--num-train", "2", "--num-val", "1", "--image-size", "64",
           "--skip-if-current"]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "2 train / 1 val" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "already current" in second.stdout
    assert dataset_is_current(out, seed=1, num_train=2, num_val=1, image_size=64)


# ----------------------------------------------------------------- mmseg reads it
def test_mmseg_dataset_reads_it(dataset):
    pytest.importorskip("mmseg")
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    from igq_demo.seg_dataset import SyntheticShapesDataset

    root, _ = dataset
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                dict(type="PackSegInputs")]
    with DefaultScope.overwrite_default_scope("mmseg"):  # no global default scope left
        ds = DATASETS.build(dict(type="SyntheticShapesDataset", data_root=root,
                                 data_prefix=dict(img_path="img_dir/val",
                                                  seg_map_path="ann_dir/val"),
                                 pipeline=pipeline))
        sample = ds[0]
    assert isinstance(ds, SyntheticShapesDataset)
    assert len(ds) == ARGS["num_val"]
    assert ds.metainfo["classes"] == SEG_CLASSES
    seg = sample["data_samples"].gt_sem_seg.data.numpy()[0]
    _, expected = generate_image(np.random.default_rng([ARGS["seed"], 1, 0]),
                                 ARGS["image_size"])
    np.testing.assert_array_equal(seg, expected)  # reduce_zero_label off, no remapping
    assert tuple(sample["inputs"].shape) == (3,) + tuple(ARGS["image_size"])
