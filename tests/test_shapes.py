"""The built-in synthetic shapes dataset: content, determinism, caching and atomic writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import data.shapes as shapes
from data.build import build_dataset
from data.coco import CocoDetection
from data.shapes import CLASSES, ensure_shapes_dataset
from detector.config import DataCfg


def _load(root, split="train"):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


@pytest.fixture(scope="module")
def default_like(tmp_path_factory):
    """60 training images at the default 128 px."""
    return ensure_shapes_dataset(tmp_path_factory.mktemp("shp") / "set", num_train=60, num_val=10, image_size=128)


def test_content(default_like):
    raw = _load(default_like)
    assert [(c["id"], c["name"]) for c in raw["categories"]] == list(enumerate(CLASSES, start=1))
    assert len(raw["images"]) == 60
    ids = [im["id"] for im in raw["images"]] + [im["id"] for im in _load(default_like, "val")["images"]]
    assert len(set(ids)) == 70  # unique across splits
    per_image = {im["id"]: 0 for im in raw["images"]}
    for a in raw["annotations"]:
        per_image[a["image_id"]] += 1
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128 and w >= 8 and h >= 4
        assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
    assert 1 <= sum(n == 0 for n in per_image.values()) <= 12  # a few empty images
    assert max(per_image.values()) >= 4
    sizes = [a["bbox"][2] for a in raw["annotations"]]
    assert min(sizes) < 0.15 * 128 and max(sizes) > 0.4 * 128  # small to large
    assert {a["category_id"] for a in raw["annotations"]} == {1, 2, 3, 4}


def test_squares_are_solid_and_tight(default_like):
    """An unoccluded square's box holds one flat colour (plus the mild noise) and the ring outside differs."""
    raw = _load(default_like)
    by_image: dict[int, list] = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    checked = 0
    for im in raw["images"]:
        anns = by_image.get(im["id"], [])
        pixels = np.asarray(Image.open(default_like / "images" / im["file_name"]), dtype=np.float32)
        for a in anns:
            x, y, w, h = (int(v) for v in a["bbox"])
            others = [b["bbox"] for b in anns if b is not a]
            if a["category_id"] != 2 or any(ox < x + w + 1 and x - 1 < ox + ow and oy < y + h + 1 and y - 1 < oy + oh
                                            for ox, oy, ow, oh in others):
                continue
            inside = pixels[y:y + h, x:x + w].reshape(-1, 3)
            assert inside.std(0).max() < 10
            ring = [pixels[y + h // 2, x - 1] if x > 0 else None, pixels[y + h // 2, x + w] if x + w < 128 else None]
            for px in ring:
                if px is not None:
                    assert np.abs(px - inside.mean(0)).sum() > 40
            checked += 1
    assert checked >= 5


def test_deterministic_by_seed(tmp_path):
    a = ensure_shapes_dataset(tmp_path / "a", num_train=6, num_val=2, image_size=48, seed=3)
    b = ensure_shapes_dataset(tmp_path / "b", num_train=6, num_val=2, image_size=48, seed=3)
    c = ensure_shapes_dataset(tmp_path / "c", num_train=6, num_val=2, image_size=48, seed=4)
    for split in ("train", "val"):
        assert _load(a, split) == _load(b, split)
    assert (a / "images" / "train_00003.png").read_bytes() == (b / "images" / "train_00003.png").read_bytes()
    assert (a / "images" / "train_00003.png").read_bytes() != (c / "images" / "train_00003.png").read_bytes()


def test_written_once_and_regenerated_on_new_parameters(tmp_path):
    root = tmp_path / "set"
    ensure_shapes_dataset(root, num_train=4, num_val=2, image_size=32)
    marker = root / "marker"
    marker.write_text("kept")
    ensure_shapes_dataset(root, num_train=4, num_val=2, image_size=32)
    assert marker.exists()  # same parameters: untouched
    ensure_shapes_dataset(root, num_train=5, num_val=2, image_size=32)
    assert not marker.exists() and len(_load(root)["images"]) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temporary folders left


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real = shapes.generate_shapes_dataset

    def crash(out_dir, *args):
        real(out_dir, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "generate_shapes_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_dataset(tmp_path / "set", num_train=3, num_val=1, image_size=32)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="data.root"):
        ensure_shapes_dataset(tmp_path / "mine", num_train=2, num_val=1, image_size=32)
    assert (tmp_path / "mine" / "photo.jpg").exists()


def test_loads_through_build_dataset(tmp_path):
    cfg = DataCfg(dataset="shapes", root=str(tmp_path / "s"), train_size=64, test_short=64, test_max=100)
    cfg.shapes.num_train, cfg.shapes.num_val, cfg.shapes.image_size = 12, 4, 64
    train, val, test = (build_dataset(cfg, s) for s in ("train", "val", "test"))
    assert isinstance(train, CocoDetection) and train.class_names == list(CLASSES)
    assert len(val) == len(test) == 4 and train.train and not val.train
    image, target = train[(0, 1)]
    assert image.shape == (3, 64, 64)
