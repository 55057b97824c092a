"""train.py's run directory rules and logs: --resume on every launch, no silent overwrite, lean epoch
checkpoints bounded by keep_last, and log output that suits files (no progress-bar frames)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from detector.checkpoint import safe_load
from detector.config import load_config
from detector.errors import EXIT_CONFIG, CheckpointError, ConfigError
from detector.runs import split_resume
from detector.trainer import evals_left

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.num_classes=4", "model.backbone.name=resnet18", "model.fpn.out_channels=16",
    "model.head.num_convs=1", "model.head.channels=16",
    "data.train_size=64", "data.test_short=64", "data.test_max=64", "data.batch_size=4", "data.test_batch_size=4",
    "data.num_workers=0", "data.min_size=4", "data.shapes={num_train: 16, num_val: 4, image_size: 64, seed: 1}",
    "solver.warmup_iters=3", "solver.base_lr=0.01", "solver.reference_batch=4", "runtime.log_interval=1",
    "runtime.eval_interval=0", "runtime.device=cpu",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def args(out: Path, data_root: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "default.yaml"), "--output-dir", str(out), *TINY,
            f"data.root={data_root}", *extra]


@pytest.mark.parametrize("argv, rest, resume", [
    (["--resume"], [], "auto"),
    (["--resume", "solver.epochs=3"], ["solver.epochs=3"], "auto"),  # never eats a key=value
    (["a=1", "--resume", "run/last.pth", "b=2"], ["a=1", "b=2"], "run/last.pth"),
    (["--resume", "--amp"], ["--amp"], "auto"),
    (["--resume=x.pth", "a=1"], ["a=1"], "x.pth"),
    (["a=1"], ["a=1"], None),
])
def test_split_resume(argv, rest, resume):
    assert split_resume(argv) == (rest, resume)


def test_overrides_before_and_after_options_are_all_applied():
    a = train.parse_args(["solver.epochs=3", "solver.lr_steps=[2]", "--resume", "--seed", "5", "data.batch_size=2"])
    assert a.resume == "auto" and a.cfg.solver.epochs == 3 and a.cfg.data.batch_size == 2 and a.cfg.runtime.seed == 5


def test_resume_on_every_launch_then_no_silent_overwrite(tmp_path, data_root):
    out = tmp_path / "run"
    # first launch of a requeue script: --resume with no last.pth starts fresh
    code, _, state = train.run(args(out, data_root, "solver.max_iters=2") + ["--resume"])
    assert code == 0 and state.global_iter == 2
    assert "no " in (out / "log.txt").read_text() and "starting a fresh run" in (out / "log.txt").read_text()
    # second launch continues (and may extend the schedule)
    code, _, state = train.run(args(out, data_root, "solver.max_iters=3") + ["--resume"])
    assert code == 0 and state.global_iter == 3
    assert "resume: config changed (allowed):  solver.max_iters: checkpoint=2 now=3" in (out / "log.txt").read_text()
    # the same command without --resume would clobber the run: refused, nothing touched
    before = (out / "last.pth").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run .*--resume.*--overwrite"):
        train.run(args(out, data_root, "solver.max_iters=1"))
    assert (out / "last.pth").read_bytes() == before
    # --overwrite starts over and keeps the old files aside
    code, _, state = train.run(args(out, data_root, "solver.max_iters=1") + ["--overwrite"])
    assert code == 0 and state.global_iter == 1
    (previous,) = out.glob("previous_*")
    assert safe_load(previous / "last.pth")["global_iter"] == 3
    assert safe_load(out / "last.pth")["global_iter"] == 1


def test_eval_only_without_weights_is_refused(tmp_path, data_root):
    with pytest.raises(ConfigError, match="--eval-only needs weights"):
        train.run(args(tmp_path / "e", data_root) + ["--eval-only"])
    assert not (tmp_path / "e").exists()


def test_keep_last_bounds_lean_epoch_checkpoints_and_best_loads(tmp_path, data_root):
    out = tmp_path / "run"
    code, _, _ = train.run(args(out, data_root, "solver.epochs=4", "solver.lr_steps=[3]",
                                "runtime.checkpoint_interval=1", "runtime.keep_last=2", "runtime.eval_interval=2"))
    assert code == 0
    assert sorted(p.name for p in out.glob("epoch_*.pth")) == ["epoch_003.pth", "epoch_004.pth"]
    last, epoch, best = (safe_load(out / n) for n in ("last.pth", "epoch_004.pth", "best.pth"))
    assert "optimizer" in last and "optimizer" not in epoch and "optimizer" not in best
    assert epoch["kind"] == best["kind"] == "weights"
    assert (out / "epoch_004.pth").stat().st_size < 0.7 * (out / "last.pth").stat().st_size
    assert best["class_names"] == ["circle", "square", "triangle", "cross"] or len(best["class_names"]) == 4
    assert best["category_ids"] and len(best["category_ids"]) == 4
    cfg = load_config(out / "config.yaml")
    assert cfg.runtime.keep_last == 2
    ev = subprocess.run([sys.executable, "evaluate.py", "--config", str(out / "config.yaml"), "--checkpoint",
                         str(out / "best.pth"), "--split", "minival", "--output-dir", str(tmp_path / "ev")],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]


def test_evals_left_counts_the_validations_still_to_come():
    # 3 iterations per epoch, validation every 2 epochs; counted by hand from the schedule
    assert [evals_left(g, 3, 15, 2) for g in (0, 1, 6, 7, 15, 16)] == [3, 3, 3, 2, 1, 0]  # epochs 2, 4 + end (5)
    assert [evals_left(g, 3, 14, 2) for g in (0, 12, 13, 14)] == [3, 2, 1, 1]  # ends inside epoch 5
    assert [evals_left(g, 3, 12, 2) for g in (0, 6, 7, 12)] == [2, 2, 1, 1]  # the end is epoch 4's validation
    assert evals_left(0, 3, 15, 0) == 0  # validation off


def test_eta_includes_the_validations_still_to_come(tmp_path, data_root):
    """metrics.jsonl: before the first validation the ETA is iterations left x iteration time; after it, each
    validation still to come adds the measured validation time (2 epochs of 4 iterations, validation each epoch)."""
    out = tmp_path / "run"
    code, _, _ = train.run(args(out, data_root, "solver.max_iters=8", "runtime.eval_interval=1",
                                "runtime.log_interval=2"))
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = {r["global_iter"]: r for r in rows if r["type"] == "train"}
    assert sorted(train_rows) == [2, 4, 6, 8]
    assert 1e9 < train_rows[2]["time"] and 0 < train_rows[2]["iter_time"] < 60  # wall clock vs seconds per iteration
    for g in (2, 4):  # no validation measured yet
        assert train_rows[g]["eta_s"] == pytest.approx(train_rows[g]["iter_time"] * (8 - g), rel=1e-9)
    extra = train_rows[6]["eta_s"] - train_rows[6]["iter_time"] * 2  # the end-of-training validation
    assert extra > 0.01
    assert train_rows[8]["eta_s"] == pytest.approx(extra, rel=1e-9)  # no iteration left, that validation still is


def test_log_to_a_file_has_no_bar_frames_and_short_lines(tmp_path, data_root):
    out = tmp_path / "run"
    log_file = tmp_path / "run.log"
    with open(log_file, "w") as f:
        proc = subprocess.run([sys.executable, "train.py", *args(out, data_root, "solver.max_iters=6")], cwd=REPO,
                              stdout=f, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0
    text = log_file.read_text()
    assert "\r" not in text
    steps = [line for line in text.splitlines() if " iter " in line and " eta " in line]
    assert len(steps) == 6
    assert all(len(line.encode()) < 300 for line in steps)
    for key in (" eta ", " time ", " data ", " mem "):
        assert key in steps[0]
    head = (out / "log.txt").read_text().splitlines()[:8]
    assert any("environment: python" in h and "torch" in h for h in head)
    assert any("world size 1" in h for h in head) and any("16 images listed" in h for h in head)


def test_config_error_exits_2_with_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "--output-dir", str(out), "solver.base_lrr=0.1"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_CONFIG
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "solver.base_lrr" in lines[0] and "solver.base_lr" in lines[0]
    assert not out.exists()


def test_fine_tune_from_a_detector_with_another_class_count(tmp_path, data_root):
    """model.weights from a 4-class run into a 3-class detector: everything but the class logits is loaded."""
    from detector.build import build_model
    from detector.checkpoint import load_model_weights

    src = tmp_path / "src"
    assert train.run(args(src, data_root, "solver.max_iters=1"))[0] == 0
    weights = safe_load(src / "last.pth")["model"]
    cfg = load_config(REPO / "configs" / "default.yaml", TINY + ["model.num_classes=3"])
    target = build_model(cfg)
    skipped = load_model_weights(target, src / "last.pth")
    own = target.state_dict()
    assert skipped and all("cls" in k for k in skipped), skipped  # only the class logits layer misfits
    loaded = [k for k in own if k in weights and k not in skipped and not k.startswith("criterion.")]
    assert len(loaded) > 50 and all(torch.equal(own[k], weights[k]) for k in loaded)
    with pytest.raises(CheckpointError, match="weights_strict"):
        load_model_weights(build_model(cfg), src / "last.pth", strict=True)
