"""scripts/export.py: slim release files (.pth, .safetensors) round trip, ONNX / TorchScript parity with PyTorch."""
from __future__ import annotations

import json

import pytest
import torch

import predict
from detector.config import load_config
from detector.errors import ConfigError
from detector.inference import Detector, load_detector
from scripts import export
from tests.inference_helpers import (CATEGORY_IDS, CLASS_NAMES, REPO, as_chw, photos, read_rgb, tiny_config,
                                     tiny_model, write_checkpoint)


@pytest.fixture
def full_ckpt(tmp_path):
    cfg = tiny_config()
    return write_checkpoint(tmp_path / "last.pth", tiny_model(cfg), cfg)


@pytest.mark.parametrize("fuse", [False, True])
def test_release_file_is_slim_and_loads_weights_only(full_ckpt, tmp_path, fuse):
    out = tmp_path / "model.pth"
    assert export.main(["--checkpoint", str(full_ckpt), "--out", str(out)] + (["--fuse-bn"] if fuse else [])) == 0
    obj = torch.load(out, map_location="cpu", weights_only=True)
    assert obj["kind"] == "release" and obj["fused"] is fuse
    assert obj["class_names"] == CLASS_NAMES and obj["category_ids"] == CATEGORY_IDS
    assert "optimizer" not in obj and not any(k.startswith("criterion.") for k in obj["model"])
    assert any(".bn1." in k for k in obj["model"]) is not fuse  # folded files have no BatchNorm tensors
    assert obj["config"]["model"]["num_classes"] == 4 and obj["config"]["data"]["test_short"] == 128
    assert out.stat().st_size < full_ckpt.stat().st_size


@pytest.mark.parametrize("args", [["--out", "model.pth"], ["--out", "model.pth", "--fuse-bn"],
                                  ["--out", "model.safetensors", "--safetensors"]])
def test_predict_on_a_release_file_equals_predict_on_the_checkpoint(full_ckpt, tmp_path, shared_dir, args):
    """The round trip: predict.py gives the same detections.json from the slim file (no --config) as from last.pth."""
    if "--safetensors" in args:
        pytest.importorskip("safetensors", reason="safetensors not installed (pip install -r requirements-export.txt)")
    args = [a if not a.startswith("model.") else str(tmp_path / a) for a in args]
    assert export.main(["--checkpoint", str(full_ckpt)] + args) == 0
    images = [str(p) for p in photos(shared_dir, 2)]
    outs = {}
    for name, ckpt in (("full", full_ckpt), ("slim", args[1])):
        assert predict.main(["--checkpoint", str(ckpt), "--output-dir", str(tmp_path / name), "--score-thr", "0.1",
                             *images]) == 0
        outs[name] = json.loads((tmp_path / name / "detections.json").read_text())
    assert len(outs["full"]["annotations"]) > 10
    assert outs["slim"]["annotations"] == outs["full"]["annotations"]
    assert outs["slim"]["categories"] == [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CLASS_NAMES)]


def test_safetensors_file_holds_weights_and_json_metadata(full_ckpt, tmp_path):
    pytest.importorskip("safetensors", reason="safetensors not installed (pip install -r requirements-export.txt)")
    from safetensors import safe_open

    out = tmp_path / "model.safetensors"
    assert export.main(["--checkpoint", str(full_ckpt), "--out", str(out), "--safetensors"]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = json.loads(f.metadata()["alrp"])
        assert "head.cls_out.weight" in f.keys()
    assert meta["class_names"] == CLASS_NAMES and meta["config"]["name"] == "default"
    with pytest.raises(ConfigError, match="safetensors"):
        export.main(["--checkpoint", str(full_ckpt), "--out", str(tmp_path / "m.pth"), "--safetensors"])


def _parity(got, want, label: str) -> None:
    boxes, scores, labels = (torch.as_tensor(t) for t in got)
    assert len(want["scores"]) > 10, label
    assert len(scores) == len(want["scores"]), label
    # sorted by score in both; near-equal scores may swap places, so compare as matched sets
    order_g, order_w = torch.argsort(scores, descending=True, stable=True), torch.argsort(want["scores"],
                                                                                         descending=True, stable=True)
    torch.testing.assert_close(scores[order_g], want["scores"][order_w], rtol=0, atol=1e-4)
    for b, s, lab in zip(boxes, scores, labels):
        same = (want["labels"] == lab) & ((want["scores"] - s).abs() <= 1e-4)
        err = ((want["boxes"][same] - b).abs() - 1e-3 * want["boxes"][same].abs()).amax(dim=1)
        assert same.any() and float(err.min()) <= 1e-3, (label, b, s, lab)  # boxes to 1e-3 relative


def test_onnx_export_matches_pytorch_on_photos_of_two_sizes(full_ckpt, tmp_path, shared_dir):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -r requirements-export.txt)")
    onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -r requirements-export.txt)")
    out = tmp_path / "model.onnx"
    assert export.main(["--checkpoint", str(full_ckpt), "--format", "onnx", "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    assert any(n.op_type == "NonMaxSuppression" for n in proto.graph.node)  # NMS inside the graph
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == CLASS_NAMES
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    det = load_detector(full_ckpt)
    imgs = [as_chw(read_rgb(p)) for p in photos(shared_dir, 2)]
    assert imgs[0].shape != imgs[1].shape
    for img in imgs:
        _parity(session.run(None, {"image": img.numpy()}), det(img)[0], f"onnx {tuple(img.shape)}")


def test_torchscript_export_keeps_sizes_dynamic(full_ckpt, tmp_path, shared_dir):
    out = tmp_path / "model.pt"
    assert export.main(["--checkpoint", str(full_ckpt), "--format", "torchscript", "--out", str(out)]) == 0
    files = {"alrp.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(json.loads(files["alrp.json"])["category_ids"]) == CATEGORY_IDS
    det = load_detector(full_ckpt)
    for img in (as_chw(read_rgb(p)) for p in photos(shared_dir, 2)):
        with torch.no_grad():
            _parity(scripted(img), det(img)[0], f"torchscript {tuple(img.shape)}")


def test_export_refuses_models_other_than_retinanet(tmp_path):
    cfg = load_config(REPO / "configs" / "shapes_fovea_alrp.yaml", ["model.fpn.out_channels=32",
                                                                    "model.head.channels=32"])
    ckpt = write_checkpoint(tmp_path / "fovea.pth", tiny_model(cfg), cfg)
    with pytest.raises(ConfigError, match="RetinaNet"):
        export.main(["--checkpoint", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "f.onnx")])
    det = load_detector(ckpt)  # the wrapper itself runs any detector
    assert isinstance(det, Detector) and len(det(torch.zeros(3, 64, 80, dtype=torch.uint8))) == 1
