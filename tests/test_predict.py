"""predict.py: inputs as files, folders and globs; COCO-style output with class names; drawings; bad images."""
from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

import predict
from detector.cli import run_cli
from detector.draw import class_color
from tests.inference_helpers import CATEGORY_IDS, CLASS_NAMES, photos, tiny_config, tiny_model, write_checkpoint


@pytest.fixture
def setup(tmp_path, shared_dir):
    cfg = tiny_config()
    ckpt = write_checkpoint(tmp_path / "last.pth", tiny_model(cfg), cfg)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in photos(shared_dir, 2):
        shutil.copy(p, folder / p.name)
    return ckpt, folder


def test_find_images_files_folders_globs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.jpg", "a/y.PNG", "a/notes.txt", "b.jpeg"):
        (tmp_path / name).write_bytes(b"")
    found, unmatched = predict.find_images([str(tmp_path / "a"), str(tmp_path / "*.jpeg"), str(tmp_path / "a/x.jpg"),
                                            str(tmp_path / "nothing*.png")])
    assert [p.name for p in found] == ["x.jpg", "y.PNG", "b.jpeg"]  # folder (images only), glob, duplicate dropped
    assert unmatched == [str(tmp_path / "nothing*.png")]


def test_predict_writes_coco_json_and_drawings_and_skips_bad_images(setup, tmp_path, capsys):
    ckpt, folder = setup
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")  # a truncated / bad file
    out = tmp_path / "out"
    rc = predict.main(["--checkpoint", str(ckpt), str(folder), "--draw", "--output-dir", str(out),
                       "--score-thr", "0.2", "--batch-size", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "skipped" in err
    res = json.loads((out / "detections.json").read_text())
    assert [c["name"] for c in res["categories"]] == CLASS_NAMES and [c["id"] for c in res["categories"]] == CATEGORY_IDS
    assert len(res["images"]) == 2 and res["info"]["skipped"] == [str(folder / "broken.jpg")]
    anns = res["annotations"]
    assert anns and all(a["score"] >= 0.2 for a in anns)
    names = dict(zip(CATEGORY_IDS, CLASS_NAMES))
    for a in anns:
        assert a["category_name"] == names[a["category_id"]]
        img = next(i for i in res["images"] if i["id"] == a["image_id"])
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-3 and y + h <= img["height"] + 1e-3
    # pycocotools reads it as a dataset
    from pycocotools.coco import COCO
    assert len(COCO(str(out / "detections.json")).getAnnIds()) == len(anns)
    # one PNG per readable image, same size as the photo, the best box's outline in its class colour
    best = max(anns, key=lambda a: a["score"])
    img = next(i for i in res["images"] if i["id"] == best["image_id"])
    png = out / (folder / img["file_name"]).with_suffix(".png").name
    assert sorted(p.name for p in out.glob("*.png")) == sorted(p.with_suffix(".png").name
                                                               for p in folder.glob("*.jpg") if p.name != "broken.jpg")
    with Image.open(png) as im:
        assert im.size == (img["width"], img["height"])
        x, y, w, h = best["bbox"]
        px = im.convert("RGB").load()
        assert px[int(x + w / 2), int(min(y + h, img["height"] - 1))] == class_color(best["category_id"])


def test_score_threshold_filters(setup, tmp_path):
    ckpt, folder = setup
    counts = []
    for thr in ("0.1", "0.25"):
        out = tmp_path / thr
        assert predict.main(["--checkpoint", str(ckpt), str(folder), "--output-dir", str(out), "--score-thr", thr]) == 0
        counts.append(len(json.loads((out / "detections.json").read_text())["annotations"]))
    assert counts[0] > counts[1]


def test_no_images_is_a_data_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: predict.main(["--checkpoint", str(tmp_path / "x.pth"), str(tmp_path / "none*.jpg")]))
    assert e.value.code == 3 and "no images found" in capsys.readouterr().err
