"""detector.inference.Detector: the test pipeline's preprocessing in torch, boxes in input coordinates, loading."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

from data.build import build_dataset, collate
from data.transforms import KeepRatioResize, build_test_transform
from detector.errors import CheckpointError, ConfigError
from detector.inference import Detector, keep_ratio_size, load_detector, normalise, resize_linear
from tests.inference_helpers import (CATEGORY_IDS, CLASS_NAMES, as_chw, photos, read_rgb, tiny_config, tiny_model,
                                     write_checkpoint)


def test_keep_ratio_size_tensor_form_equals_the_loader_rule():
    # hand-computed: 480x640 at (224, 299): s = min(299/640, 224/480) = 0.4667 -> 224 x 298.67 -> 224 x 299
    assert keep_ratio_size(480, 640, 224, 299) == (224, 299)
    assert keep_ratio_size(333, 1000, 224, 299) == (100, 299)  # long side capped: s = 0.299
    for h, w, (short, long_) in itertools.product([1, 7, 100, 333, 427, 480, 640, 1333], [5, 64, 480, 640, 999],
                                                  [(500, 833), (224, 299), (128, 160), (800, 1333)]):
        want = KeepRatioResize.new_size(h, w, short, long_)
        got = keep_ratio_size(torch.tensor(h), torch.tensor(w), short, long_)
        assert (int(got[0]), int(got[1])) == want, (h, w, short, long_)


def test_resize_matches_opencv_inter_linear_on_photos(shared_dir):
    for path in photos(shared_dir, 3):
        img = read_rgb(path).astype(np.float32)
        h, w = img.shape[:2]
        for nh, nw in [KeepRatioResize.new_size(h, w, 500, 833), KeepRatioResize.new_size(h, w, 128, 160),
                       (h * 2 - 3, w + 17), (h, w)]:
            ref = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
            got = resize_linear(as_chw(img), (nh, nw)).permute(1, 2, 0).numpy()
            # float32 rounding on the 0-255 scale; F.interpolate is off by up to 1e-2 here
            assert np.abs(got - ref).max() <= 1e-4, (path.name, nh, nw)
        assert np.array_equal(resize_linear(as_chw(img), (h, w)).permute(1, 2, 0).numpy(), img)  # same size: copy


def test_preprocess_equals_the_test_loader(shared_dir):
    """The wrapper's batch, sizes and scale factors are the test loader's for real photos (bccd + coco)."""
    cfg = tiny_config(test_short=224, test_max=299)
    det = Detector.from_config(tiny_model(cfg), cfg, CLASS_NAMES, CATEGORY_IDS)
    transform = build_test_transform(cfg.data.test_short, cfg.data.test_max)
    paths = photos(shared_dir, 2) + [next((shared_dir / "datasets" / "bccd" / "images").glob("*.jpg"))]
    samples, raws = [], []
    for p in paths:
        rgb = read_rgb(p)
        out = transform(rgb.astype(np.float32), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))
        samples.append((out["image"], {"img_size": torch.tensor(out["img_size"]),
                                       "scale_factor": torch.tensor(out["scale_factor"], dtype=torch.float32)}))
        raws.append(as_chw(rgb))
    want_batch, want_targets = collate(samples, size_divisor=cfg.data.size_divisor)
    batch, targets = det.preprocess(raws)
    assert batch.shape == want_batch.shape
    assert (batch - want_batch).abs().max() <= 2e-6  # 1e-4 grey levels / std
    for t, u in zip(targets, want_targets):
        assert torch.equal(t["img_size"], u["img_size"]) and torch.equal(t["scale_factor"], u["scale_factor"])
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    assert torch.equal(normalise(mean), torch.zeros(3, 1, 1))  # the mean colour is 0, and the padding
    torch.testing.assert_close(normalise(mean + torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)),
                               torch.ones(3, 1, 1))


def test_detections_equal_the_model_on_the_loader(shared_dir):
    """Detector(raw photos) == model(test-loader batch, targets): the same boxes in original pixels."""
    cfg = tiny_config(dataset="coco", root=str(shared_dir / "datasets" / "coco2017_ccby_mini"),
                      val_ann="annotations/instances_val.json", val_images="images")
    model = tiny_model(cfg)
    det = Detector.from_config(model, cfg, CLASS_NAMES, CATEGORY_IDS)
    ds = build_dataset(cfg.data, "val")
    samples = [ds[i] for i in range(3)]
    images, targets = collate(samples, cfg.data.size_divisor)
    with torch.inference_mode():
        want = model(images, targets)
    got = det([as_chw(read_rgb(ds.image_path(i))) for i in range(3)])
    for g, w in zip(got, want):
        assert len(w["scores"]) > 10
        assert torch.equal(g["labels"], w["labels"])
        torch.testing.assert_close(g["scores"], w["scores"], rtol=0, atol=1e-5)
        torch.testing.assert_close(g["boxes"], w["boxes"], rtol=1e-4, atol=1e-2)


class _WholeImage(torch.nn.Module):
    """A stand-in model: one box covering the resized image, mapped back with the scale factor."""
    num_classes = 4

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images, targets):
        out = []
        for t in targets:
            (h, w), (sx, sy) = t["img_size"].tolist(), t["scale_factor"].tolist()
            out.append({"boxes": torch.tensor([[0.0, 0.0, w / sx, h / sy]]), "scores": torch.ones(1),
                        "labels": torch.zeros(1, dtype=torch.int64)})
        return out


def test_boxes_come_back_in_input_pixels_for_any_input_form():
    det = Detector(_WholeImage(), short=128, max_long=160, size_divisor=32)
    imgs = [torch.randint(0, 256, (3, 90, 300), dtype=torch.uint8), torch.randint(0, 256, (3, 700, 40),
                                                                                    dtype=torch.uint8)]
    for img, out in zip(imgs, det(imgs)):
        torch.testing.assert_close(out["boxes"][0], torch.tensor([0.0, 0.0, img.shape[2], img.shape[1]]),
                                   rtol=1e-6, atol=1e-3)
    one = det(imgs[0])  # a single (3, H, W) image, and a float 0-255 one
    assert torch.equal(one[0]["boxes"], det(imgs[0].float())[0]["boxes"])
    assert len(det(torch.stack([imgs[0], imgs[0]]))) == 2  # a (B, 3, H, W) batch
    with pytest.raises(ValueError, match="RGB"):
        det(torch.zeros(1, 50, 50))


def test_uint8_and_float_inputs_agree_and_batching_keeps_each_image(shared_dir):
    cfg = tiny_config()
    det = Detector.from_config(tiny_model(cfg), cfg, CLASS_NAMES, CATEGORY_IDS)
    a, b = (as_chw(read_rgb(p)) for p in photos(shared_dir, 2))
    u8, f32 = det(a)[0], det(a.float())[0]
    assert torch.equal(u8["boxes"], f32["boxes"]) and torch.equal(u8["scores"], f32["scores"])
    pair = det([a, b])  # padded together: only the padding differs from running them one by one
    assert len(pair) == 2 and len(pair[0]["scores"]) == len(u8["scores"])
    for o, img in zip(pair, (a, b)):
        assert (o["boxes"][:, 0::2] <= img.shape[2] + 1e-3).all() and (o["boxes"][:, 1::2] <= img.shape[1] + 1e-3).all()
        assert (o["boxes"] >= 0).all()


def test_load_detector_from_a_training_checkpoint(tmp_path):
    cfg = tiny_config()
    model = tiny_model(cfg)
    path = write_checkpoint(tmp_path / "last.pth", model, cfg)
    det = load_detector(path)
    assert det.class_names == CLASS_NAMES and det.category_ids == CATEGORY_IDS and det.fused
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in det.modules())
    assert (det.short, det.max_long, det.size_divisor) == (128, 160, 32)
    img = torch.randint(0, 256, (3, 100, 140), dtype=torch.uint8)
    plain = Detector.from_config(model, cfg)(img)[0]
    got = det(img)[0]
    torch.testing.assert_close(got["scores"], plain["scores"], rtol=0, atol=1e-5)  # BN folding: float rounding
    # overrides reach the model's test settings
    assert load_detector(path, overrides=["model.test.score_thr=0.9"]).model.score_thr == 0.9


def test_load_detector_errors(tmp_path):
    cfg = tiny_config()
    model = tiny_model(cfg)
    torch.save({"model": model.state_dict()}, tmp_path / "no_config.pth")
    with pytest.raises(ConfigError, match="--config"):
        load_detector(tmp_path / "no_config.pth")
    assert load_detector(tmp_path / "no_config.pth", config=cfg).model.num_classes == 4  # with a config it loads
    other = tiny_config()
    other.model.num_classes = 7
    write_checkpoint(tmp_path / "other.pth", tiny_model(other), other, with_classes=False)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_detector(tmp_path / "other.pth", config=cfg)
    with pytest.raises(CheckpointError, match="not found"):
        load_detector(tmp_path / "missing.pth")
