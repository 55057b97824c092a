"""scripts/visualize.py from a results json on a tiny generated image."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from detector.cli import run_cli
from scripts import visualize

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
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: visualize.main(["--results", str(tiny / "dets.json"), "--ann-file", str(tiny / "gt.json"),
                                        "--images", str(tiny / "images"), "--output-dir", str(tiny / "vis")]))
    assert e.value.code == 3 and "tiny.jpg not found" in capsys.readouterr().err  # a data error, one line


def test_class_colors_distinct_and_not_gt_green():
    colors = {visualize.class_color(c) for c in range(1, 91)}
    assert len(colors) == 90 and visualize.GT_COLOR not in colors


def test_from_a_release_file_without_config(tmp_path, coco_mini_dir):
    """Checkpoint mode runs evaluate.py's inference; a checkpoint that stores its config needs no --config."""
    from tests.inference_helpers import tiny_config, tiny_model, write_checkpoint

    cfg = tiny_config(dataset="coco", root=str(coco_mini_dir), val_ann="annotations/instances_val.json",
                      val_images="images")
    info = json.loads((coco_mini_dir / "annotations" / "instances_val.json").read_text())
    cats = sorted(info["categories"], key=lambda c: c["id"])
    cfg.model.num_classes = len(cats)
    ckpt = write_checkpoint(tmp_path / "last.pth", tiny_model(cfg, class_bias=0.0), cfg, with_classes=False,
                            extra={"class_names": [c["name"] for c in cats], "category_ids": [c["id"] for c in cats]})
    out = tmp_path / "vis"
    assert visualize.main(["--checkpoint", str(ckpt), "--split", "val", "--max-images", "2", "--output-dir",
                           str(out), "--score-thr", "0.3"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    first = info["images"][0]  # the split's order
    with Image.open(out / f"{first['file_name'].rsplit('.', 1)[0]}.png") as im, \
            Image.open(coco_mini_dir / "images" / first["file_name"]) as photo:
        assert im.size == (first["width"], first["height"])
        colours = {visualize.class_color(c["id"]) for c in cats}
        drawn = sum(1 for px in im.convert("RGB").getdata() if px in colours)
        assert drawn > 100  # boxes drawn (scores ~0.5 with a zero class bias)
        assert photo.size == im.size
