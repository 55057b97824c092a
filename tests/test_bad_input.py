"""Bad input: each case raises one clear error naming the file / image, or is skipped with a warning."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from PIL import Image

from data.build import build_dataset, build_test_loader, build_train_loader
from data.coco import BadSampleError, CocoDetection
from data.transforms import build_test_transform, build_train_transform
from detector.config import DataCfg


def _make(tmp_path, n: int = 6, edit=None):
    """A tiny valid COCO folder (48x40 PNGs, one box each); ``edit(raw)`` may break the json."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(img_dir / f"im{i}.png")
        images.append({"id": 100 + i, "file_name": f"im{i}.png", "width": 48, "height": 40})
        anns.append({"id": 1000 + i, "image_id": 100 + i, "category_id": 3, "bbox": [4, 5, 20, 18], "area": 360,
                     "iscrowd": 0})
    raw = {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "thing"}]}
    if edit:
        edit(raw)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(raw))
    return ann, img_dir


def _ds(ann, img_dir, **kw):
    kw.setdefault("transforms", build_test_transform(40, 48))
    kw.setdefault("min_size", 1)
    return CocoDetection(ann, img_dir, **kw)


def test_wrong_annotation_path_names_file_and_config_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(tmp_path / "nope.json", tmp_path)
    cfg = DataCfg(dataset="coco", root=str(tmp_path), train_ann="annotations/missing.json")
    with pytest.raises(FileNotFoundError, match=r"data\.train_ann.*missing\.json"):
        build_dataset(cfg, "train")
    ann, _ = _make(tmp_path)
    cfg = DataCfg(dataset="coco", root=str(tmp_path), val_ann=str(ann), val_images="no_such_dir")
    with pytest.raises(FileNotFoundError, match=r"data\.val_images.*no_such_dir"):
        build_dataset(cfg, "val")


def test_wrong_image_dir(tmp_path):
    ann, _ = _make(tmp_path)
    with pytest.raises(FileNotFoundError, match="image folder not found.*elsewhere"):
        _ds(ann, tmp_path / "elsewhere")


def test_empty_and_invalid_annotation_file(tmp_path):
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match=r"empty\.json: the annotation file is empty"):
        CocoDetection(tmp_path / "empty.json", tmp_path)
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        CocoDetection(tmp_path / "broken.json", tmp_path)
    (tmp_path / "nocats.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(ValueError, match=r"nocats\.json: missing or invalid 'categories'"):
        CocoDetection(tmp_path / "nocats.json", tmp_path)
    (tmp_path / "dupcats.json").write_text('{"images": [], "categories": [{"id": 1}, {"id": 1}]}')
    with pytest.raises(ValueError, match=r"dupcats\.json: every category needs a unique integer 'id'"):
        CocoDetection(tmp_path / "dupcats.json", tmp_path)


def test_annotation_pointing_to_missing_image(tmp_path, caplog):
    ann, img_dir = _make(tmp_path, edit=lambda raw: raw["annotations"].append(
        {"id": 77, "image_id": 999, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0}))
    with pytest.raises(ValueError, match=r"ann\.json: annotation 77 points to image id 999"):
        _ds(ann, img_dir)
    with caplog.at_level(logging.WARNING, logger="data.coco"):
        ds = _ds(ann, img_dir, skip_bad_images=True)
    assert len(ds) == 6 and 77 not in ds.coco.anns
    assert any("annotation 77 points to image id 999" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, math.nan, 4], "1,2,3,4", [1, 2, "3", 4], None])
def test_bad_box_names_image_and_file(tmp_path, bbox, caplog):
    def edit(raw):
        raw["annotations"][2]["bbox"] = bbox
    ann, img_dir = _make(tmp_path, edit=edit)
    with pytest.raises(ValueError, match=r"annotation 1002 of image 102 \(im2\.png\): 'bbox' must be 4 finite"):
        _ds(ann, img_dir)
    with caplog.at_level(logging.WARNING, logger="data.coco"):
        ds = _ds(ann, img_dir, skip_bad_images=True)
    assert 102 not in ds.ids and len(ds) == 5 and ds.num_bad == 1
    assert any("1 bad annotations" in r.getMessage() for r in caplog.records)


def test_unknown_category(tmp_path):
    def edit(raw):
        raw["annotations"][0]["category_id"] = 12
    ann, img_dir = _make(tmp_path, edit=edit)
    with pytest.raises(ValueError, match=r"image 100 \(im0\.png\): category_id 12 is not in 'categories'"):
        _ds(ann, img_dir)


def test_missing_image_file(tmp_path, caplog):
    ann, img_dir = _make(tmp_path)
    (img_dir / "im3.png").unlink()
    ds = _ds(ann, img_dir)
    with pytest.raises(BadSampleError, match=r"image 103: .*im3\.png: file missing"):
        ds[3]
    with caplog.at_level(logging.WARNING, logger="data.coco"):
        ds = _ds(ann, img_dir, skip_bad_images=True)
    assert 103 not in ds.ids and len(ds) == 5 and ds.num_bad == 1
    assert any("im3.png" in r.getMessage() for r in caplog.records)


def test_unreadable_image(tmp_path, caplog):
    ann, img_dir = _make(tmp_path)
    (img_dir / "im1.png").write_bytes(b"not a png at all")
    with pytest.raises(BadSampleError, match=r"image 101: .*im1\.png: cannot be decoded"):
        _ds(ann, img_dir)[1]
    train = _ds(ann, img_dir, transforms=build_train_transform(32), train=True, skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="data.coco"):
        image, target = train[(1, 5)]
    assert target["image_id"] == 102 and image.shape == (3, 32, 32) and train.num_bad == 1  # replaced by the next
    assert any("im1.png" in r.getMessage() and "1 so far" in r.getMessage() for r in caplog.records)
    evaluation = _ds(ann, img_dir, skip_bad_images=True)
    assert evaluation[1] is None  # evaluation drops it instead of duplicating another image


def test_image_size_differs_from_json(tmp_path):
    ann, img_dir = _make(tmp_path)
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(img_dir / "im4.png")
    with pytest.raises(BadSampleError, match=r"image 104: .*im4\.png is 30x30 but .*ann\.json says 48x40"):
        _ds(ann, img_dir)[4]


def test_skip_mode_never_crashes_mid_epoch(tmp_path):
    ann, img_dir = _make(tmp_path, n=8)
    (img_dir / "im2.png").write_bytes(b"garbage")
    (img_dir / "im5.png").write_bytes(b"")
    cfg = DataCfg(dataset="coco", root=str(tmp_path), train_ann=str(ann), train_images=str(img_dir), val_ann=str(ann),
                  val_images=str(img_dir), train_size=32, test_short=40, test_max=48, batch_size=2,
                  test_batch_size=4, num_workers=0, min_size=1, skip_bad_images=True)
    ds = build_dataset(cfg, "train")
    loader, sampler = build_train_loader(cfg, ds, seed=0)
    sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 4 and all(images.shape == (2, 3, 32, 32) for images, _ in batches)
    ids = [t["image_id"] for _, targets in batches for t in targets]
    assert 102 not in ids and 105 not in ids
    seen = [t["image_id"] for _, targets in build_test_loader(cfg, build_dataset(cfg, "val")) for t in targets]
    assert seen == [100, 101, 103, 104, 106, 107]
