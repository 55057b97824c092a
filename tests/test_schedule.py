"""Schedules in iterations vs epochs (identical lr curves), the implausible-schedule warnings, and the dataset
summary the trainer logs before the first step (known counts on hand-built, shapes and real-photo datasets)."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data.coco import CocoDetection
from data.summary import dataset_stats, dataset_summary
from detector.config import SolverCfg, load_config
from detector.solver import build_optimizer, build_scheduler, lr_factor, resolve_schedule, schedule_warnings

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ lr curves
def curve(cfg: SolverCfg, ipe: int, n: int) -> list[float]:
    """The lr a LambdaLR from build_scheduler gives to each of the first ``n`` steps."""
    opt = build_optimizer(torch.nn.Linear(1, 1), cfg, cfg.base_lr)
    sched = build_scheduler(opt, cfg, ipe)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def epoch_rule(it: int, ipe: int, lr: float, steps: list[int], gamma: float, warmup: int, ratio: float) -> float:
    """The epoch-based rule as it was before iteration keys existed (an independent re-statement)."""
    f = gamma ** sum(it // ipe >= s for s in steps)
    if it < warmup:
        f *= 1.0 - (1.0 - it / warmup) * (1.0 - ratio)
    return lr * f


@pytest.mark.parametrize("ipe", [1, 3, 7, 25])
def test_iteration_keys_give_the_epoch_keys_lr_curve(ipe):
    common = dict(base_lr=0.01, gamma=0.1, warmup_ratio=0.001)
    by_epoch = SolverCfg(epochs=3, lr_steps=[2], warmup_iters=5, **common)
    by_iter = SolverCfg(epochs=None, max_iters=3 * ipe, lr_steps=None, lr_step_iters=[2 * ipe],
                        warmup_iters=None, warmup_epochs=5 / ipe, **common)
    a, b = resolve_schedule(by_epoch, ipe), resolve_schedule(by_iter, ipe)
    assert (a.total_iters, a.epochs, a.warmup_iters, a.step_iters) == (3 * ipe, 3, 5, [2 * ipe])
    assert (b.total_iters, b.epochs, b.warmup_iters, b.step_iters) == (3 * ipe, 3, 5, [2 * ipe])
    n = 3 * ipe + 2  # past the end too: the factors stay defined
    ca, cb = curve(by_epoch, ipe, n), curve(by_iter, ipe, n)
    assert ca == cb  # bit-identical at every iteration
    assert ca == [epoch_rule(i, ipe, 0.01, [2], 0.1, 5, 0.001) for i in range(n)]  # and the same as before
    assert [lr_factor(i, ipe, by_iter) * 0.01 for i in range(n)] == ca


def test_mixed_pairs_and_the_paper_schedule_unchanged():
    # the paper's 100-epoch schedule at COCO's 3665 iterations/epoch (117266 images / 32), epoch keys vs iteration keys
    ipe = 3665
    paper = SolverCfg(epochs=100, lr_steps=[75, 95], warmup_iters=500)
    mixed = SolverCfg(epochs=None, max_iters=100 * ipe, lr_steps=None, lr_step_iters=[75 * ipe, 95 * ipe],
                      warmup_iters=500)
    s = resolve_schedule(mixed, ipe)
    assert s.total_iters == 366500 and s.step_iters == [274875, 348175]
    for it in (0, 1, 250, 499, 500, 274874, 274875, 348174, 348175, 366499):
        assert lr_factor(it, ipe, paper) == lr_factor(it, ipe, mixed) == \
            epoch_rule(it, ipe, 1.0, [75, 95], 0.1, 500, 0.001), it


def test_schedule_keys_from_a_config_file(tmp_path):
    """Iteration keys in a file replace the inherited epoch keys; the trainer's length is max_iters."""
    f = tmp_path / "c.yaml"
    f.write_text(f"_base_: {REPO / 'configs' / 'bccd_alrp_r18.yaml'}\n"
                 "solver: {max_iters: 1000, lr_step_iters: [800, 900], warmup_iters: 50}\n")
    cfg = load_config(f)
    assert cfg.solver.epochs is None and cfg.solver.lr_steps is None
    s = resolve_schedule(cfg.solver, 7)
    assert (s.total_iters, s.epochs, s.step_iters, s.warmup_iters) == (1000, 143, [800, 900], 50)  # ceil(1000/7)
    assert s.length_key == "solver.max_iters" and s.steps_key == "solver.lr_step_iters"


# ------------------------------------------------------------------ warnings
def test_the_issue_case_warns_with_the_keys_to_change():
    # 64 photos with one dropped, batch 8 -> 7 iterations/epoch; the BCCD recipe's 24 epochs, warmup 100
    s = resolve_schedule(SolverCfg(epochs=24, lr_steps=[19, 22], warmup_iters=100), 7)
    assert s.total_iters == 168
    warnings = schedule_warnings(s, sb_period=7)
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    short, warm, sb = warnings
    assert "168 iterations" in short and "solver.epochs" in short and "solver.max_iters" in short
    assert "100 of 168" in warm and "60%" in warm and "solver.warmup_iters" in warm
    assert "every 7 iterations" in sb and "loss.sb_period" in sb


def test_a_plausible_schedule_does_not_warn():
    s = resolve_schedule(SolverCfg(epochs=24, lr_steps=[19, 22], warmup_iters=100), 25)  # BCCD: 600 iterations
    assert schedule_warnings(s, sb_period=25) == []
    assert schedule_warnings(s, sb_period=None) == []  # no self-balance (Focal / AP Loss)


def test_boundaries_and_unreached_steps():
    s = resolve_schedule(SolverCfg(epochs=None, max_iters=300, lr_steps=None, lr_step_iters=[250, 300],
                                   warmup_iters=75), 10)
    w = schedule_warnings(s, sb_period=20)  # exactly at each limit: 300 iterations, 25% warmup, period 20
    assert len(w) == 1 and "300" in w[0] and "solver.lr_step_iters" in w[0] and "never apply" in w[0]
    s = resolve_schedule(SolverCfg(epochs=None, max_iters=299, warmup_iters=None, warmup_epochs=7.6), 10)
    w = schedule_warnings(s, sb_period=19)
    assert s.warmup_iters == 76 and len(w) == 4
    assert "raise solver.max_iters" in w[0] and "solver.warmup_epochs" in w[1] and "loss.sb_period" in w[2]
    assert "solver.lr_steps" in w[3]  # the default epoch steps 75/95 lie beyond 299 iterations


# ------------------------------------------------------------------ dataset summary
def _write_images(folder: Path, sizes: list[tuple[int, int]]) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (w, h) in enumerate(sizes, start=1):
        Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(folder / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": w, "height": h})
    return images


def _ann(aid: int, iid: int, cat: int, box: list[float], crowd: int = 0) -> dict:
    return {"id": aid, "image_id": iid, "category_id": cat, "bbox": box, "area": box[2] * box[3], "iscrowd": crowd}


def test_summary_counts_on_a_hand_built_dataset(tmp_path):
    # 11 images: 7 usable, 1 without annotations, 1 too small (min_size 32), 1 crowd-only, 1 with only an
    # invalid box (w < 1); classes cat(1) dog(3) bird(5) with non-contiguous ids; bird never appears
    images = _write_images(tmp_path / "img", [(64, 48)] * 8 + [(64, 20), (64, 48), (64, 48)])
    anns = [_ann(1, 1, 1, [1, 1, 10, 10]), _ann(2, 1, 3, [5, 5, 20, 20]), _ann(3, 2, 1, [0, 0, 8, 8]),
            _ann(4, 3, 1, [2, 2, 9, 9]), _ann(5, 4, 3, [2, 2, 9, 9]), _ann(6, 5, 3, [2, 2, 9, 9]),
            _ann(7, 6, 1, [2, 2, 9, 9]), _ann(8, 6, 1, [20, 2, 9, 9], crowd=1), _ann(9, 7, 1, [3, 3, 9, 9]),
            # image 8: none; image 9: 64x20 (too small); image 10: crowd only; image 11: an invalid box only
            _ann(10, 9, 1, [1, 1, 5, 5]), _ann(11, 10, 3, [0, 0, 30, 30], crowd=1), _ann(12, 11, 1, [4, 4, 0.5, 9])]
    cats = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 5, "name": "bird"}]
    ann_file = tmp_path / "train.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    ds = CocoDetection(ann_file, tmp_path / "img", train=True, filter_empty=True, min_size=32)

    st = dataset_stats(ds, batch_size=4, world_size=1, drop_last=True)
    assert st["images_listed"] == 11 and st["images_kept"] == 9
    assert st["dropped"] == {"no annotations (data.filter_empty)": 1, "shorter side below data.min_size=32": 1}
    assert st["annotations"] == 12 and st["invalid_boxes"] == 1
    assert st["boxes"] == 8 and st["crowd"] == 2  # the crowd regions of kept images 6 and 10
    assert st["images_without_boxes"] == 2  # the crowd-only one and the invalid-box one
    assert st["boxes_per_class"] == {"cat": 5, "dog": 3, "bird": 0}
    assert (st["images_per_iter"], st["iters_per_epoch"], st["unused_per_epoch"]) == (4, 2, 1)

    lines = dataset_summary(ds, batch_size=4, world_size=1, drop_last=True)
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    assert "11 images listed, 9 kept" in lines[0]
    assert "1 no annotations (data.filter_empty)" in lines[0] and "data.min_size=32" in lines[0]
    assert "8 boxes to learn from and 2 crowd regions" in lines[1] and "1 invalid box dropped" in lines[1]
    assert "2 kept images with no box" in lines[1]
    assert "(2 of 3 classes present): cat 5, dog 3; no boxes: bird" in lines[2]
    assert "9 images / (4 per batch) = 2 iterations per epoch" in lines[3] and "1 image unused" in lines[3]

    two = dataset_stats(ds, batch_size=2, world_size=2, drop_last=True)  # the same total batch on 2 processes
    assert (two["iters_per_epoch"], two["unused_per_epoch"]) == (2, 1)
    assert "x 2 processes" in dataset_summary(ds, 2, 2, True)[3]
    keep_all = dataset_stats(ds, batch_size=4, world_size=1, drop_last=False)
    assert (keep_all["iters_per_epoch"], keep_all["unused_per_epoch"]) == (3, 0)
    val_lines = dataset_summary(ds, 4, 1, drop_last=False, split="val")
    assert val_lines[0].startswith("val data: ") and "8 boxes and 2 crowd regions" in val_lines[1]
    assert val_lines[3] == "val data: 9 images in 3 batches of 4"


def test_summary_of_the_shapes_dataset(tmp_path):
    from data.shapes import ensure_shapes_dataset
    root = ensure_shapes_dataset(tmp_path / "shapes", num_train=30, num_val=2, image_size=64, seed=3)
    raw = json.loads((root / "annotations" / "instances_train.json").read_text())
    with_ann = {a["image_id"] for a in raw["annotations"]}
    names = {c["id"]: c["name"] for c in raw["categories"]}
    ds = CocoDetection(root / "annotations" / "instances_train.json", root / "images", train=True, min_size=8)
    st = dataset_stats(ds, batch_size=8, world_size=1, drop_last=True)
    empty = 30 - len(with_ann)
    assert st["images_listed"] == 30 and st["images_kept"] == len(with_ann)
    assert st["dropped"] == ({"no annotations (data.filter_empty)": empty} if empty else {})
    per_cat = Counter(a["category_id"] for a in raw["annotations"])
    assert st["boxes_per_class"] == {names[c]: per_cat[c] for c in names}
    assert st["iters_per_epoch"] == len(with_ann) // 8


# ------------------------------------------------------------------ a 20-image real dataset
def make_twenty(coco_mini: Path, out: Path) -> tuple[Path, int]:
    """A COCO-format 20-image training set from the mini COCO photos, one image without annotations.

    Returns (annotation file, id of the image whose annotations were removed). Images stay where they are.
    """
    raw = json.loads((coco_mini / "annotations" / "instances_train.json").read_text())
    images = sorted(raw["images"], key=lambda im: im["id"])[:20]
    ids = {im["id"] for im in images}
    bare = images[0]["id"]
    anns = [a for a in raw["annotations"] if a["image_id"] in ids and a["image_id"] != bare]
    out.mkdir(parents=True, exist_ok=True)
    ann_file = out / "instances_train20.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": raw["categories"]}))
    return ann_file, bare


def test_twenty_images_summary_and_warnings(tmp_path, coco_mini_dir):
    ann_file, bare = make_twenty(coco_mini_dir, tmp_path)
    raw = json.loads(ann_file.read_text())
    ds = CocoDetection(ann_file, coco_mini_dir / "images", train=True, min_size=8)
    st = dataset_stats(ds, batch_size=8, world_size=1, drop_last=True)
    own = Counter(a["category_id"] for a in raw["annotations"] if not a["iscrowd"])
    assert st["images_listed"] == 20 and st["images_kept"] == 19 and bare not in ds.ids
    assert st["dropped"] == {"no annotations (data.filter_empty)": 1}
    assert st["boxes"] == sum(own.values()) and st["annotations"] == len(raw["annotations"])
    assert st["iters_per_epoch"] == 2 and st["unused_per_epoch"] == 3
    # the BCCD recipe with only the dataset keys changed, as in the issue
    cfg = load_config(REPO / "configs" / "bccd_alrp_r18.yaml")
    s = resolve_schedule(cfg.solver, st["iters_per_epoch"])
    warnings = schedule_warnings(s, cfg.loss.sb_period or st["iters_per_epoch"])
    assert s.total_iters == 48
    assert any("solver.warmup_iters" in w for w in warnings) and any("loss.sb_period" in w for w in warnings)
    assert any("48 iterations" in w for w in warnings)
    # the own-data recipe on the same data: a schedule in iterations, nothing implausible
    own_cfg = load_config(REPO / "configs" / "own_data_example.yaml")
    s = resolve_schedule(own_cfg.solver, st["iters_per_epoch"])
    assert schedule_warnings(s, own_cfg.loss.sb_period or st["iters_per_epoch"]) == []


@pytest.mark.slow
def test_train_py_logs_sizes_and_the_warning(tmp_path, coco_mini_dir):
    ann_file, _ = make_twenty(coco_mini_dir, tmp_path / "ann")
    out = tmp_path / "run"
    cmd = [sys.executable, "train.py", "--config", "configs/bccd_alrp_r18.yaml", "--output-dir", str(out),
           f"data.root={coco_mini_dir}", f"data.train_ann={ann_file}", "data.train_images=images",
           f"data.val_ann={ann_file}", "data.val_images=images", "model.num_classes=80", "data.size=96",
           "data.num_workers=0", "runtime.eval_interval=0", "runtime.device=cpu", "solver.max_iters=2"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (out / "log.txt").read_text()
    assert "20 images listed, 19 kept" in log and "2 iterations per epoch" in log
    warnings = [line for line in log.splitlines() if "WARNING" in line and "schedule:" in line]
    assert any("only 2 iterations" in w and "solver.max_iters" in w for w in warnings)
    assert any("above a quarter" in w and "solver.warmup_iters" in w for w in warnings)
    assert any("every 2 iterations" in w and "loss.sb_period" in w for w in warnings)
