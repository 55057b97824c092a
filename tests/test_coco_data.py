"""COCO reader on the real shared datasets: label maps, crowd, int64 ids, filters, test-time scale factors."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from data.coco import CocoDetection
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform, build_train_transform


def _mini(coco_mini_dir, split, **kw):
    return CocoDetection(coco_mini_dir / "annotations" / f"instances_{split}.json", coco_mini_dir / "images", **kw)


def test_label_mapping_round_trip(coco_mini_dir):
    ds = _mini(coco_mini_dir, "val")
    raw = json.loads((coco_mini_dir / "annotations" / "instances_val.json").read_text())
    declared = sorted(c["id"] for c in raw["categories"])
    assert ds.cat_ids == declared and len(ds.cat_ids) == 80 and ds.cat_ids[-1] == 90
    assert ds.label_to_cat_id == declared
    for cat_id in declared:
        assert ds.label_to_cat_id[ds.cat_id_to_label[cat_id]] == cat_id
    assert [ds.cat_id_to_label[c] for c in declared] == list(range(80))
    names = {c["id"]: c["name"] for c in raw["categories"]}
    assert ds.class_names == [names[c] for c in declared]
    assert ds.class_names[ds.cat_id_to_label[90]] == "toothbrush"
    # every training label maps back to the category of the annotation it came from
    for i in range(len(ds)):
        boxes, labels, crowd = ds.annotations(i)
        anns = [a for a in ds.coco.imgToAnns[ds.ids[i]]]
        xyxy = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                         for a in anns])
        np.testing.assert_allclose(boxes, xyxy)
        assert [ds.label_to_cat_id[k] for k in labels] == [a["category_id"] for a in anns]
        assert crowd.tolist() == [bool(a["iscrowd"]) for a in anns]


def test_int64_ids_survive(coco_mini_dir):
    ds = _mini(coco_mini_dir, "train")
    big = [aid for aid in ds.coco.anns if aid > 2**32]
    assert big and 900100129648 in big  # crowd annotation ids of real COCO
    assert ds.coco.loadAnns([900100129648])[0]["image_id"] == 129648
    assert all(isinstance(i, int) for i in ds.ids) and max(ds.ids) == max(ds.coco.imgs)
    _, target = ds[ds.ids.index(129648)]
    assert target["image_id"] == 129648 and isinstance(target["image_id"], int)


def test_crowd_boxes_kept_apart(coco_mini_dir):
    for split, n_boxes, n_crowd in (("train", 226, 4), ("val", 340, 6)):  # counts from the dataset README
        ds = _mini(coco_mini_dir, split, train=split == "train")
        crowd_total = sum(int(ds.annotations(i)[2].sum()) for i in range(len(ds)))
        box_total = sum(int((~ds.annotations(i)[2]).sum()) for i in range(len(ds)))
        assert (box_total, crowd_total, ds.num_dropped_boxes) == (n_boxes, n_crowd, 0)
    ds = _mini(coco_mini_dir, "train", transforms=build_test_transform(500, 833))
    index = ds.ids.index(129648)
    image, target = ds[index]
    anns = ds.coco.imgToAnns[129648]
    crowd = [a for a in anns if a["iscrowd"]]
    assert len(target["boxes"]) == len(anns) - len(crowd) and len(target["crowd_boxes"]) == len(crowd) == 1
    x, y, w, h = crowd[0]["bbox"]
    sx, sy = target["scale_factor"].tolist()
    np.testing.assert_allclose(target["crowd_boxes"][0].numpy() / [sx, sy, sx, sy], [x, y, x + w, y + h], atol=1e-2)


def test_test_time_scale_factors_map_boxes_back(coco_mini_dir):
    ds = _mini(coco_mini_dir, "val", transforms=build_test_transform(500, 833))
    for i in range(0, len(ds), 3):
        image, t = ds[i]
        info = ds.coco.imgs[t["image_id"]]
        h, w = info["height"], info["width"]
        assert t["orig_size"].tolist() == [h, w]
        s = min(833 / max(h, w), 500 / min(h, w))
        expected = [int(h * s + 0.5), int(w * s + 0.5)]
        assert t["img_size"].tolist() == expected and list(image.shape[1:]) == expected
        sx, sy = t["scale_factor"].tolist()
        boxes, _, crowd = ds.annotations(i)
        back = t["boxes"].double().numpy() / np.array([sx, sy, sx, sy])
        np.testing.assert_allclose(back, boxes[~crowd], atol=2e-3)


def test_image_is_normalised_rgb(coco_mini_dir):
    import cv2
    ds = _mini(coco_mini_dir, "val", transforms=None)
    image, t = ds[0]
    bgr = cv2.imread(str(ds.image_path(0)))
    rgb = bgr[..., ::-1].astype(np.float32)
    ref = (rgb - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)
    assert image.dtype == torch.float32 and image.shape == (3, *bgr.shape[:2])
    np.testing.assert_allclose(image.numpy().transpose(1, 2, 0), ref, atol=1e-4)
    assert t["scale_factor"].tolist() == [1.0, 1.0]


def test_train_sample_from_real_coco(coco_mini_dir):
    ds = _mini(coco_mini_dir, "train", transforms=build_train_transform(512), train=True)
    for seed in range(6):
        image, t = ds[(seed % len(ds), seed)]
        assert image.shape == (3, 512, 512)
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert len(t["boxes"]) == len(t["labels"]) and all(0 <= k < 80 for k in t["labels"].tolist())


def test_testdev_json_without_annotations(coco_mini_dir, tmp_path):
    raw = json.loads((coco_mini_dir / "annotations" / "instances_val.json").read_text())
    info = {"images": raw["images"], "categories": raw["categories"]}
    path = tmp_path / "image_info_test-dev.json"
    path.write_text(json.dumps(info))
    ds = CocoDetection(path, coco_mini_dir / "images", build_test_transform(), train=False)
    assert len(ds) == 31 and ds.cat_ids == sorted(c["id"] for c in raw["categories"])
    image, t = ds[0]
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and image.shape[0] == 3


def test_train_filter_like_release(coco_mini_dir, tmp_path):
    raw = json.loads((coco_mini_dir / "annotations" / "instances_train.json").read_text())
    keep_anns = []
    crowd_only = 129648
    no_ann = raw["images"][0]["id"] if raw["images"][0]["id"] != crowd_only else raw["images"][1]["id"]
    for a in raw["annotations"]:
        if a["image_id"] == no_ann or (a["image_id"] == crowd_only and not a["iscrowd"]):
            continue
        keep_anns.append(a)
    raw["annotations"] = keep_anns
    path = tmp_path / "train.json"
    path.write_text(json.dumps(raw))
    ds = CocoDetection(path, coco_mini_dir / "images", train=True)
    assert no_ann not in ds.ids and crowd_only in ds.ids and len(ds) == 21
    assert len(CocoDetection(path, coco_mini_dir / "images", train=True, filter_empty=False)) == 22
    assert len(CocoDetection(path, coco_mini_dir / "images", train=False)) == 22
    ds = CocoDetection(path, coco_mini_dir / "images", train=True, min_size=400)
    expected = [im["id"] for im in raw["images"] if im["id"] != no_ann and min(im["width"], im["height"]) >= 400]
    assert ds.ids == expected and 0 < len(expected) < 21


def test_degenerate_boxes_dropped_and_counted(coco_mini_dir, tmp_path, caplog):
    raw = json.loads((coco_mini_dir / "annotations" / "instances_val.json").read_text())
    img = raw["images"][0]
    base = dict(image_id=img["id"], category_id=1, iscrowd=0, area=10.0)
    raw["annotations"] += [
        dict(base, id=1, bbox=[10, 10, 0.5, 20]),  # w < 1
        dict(base, id=2, bbox=[10, 10, 20, 0]),  # h < 1
        dict(base, id=3, bbox=[img["width"] + 5, 10, 20, 20]),  # outside the image
        dict(base, id=4, bbox=[10, 10, 20, 20], area=0),  # area <= 0
        dict(base, id=5, bbox=[-10, -10, 30, 30]),  # partly outside: kept
    ]
    path = tmp_path / "val.json"
    path.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING, logger="data.coco"):
        ds = CocoDetection(path, coco_mini_dir / "images")
    assert ds.num_dropped_boxes == 4
    assert sum("dropped 4 boxes" in r.getMessage() for r in caplog.records) == 1
    boxes, _, _ = ds.annotations(ds.ids.index(img["id"]))
    assert [-10, -10, 20, 20] in boxes.tolist()
    _, t = ds[ds.ids.index(img["id"])]
    assert t["boxes"].min() >= 0  # clipped to the image when loaded


def test_bccd(bccd_dir):
    ds = CocoDetection(bccd_dir / "annotations" / "instances_train.json", bccd_dir / "images",
                       build_train_transform(512), train=True)
    assert len(ds) == 205 and ds.class_names == ["RBC", "WBC", "Platelets"] and ds.cat_ids == [1, 2, 3]
    total = sum(len(ds.annotations(i)[0]) for i in range(len(ds)))
    assert total == 2800 and ds.num_dropped_boxes == 0
    image, t = ds[(0, 0)]
    assert image.shape == (3, 512, 512) and set(t["labels"].tolist()) <= {0, 1, 2}
    val = CocoDetection(bccd_dir / "annotations" / "instances_val.json", bccd_dir / "images", build_test_transform())
    image, t = val[0]
    assert image.shape == (3, 500, 667) and t["scale_factor"].tolist() == pytest.approx([667 / 640, 500 / 480])


def test_truncated_real_photo_is_refused_where_opencv_decodes_it_grey(bccd_dir, tmp_path, caplog):
    """A BCCD JPEG cut at half its bytes: cv2.imread returns a full-size image (the lower half filled in), the
    dataset refuses it with the file and image id, or skips it in skip mode."""
    import cv2

    from data.coco import BadSampleError

    raw = json.loads((bccd_dir / "annotations" / "instances_val.json").read_text())
    first = raw["images"][0]
    (tmp_path / "images").mkdir()
    data = (bccd_dir / "images" / first["file_name"]).read_bytes()
    (tmp_path / "images" / first["file_name"]).write_bytes(data[:len(data) // 2])
    grey = cv2.imread(str(tmp_path / "images" / first["file_name"]))
    assert grey is not None and grey.shape[:2] == (first["height"], first["width"])  # what used to be trained on
    raw["images"] = [first]
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] == first["id"]]
    (tmp_path / "val.json").write_text(json.dumps(raw))
    ds = CocoDetection(tmp_path / "val.json", tmp_path / "images", build_test_transform())
    with pytest.raises(BadSampleError, match=rf"image {first['id']}: .*{first['file_name']}: truncated JPEG"):
        ds[0]
    skipping = CocoDetection(tmp_path / "val.json", tmp_path / "images", build_test_transform(), skip_bad_images=True)
    with caplog.at_level(logging.WARNING, logger="data.coco"):
        assert skipping[0] is None
    assert skipping.num_bad == 1 and any("truncated JPEG" in r.getMessage() for r in caplog.records)
