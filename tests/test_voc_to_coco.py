"""scripts/voc_to_coco.py on a tiny VOC folder built in tmp_path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.coco import CocoDetection
from scripts import voc_to_coco


def _xml(name: str, w: int, h: int, objects: list[tuple]) -> str:
    objs = "".join(
        f"<object><name>{cls}</name><difficult>{int(diff)}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>" for cls, x0, y0, x1, y1, diff in objects)
    return (f"<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objs}</annotation>")


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "VOC"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    specs = {
        "a": (64, 48, [("dog", 1, 1, 20, 30, False), ("cat", 30, 10, 60, 40, True)]),
        "b": (50, 40, [("cat", 5, 6, 45, 35, False), ("dog", 10, 10, 10, 20, False)]),  # second: degenerate
        "c": (40, 40, [("bird", 2, 2, 30, 30, False)]),  # not in the split
    }
    for stem, (w, h, objs) in specs.items():
        Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(_xml(stem, w, h, objs))
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    return root


def test_convert_discovered_classes(voc, tmp_path, capsys):
    out = tmp_path / "train.json"
    assert voc_to_coco.main([str(voc), "--split", "train", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "cat"), (2, "dog")]  # sorted, from the split
    assert [(im["id"], im["file_name"], im["width"], im["height"]) for im in data["images"]] == [
        (1, "a.jpg", 64, 48), (2, "b.jpg", 50, 40)]
    anns = data["annotations"]
    assert len(anns) == 3  # the degenerate box is dropped
    assert anns[0]["bbox"] == [0.0, 0.0, 20.0, 30.0] and anns[0]["category_id"] == 2 and anns[0]["iscrowd"] == 0
    assert anns[1]["bbox"] == [29.0, 9.0, 31.0, 31.0] and anns[1]["iscrowd"] == 1  # difficult -> crowd
    assert anns[1]["area"] == 31.0 * 31.0
    assert "1 difficult -> iscrowd" in capsys.readouterr().out
    ds = CocoDetection(out, voc / "JPEGImages", train=True, min_size=1)
    image, target = ds[0]
    assert target["labels"].tolist() == [1] and len(target["crowd_boxes"]) == 1  # difficult is not a training box


def test_class_list_fixes_ids_and_rejects_unknown(voc, tmp_path):
    data = voc_to_coco.convert_voc(voc, "train", classes=["dog", "cat", "bird"])
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "dog"), (2, "cat"), (3, "bird")]
    assert data["annotations"][0]["category_id"] == 1
    with pytest.raises(ValueError, match=r"a\.xml: class 'cat' is not in the class list"):
        voc_to_coco.convert_voc(voc, "train", classes=["dog"])


def test_missing_pieces_are_named(voc):
    (voc / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="image of b not found"):
        voc_to_coco.convert_voc(voc, "train")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt"):
        voc_to_coco.convert_voc(voc, "val")
