"""evaluate.py: results-file mode end to end, argument checking, --help, and model mode on coco2017_ccby_mini."""
from __future__ import annotations

import csv
import json
import re

import pytest
from PIL import Image

import evaluate
from detector.cli import run_cli
from tests.inference_helpers import REPO

REQUIRED_KEYS = {"AP", "AP50", "AP75", "AP90", "APs", "APm", "APl", "oLRP", "oLRP_loc", "oLRP_fp", "oLRP_fn",
                 "per_class"}


@pytest.fixture
def ref(reference_dir):
    lrp = reference_dir / "lrp"
    expected = json.loads((lrp / "expected_noisy.json").read_text())["result_sets"]["noisy"]
    return lrp / "gt.json", lrp / "dets_noisy.json", expected


@pytest.mark.parametrize("variant, key", [("grid", "cancam_LRP-Error"), ("exact", "kemaloksuz_LRP-Error")])
def test_results_mode_json_out(ref, tmp_path, capsys, variant, key):
    gt, dets, expected = ref
    out = tmp_path / "m.json"
    assert evaluate.main(["--ann-file", str(gt), "--results", str(dets), "--lrp", variant, "--json-out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert REQUIRED_KEYS <= set(m) and m["lrp_variant"] == variant
    assert m["AP"] == pytest.approx(expected["coco"]["AP"], abs=1e-12)
    assert m["oLRP"] == pytest.approx(expected["lrp"][key]["summary"]["oLRP"], abs=1e-9)
    assert set(m["per_class"]) == {"person", "car", "dog", "unicorn", "bicycle", "kite"}
    for name, row in m["per_class"].items():
        assert {"AP", "oLRP", "threshold"} <= set(row)
    assert m["per_class"]["car"]["oLRP"] == pytest.approx(expected["lrp"][key]["per_class"]["all"]["3"]["oLRP"])
    printed = capsys.readouterr().out
    assert "Optimal LRP" in printed and "person" in printed  # summary and table printed
    assert not list(tmp_path.glob("*.png"))  # no reports without --output-dir


def test_results_mode_output_dir(ref, tmp_path):
    gt, dets, expected = ref
    out = tmp_path / "reports"
    assert evaluate.main(["--ann-file", str(gt), "--results", str(dets), "--output-dir", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["AP50"] == pytest.approx(expected["coco"]["AP50"], abs=1e-12)
    rows = list(csv.DictReader((out / "per_class.csv").open()))
    assert [r["class"] for r in rows] == ["person", "car", "dog", "unicorn", "bicycle", "kite"]
    assert float(rows[0]["oLRP"]) == pytest.approx(m["per_class"]["person"]["oLRP"])
    assert "Optimal LRP" in (out / "per_class.txt").read_text()
    for png in ("pr_curves.png", "lrp_curves.png"):
        with Image.open(out / png) as im:
            assert im.format == "PNG" and im.size[0] > 200


def _exit_code(argv: list[str]) -> int:
    """Run evaluate.py as its entry point does (run_cli: one line on stderr, exit code by error kind)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: evaluate.main(argv))
    return e.value.code


def test_bad_results_file_clear_error(ref, tmp_path, capsys):
    gt, _, _ = ref
    bad = tmp_path / "dets.json"
    bad.write_text(json.dumps([{"image_id": 123456, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    assert _exit_code(["--ann-file", str(gt), "--results", str(bad)]) == 3  # a data error
    err = capsys.readouterr().err
    assert str(bad) in err and "123456" in err and "not in the annotation file" in err
    assert _exit_code(["--ann-file", str(tmp_path / "missing.json"), "--results", str(bad)]) == 3


@pytest.mark.parametrize("argv, message", [
    ([], "give either"),
    (["--ann-file", "gt.json"], "needs both --ann-file and --results"),
    (["--ann-file", "a", "--results", "b", "--config", "c"], "cannot be combined"),
    (["--ann-file", "a", "--results", "b", "--max-images", "3"], "only valid in model mode"),
    (["--config", "c", "--checkpoint", "k"], "needs --split"),
    (["--config", "c", "--split", "val"], "needs --checkpoint"),
    (["--checkpoint", "k", "--split", "train"], "invalid choice"),
    (["--ann-file", "a", "--results", "b", "--lrp", "fast"], "invalid choice"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--help"])
    text = capsys.readouterr().out
    for option in ("--config", "--checkpoint", "--split", "--output-dir", "--lrp", "--json-out", "--device",
                   "--max-images", "key=value", "--ann-file", "--results", "val", "test", "minival", "test-dev",
                   "grid", "exact", "release file"):
        assert option in text, option
    parser = evaluate.build_parser()
    assert all(a.help for a in parser._actions), "every option has a help text"
    for path in re.findall(r"configs/[\w./-]+\.yaml", text):  # every example config exists
        assert (REPO / path).is_file(), path


def test_submission_name():
    assert evaluate.submission_name("alrp_r50_atss_500") == "alrp-r50-atss-500"
    assert evaluate.default_output_dir("checkpoints/x/best.pth", "minival").as_posix() == "checkpoints/x/eval_minival"
    assert evaluate.results_file_name("test", "my_run") == "detections_test_my-run_results.json"
    assert evaluate.results_file_name("test-dev", "a") == "detections_test-dev2017_a_results.json"


# ----------------------------------------------------------------------------------------------------------------
# Model mode (needs the model, data and engine modules)
# ----------------------------------------------------------------------------------------------------------------
def _model_mode_available() -> str | None:
    """None if everything model mode imports exists, else the reason to skip."""
    try:
        from data.build import build_dataset, build_test_loader  # noqa: F401
        from detector.build import build_model  # noqa: F401
        from detector.engine import run_inference  # noqa: F401  (the one test-time path)
        from detector.losses import build_criterion  # noqa: F401
    except ImportError as e:
        return f"model mode needs the model, data and engine modules: {e}"
    return None


def _tiny_config_file(tmp_path, coco_mini_dir, test_ann: str) -> "Path":
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(
        "model: {backbone: {name: resnet18, weights: null}, fpn: {out_channels: 32}, head: {channels: 32, "
        "num_convs: 1}}\n"
        f"data: {{dataset: coco, root: '{coco_mini_dir}', val_ann: annotations/instances_val.json, "
        f"val_images: images, test_ann: '{test_ann}', test_images: images, test_short: 128, "
        "test_max: 224, num_workers: 0, test_batch_size: 2}\n"
        "runtime: {device: cpu}\n")
    return cfg_path


@pytest.mark.slow
def test_model_mode_on_coco_mini(coco_mini_dir, tmp_path, capsys):
    """A labelled split is scored (val, and test when its file has annotations); a split without annotations gets
    the submission files; a checkpoint without a config needs --config, one with a config does not."""
    if (reason := _model_mode_available()) is not None:
        pytest.skip(reason)
    import torch

    from detector.build import build_model
    from detector.config import config_to_dict, load_config

    info = json.loads((coco_mini_dir / "annotations" / "instances_val.json").read_text())
    image_info = tmp_path / "image_info.json"  # test-dev style: images and categories, no annotations
    image_info.write_text(json.dumps({"images": info["images"], "categories": info["categories"]}))
    cfg_path = _tiny_config_file(tmp_path, coco_mini_dir, str(image_info))
    cfg = load_config(cfg_path)
    torch.manual_seed(0)
    model = build_model(cfg)
    bare = tmp_path / "fresh.pth"
    torch.save({"model": model.state_dict()}, bare)  # weights only: needs --config
    full = tmp_path / "last.pth"
    torch.save({"model": model.state_dict(), "config": config_to_dict(cfg),
                "class_names": [c["name"] for c in sorted(info["categories"], key=lambda c: c["id"])],
                "category_ids": sorted(c["id"] for c in info["categories"])}, full)

    out = tmp_path / "eval"
    rc = evaluate.main(["--config", str(cfg_path), "--checkpoint", str(bare), "--split", "minival", "--max-images",
                        "3", "--output-dir", str(out), "--json-out", str(tmp_path / "m.json"), "--device", "cpu",
                        "model.test.score_thr=0.0"])
    assert rc == 0, capsys.readouterr().err
    for name in ("detections_minival_tiny_results.json", "metrics.json", "per_class.txt", "per_class.csv",
                 "pr_curves.png", "lrp_curves.png"):
        assert (out / name).is_file(), name
    m = json.loads((tmp_path / "m.json").read_text())
    assert REQUIRED_KEYS <= set(m) and m["num_images"] == 3 and 0 <= m["AP"] <= 1 and 0 <= m["oLRP"] <= 1
    dets = json.loads((out / "detections_minival_tiny_results.json").read_text())
    val_ids = {i["id"] for i in info["images"]}
    assert dets and {d["image_id"] for d in dets} <= val_ids  # score_thr 0 keeps the fresh model's detections

    # the same weights from a checkpoint that carries its config: no --config, same detections under --split val
    out_val = tmp_path / "eval_val"
    assert evaluate.main(["--checkpoint", str(full), "--split", "val", "--max-images", "3", "--output-dir",
                          str(out_val), "model.test.score_thr=0.0"]) == 0
    assert json.loads((out_val / "detections_val_tiny_results.json").read_text()) == dets
    assert (out_val / "metrics.json").is_file()

    from detector.errors import ConfigError

    with pytest.raises(ConfigError, match="--config"):
        evaluate.main(["--checkpoint", str(bare), "--split", "val", "--output-dir", str(tmp_path / "x")])

    # a split without annotations: submission json + zip, no metrics
    test_out = tmp_path / "testdev"
    rc = evaluate.main(["--checkpoint", str(full), "--split", "test-dev", "--max-images", "1", "--output-dir",
                        str(test_out)])
    assert rc == 0
    assert (test_out / "detections_test-dev2017_tiny_results.json").is_file()
    assert (test_out / "detections_test-dev2017_tiny_results.zip").is_file()
    assert not (test_out / "metrics.json").exists()

    # a labelled test split (data.test_ann with annotations) is scored under its own name
    scored = tmp_path / "test_scored"
    assert evaluate.main(["--checkpoint", str(full), "--split", "test", "--max-images", "2", "--output-dir",
                          str(scored), "data.test_ann=annotations/instances_val.json"]) == 0
    assert (scored / "detections_test_tiny_results.json").is_file() and (scored / "metrics.json").is_file()
