"""Bad input: each case raises one clear DataError naming the file / image, or is skipped with a warning."""
from __future__ import annotations

import io
import json
import logging
import math

import numpy as np
import pytest
from PIL import Image

from data.build import build_dataset, build_test_loader, build_train_loader, collate
from data.coco import BadSampleError, CocoDetection
from data.image_io import ImageDecodeError, end_marker_missing, read_image
from data.transforms import build_test_transform, build_train_transform
from data.validate import AnnotationError, validate_coco
from detector.config import DataCfg
from detector.errors import EXIT_CONFIG, EXIT_DATA, ConfigError, DataError, exit_code_for


def _noise(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _encoded(fmt: str, h: int = 40, w: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_noise(h, w)).save(buf, format=fmt)
    return buf.getvalue()


def _make(tmp_path, n: int = 6, edit=None):
    """A tiny valid COCO folder (48x40 PNGs of noise, one box each); ``edit(raw)`` may break the json."""
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    images, anns = [], []
    for i in range(n):
        Image.fromarray(_noise(seed=i)).save(img_dir / f"im{i}.png")
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
    with pytest.raises(DataError, match=r"data\.train_ann.*missing\.json") as e:
        build_dataset(cfg, "train")
    assert isinstance(e.value, FileNotFoundError) and exit_code_for(e.value) == EXIT_DATA
    ann, _ = _make(tmp_path)
    cfg = DataCfg(dataset="coco", root=str(tmp_path), val_ann=str(ann), val_images="no_such_dir")
    with pytest.raises(FileNotFoundError, match=r"data\.val_images.*no_such_dir"):
        build_dataset(cfg, "val")


def test_wrong_image_dir(tmp_path):
    ann, _ = _make(tmp_path)
    with pytest.raises(DataError, match="image folder not found.*elsewhere"):
        _ds(ann, tmp_path / "elsewhere")


def test_empty_and_invalid_annotation_file(tmp_path):
    cases = {"empty.json": ("", "the annotation file is empty"),
             "broken.json": ('{"images": [', "not valid JSON"),
             "nocats.json": ('{"images": [], "annotations": []}', "missing or invalid 'categories'"),
             "dupcats.json": ('{"images": [], "categories": [{"id": 1}, {"id": 1}]}', "unique integer 'id'"),
             "list.json": ("[1, 2]", "expected a JSON object")}
    for name, (text, msg) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(AnnotationError, match=rf"{name.replace('.', '[.]')}: .*{msg}") as e:
            CocoDetection(tmp_path / name, tmp_path)
        assert isinstance(e.value, ValueError) and exit_code_for(e.value) == EXIT_DATA


def test_annotation_pointing_to_missing_image(tmp_path, caplog):
    ann, img_dir = _make(tmp_path, edit=lambda raw: raw["annotations"].append(
        {"id": 77, "image_id": 999, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0}))
    with pytest.raises(AnnotationError, match=r"ann\.json: annotation 77 points to image id 999.*skip_bad_images"):
        _ds(ann, img_dir)
    with caplog.at_level(logging.WARNING):
        ds = _ds(ann, img_dir, skip_bad_images=True)
    assert len(ds) == 6 and 77 not in ds.coco.anns and ds.num_bad == 0
    assert any("annotation 77 points to image id 999" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, math.nan, 4], "1,2,3,4", [1, 2, "3", 4], None])
def test_bad_box_names_image_and_file(tmp_path, bbox, caplog):
    def edit(raw):
        raw["annotations"][2]["bbox"] = bbox
    ann, img_dir = _make(tmp_path, edit=edit)
    with pytest.raises(AnnotationError, match=r"annotation 1002 of image 102 \(im2\.png\): 'bbox' must be 4 finite"):
        _ds(ann, img_dir)
    with caplog.at_level(logging.WARNING):
        ds = _ds(ann, img_dir, skip_bad_images=True)
    assert 102 not in ds.ids and len(ds) == 5 and ds.num_bad == 1
    assert any("1 problems: 1 images skipped" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("edit, msg, skipped", [
    (lambda raw: raw["annotations"][0].update(category_id=12), r"image 100 \(im0\.png\): category_id 12 is not",
     {100}),
    (lambda raw: raw["annotations"][1].update(id=0), r"annotation 0 of image 101 .*integers >= 1", {101}),
    (lambda raw: raw["annotations"][1].update(id=-4), r"annotation -4 of image 101 .*integers >= 1", {101}),
    (lambda raw: raw["annotations"][1].update(id="a1"), r"annotation a1 of image 101 .*integers >= 1", {101}),
    (lambda raw: raw["annotations"][4].update(id=1001), r"annotation 1001 of image 101 .*used 2 times", {101, 104}),
    (lambda raw: raw["annotations"][2].update(iscrowd=2), r"image 102 .*'iscrowd' must be 0 or 1", {102}),
    (lambda raw: raw["annotations"][3].update(area="big"), r"image 103 .*'area' must be a finite number", {103}),
    (lambda raw: raw["images"][5].update(width=0), r"image 105 \(im5\.png\) needs a positive numeric 'width'", {105}),
    (lambda raw: raw["images"][4].pop("file_name"), r"image 104 has no 'file_name'", {104}),
])
def test_per_image_problems_raise_or_skip(tmp_path, edit, msg, skipped):
    ann, img_dir = _make(tmp_path, edit=edit)
    with pytest.raises(AnnotationError, match=msg):
        _ds(ann, img_dir)
    ds = _ds(ann, img_dir, skip_bad_images=True)
    assert set(ds.ids) == {100, 101, 102, 103, 104, 105} - skipped and ds.num_bad == len(skipped)
    assert set(ds.coco.imgs) == set(ds.ids)  # the evaluation index does not hold the skipped images either


def test_file_level_problems_are_fatal_even_in_skip_mode(tmp_path):
    ann, img_dir = _make(tmp_path, edit=lambda raw: raw["images"][3].update(id=100))
    for skip in (False, True):
        with pytest.raises(AnnotationError, match=r"ann\.json: duplicate image id 100 \(records 'im0\.png' and "
                                                  r"'im3\.png'\)"):
            _ds(ann, img_dir, skip_bad_images=skip)


def test_validator_reports_every_problem_count_and_requires_area_for_scoring(tmp_path):
    raw = json.loads(_make(tmp_path)[0].read_text())
    raw["annotations"][0]["bbox"] = None
    raw["annotations"][1]["id"] = 0
    with pytest.raises(AnnotationError, match=r"'bbox' must be .*\(and 1 more problems\)"):
        validate_coco(raw, "gt.json")
    check = validate_coco(raw, "gt.json", skip_bad=True)
    assert check.bad_image_ids == {100, 101} and len(check.problems) == 2
    del raw["annotations"][2]["area"]
    raw["annotations"][:2] = []
    validate_coco(raw, "gt.json")  # training computes a missing area as w * h
    with pytest.raises(AnnotationError, match=r"gt\.json: annotation 1002 of image 102 .*lacks \['area'\]"):
        validate_coco(raw, "gt.json", scoring=True)
    with pytest.raises(AnnotationError, match=r"lacks \['annotations'\]"):
        validate_coco({"images": [], "categories": [{"id": 1}]}, "gt.json", scoring=True)
    # scoring needs no image files: a record with only an id is fine there, not for training
    only_ids = {"images": [{"id": 1}], "categories": [{"id": 1}], "annotations": []}
    validate_coco(only_ids, "gt.json", scoring=True)
    with pytest.raises(AnnotationError, match="image 1 has no 'file_name'"):
        validate_coco(only_ids, "gt.json")


def test_missing_area_is_w_times_h(tmp_path):
    ann, img_dir = _make(tmp_path, edit=lambda raw: raw["annotations"][0].pop("area"))
    ds = _ds(ann, img_dir)
    assert ds.coco.anns[1000]["area"] == 20 * 18 and ds.coco.anns[1001]["area"] == 360


def test_missing_or_empty_image_file_found_when_the_dataset_is_built(tmp_path, caplog):
    ann, img_dir = _make(tmp_path)
    (img_dir / "im3.png").unlink()
    (img_dir / "im4.png").write_bytes(b"")
    with pytest.raises(BadSampleError, match=r"image 103: .*im3\.png: file missing .*ann\.json.*\(and 1 more "
                                             r"images\).*skip_bad_images") as e:
        _ds(ann, img_dir)
    assert exit_code_for(e.value) == EXIT_DATA
    with caplog.at_level(logging.WARNING):
        ds = _ds(ann, img_dir, skip_bad_images=True)
    assert ds.ids == [100, 101, 102, 105] and ds.num_bad == 2
    assert any("2 image files are missing or empty" in r.getMessage() for r in caplog.records)


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


@pytest.mark.parametrize("fmt, suffix", [("JPEG", "jpg"), ("PNG", "png")])
@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_image_is_refused_not_decoded_grey(tmp_path, fmt, suffix, fraction):
    data = _encoded(fmt)

    def edit(raw):
        raw["images"][2]["file_name"] = f"cut.{suffix}"
    ann, img_dir = _make(tmp_path, edit=edit)
    (img_dir / f"cut.{suffix}").write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(BadSampleError, match=rf"image 102: .*cut\.{suffix}: truncated {fmt}.*ann\.json"):
        _ds(ann, img_dir)[2]
    evaluation = _ds(ann, img_dir, skip_bad_images=True)
    assert evaluation[2] is None and evaluation.num_bad == 1


def test_whole_images_decode_exactly_and_bytes_after_the_end_marker_are_accepted(tmp_path):
    for fmt in ("JPEG", "PNG"):
        data = _encoded(fmt)
        assert end_marker_missing(data) is None
        (tmp_path / "a").write_bytes(data)
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[..., ::-1]
        got = read_image(tmp_path / "a")
        if fmt == "PNG":
            np.testing.assert_array_equal(got, ref)  # lossless: the decoded pixels are the saved noise
            np.testing.assert_array_equal(got[..., ::-1], _noise())
        else:
            assert np.abs(got.astype(int) - ref.astype(int)).max() <= 2  # two libjpeg builds may round differently
        (tmp_path / "b").write_bytes(data + b"camera maker notes" * 8)  # complete image with trailing bytes
        assert end_marker_missing((tmp_path / "b").read_bytes()) is not None
        np.testing.assert_array_equal(read_image(tmp_path / "b"), got)
    (tmp_path / "c").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file"):
        read_image(tmp_path / "c")


def test_image_size_differs_from_json(tmp_path):
    ann, img_dir = _make(tmp_path)
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(img_dir / "im4.png")
    with pytest.raises(BadSampleError, match=r"image 104: .*im4\.png is 30x30 but .*ann\.json says 48x40"):
        _ds(ann, img_dir)[4]


def test_num_classes_must_match_the_categories(tmp_path):
    ann, img_dir = _make(tmp_path)
    cfg = DataCfg(dataset="coco", root=str(tmp_path), val_ann=str(ann), val_images=str(img_dir), min_size=1)
    assert len(build_dataset(cfg, "val", num_classes=1)) == 6
    with pytest.raises(ConfigError, match=r"model\.num_classes is 80 but .*ann\.json declares 1 categories "
                                          r"\(thing\); set model\.num_classes=1") as e:
        build_dataset(cfg, "val", num_classes=80)
    assert exit_code_for(e.value) == EXIT_CONFIG


def test_all_bad_batch_is_none_and_never_reaches_the_model(tmp_path, caplog):
    ann, img_dir = _make(tmp_path, n=5)
    for i in (2, 3):
        (img_dir / f"im{i}.png").write_bytes(_encoded("PNG")[:100])
    cfg = DataCfg(dataset="coco", root=str(tmp_path), val_ann=str(ann), val_images=str(img_dir), test_short=40,
                  test_max=48, test_batch_size=2, num_workers=0, min_size=1, skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        batches = list(build_test_loader(cfg, build_dataset(cfg, "val")))
    assert [None if b is None else [t["image_id"] for t in b[1]] for b in batches] == [[100, 101], None, [104]]
    assert any("a batch of 2 images all skipped" in r.getMessage() for r in caplog.records)
    assert collate([None]) is None


def test_skip_mode_never_crashes_mid_epoch(tmp_path):
    ann, img_dir = _make(tmp_path, n=8)
    (img_dir / "im2.png").write_bytes(b"garbage")
    (img_dir / "im5.png").write_bytes(_encoded("PNG")[:300])
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


def test_worker_error_keeps_its_one_line_message(tmp_path):
    ann, img_dir = _make(tmp_path, n=4)
    (img_dir / "im1.png").write_bytes(_encoded("PNG")[:200])
    cfg = DataCfg(dataset="coco", root=str(tmp_path), val_ann=str(ann), val_images=str(img_dir), test_short=40,
                  test_max=48, test_batch_size=2, num_workers=1, min_size=1)
    with pytest.raises(BadSampleError) as e:
        list(build_test_loader(cfg, build_dataset(cfg, "val")))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("image 101: ") and "truncated PNG" in msg
    assert "Traceback" in str(e.value.__cause__)  # the worker's traceback is kept for the log
