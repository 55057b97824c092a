"""scripts/visualize.py from a results json on a tiny generated image."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("visualize", REPO / "scripts" / "visualize.py")
visualize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(visualize)

GRAY = (128, 128, 128)


@pytest.fixture
def tiny(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (80, 60), GRAY).save(images / "tiny.jpg", quality=100)
    gt = {"images": [{"id": 7, "width": 80, "height": 60, "file_name": "tiny.jpg"}],
          "categories": [{"id": 5, "name": "blob"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 10, 20, 15], "area": 300,
                           "iscrowd": 0}]}
    dets = [{"image_id": 7, "category_id": 5, "bbox": [12, 8, 30, 20], "score": 0.9},
            {"image_id": 7, "category_id": 5, "bbox": [50, 35, 10, 10], "score": 0.1}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    return tmp_path


def _close(pixel, color, tol=40):  # the source image is a JPEG: allow small deviations
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, color))


def test_draws_detections_and_gt(tiny):
    out = tiny / "vis"
    rc = visualize.main(["--results", str(tiny / "dets.json"), "--ann-file", str(tiny / "gt.json"), "--images",
                         str(tiny / "images"), "--output-dir", str(out), "--show-gt", "--score-thr", "0.3"])
    assert rc == 0
    with Image.open(out / "tiny.png") as im:
        assert im.size == (80, 60)
        px = im.convert("RGB").load()
        color = visualize.class_color(5)
        assert px[27, 28] == color and px[12, 26] == color  # bottom and left edges of the detection [12, 8, 30, 20]
        assert px[11, 25] == visualize.GT_COLOR  # bottom edge of the GT box [10, 10, 20, 15]
        assert _close(px[50, 40], GRAY)  # the 0.1-score detection is below --score-thr: not drawn
        assert _close(px[70, 5], GRAY)  # background untouched


def test_without_gt_leaves_gt_edges_alone(tiny):
    out = tiny / "vis"
    assert visualize.main(["--results", str(tiny / "dets.json"), "--ann-file", str(tiny / "gt.json"), "--images",
                           str(tiny / "images"), "--output-dir", str(out), "--score-thr", "0.05"]) == 0
    with Image.open(out / "tiny.png") as im:
        px = im.convert("RGB").load()
        assert _close(px[11, 25], GRAY)
        assert px[50, 44] == visualize.class_color(5)  # the low-score detection now drawn (left edge)


def test_missing_image_is_a_clear_error(tiny, capsys):
    (tiny / "images" / "tiny.jpg").unlink()
    rc = visualize.main(["--results", str(tiny / "dets.json"), "--ann-file", str(tiny / "gt.json"), "--images",
                         str(tiny / "images"), "--output-dir", str(tiny / "vis")])
    assert rc == 2 and "tiny.jpg not found" in capsys.readouterr().err


def test_class_colors_distinct_and_not_gt_green():
    colors = {visualize.class_color(c) for c in range(1, 91)}
    assert len(colors) == 90 and visualize.GT_COLOR not in colors
