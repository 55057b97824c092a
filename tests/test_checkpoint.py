"""Checkpoint persistence: atomic writes survive a crash, safe loading, RNG round trip, config checks."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from detector import checkpoint as ck
from detector.config import Config


def test_atomic_save_keeps_previous_file_when_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    ck.atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def dying_save(obj, f):  # simulate a kill in the middle of writing the new checkpoint
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ck.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    obj = ck.safe_load(path)
    assert obj["epoch"] == 1 and torch.equal(obj["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temp file left behind


def test_rng_state_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    ck.atomic_save({"rng": ck.get_rng_state()}, tmp_path / "r.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ck.set_rng_state(ck.safe_load(tmp_path / "r.pth")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


class _Evil:
    """An arbitrary class: weights_only loading must refuse to construct it."""


def test_safe_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(ck.CheckpointError, match="evil.pth"):
        ck.safe_load(path)


def _training_ckpt(cfg: Config) -> dict:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return ck.make_checkpoint(model, opt, sched, scaler, cfg, epoch=1, iter_in_epoch=2, global_iter=12, best_ap=0.1)


def test_checkpoint_from_another_config_names_the_differences(tmp_path):
    cfg = Config()
    ckpt = _training_ckpt(cfg)
    other = Config()
    other.solver.base_lr = 0.02
    other.model.backbone.name = "resnet101"
    other.runtime.log_interval = 5  # allowed to differ
    other.solver.lr_steps = [60, 80]  # allowed: extending or reshaping the schedule on resume
    other.solver.epochs = 120
    with pytest.raises(ck.CheckpointError) as e:
        ck.check_compatible(ckpt, other, "x.pth")
    msg = str(e.value)
    assert "solver.base_lr" in msg and "model.backbone.name" in msg and "resnet101" in msg
    assert "runtime.log_interval" not in msg and "solver.lr_steps" not in msg and "solver.epochs" not in msg
    ck.check_compatible(ckpt, cfg, "x.pth")  # same config: fine


def test_checkpoint_from_older_version_is_refused():
    ckpt = _training_ckpt(Config())
    ckpt["format_version"] = 0
    with pytest.raises(ck.CheckpointError, match="version"):
        ck.check_compatible(ckpt, Config(), "old.pth")


def test_load_model_weights_strict_reports_keys(tmp_path):
    src = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    dst = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    assert ck.load_model_weights(dst, tmp_path / "w.pth", strict=True) == []
    assert torch.equal(dst[0].weight, src[0].weight)
    wrong = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 2))
    with pytest.raises(ck.CheckpointError, match="1.weight"):
        ck.load_model_weights(wrong, tmp_path / "w.pth", strict=True)
    fewer = torch.nn.Sequential(torch.nn.Linear(2, 3))
    with pytest.raises(ck.CheckpointError, match="unexpected"):
        ck.load_model_weights(fewer, tmp_path / "w.pth", strict=True)


def test_load_model_weights_fine_tune_skips_what_does_not_fit(tmp_path, caplog):
    """Another class count: every tensor whose name and shape match is loaded, the class logits are skipped."""
    src = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 80))
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    torch.manual_seed(1)
    dst = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    init_head = dst[1].weight.detach().clone()
    skipped = ck.load_model_weights(dst, tmp_path / "w.pth")
    assert skipped == ["1.weight", "1.bias"]
    assert torch.equal(dst[0].weight, src[0].weight) and torch.equal(dst[1].weight, init_head)
    assert "skipped 2 tensor(s) whose shape differs" in caplog.text and "(80, 3)" in caplog.text
    unrelated = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1))
    with pytest.raises(ck.CheckpointError, match="no tensor fits"):
        ck.load_model_weights(unrelated, tmp_path / "w.pth")


def test_checksum_catches_flipped_bytes_and_nonfinite_weights_are_refused(tmp_path):
    path = tmp_path / "last.pth"
    ck.atomic_save({"model": {"w": torch.arange(4096, dtype=torch.float32)}, "epoch": 3}, path)
    assert ck.safe_load(path)["epoch"] == 3
    raw = bytearray(path.read_bytes())
    start = raw.find(torch.arange(4096, dtype=torch.float32).numpy().tobytes()[4000:4016])
    assert start > 0
    raw[start + 3] ^= 0x7F  # corrupt one byte of the tensor data, leaving the zip structure intact
    path.write_bytes(bytes(raw))
    with pytest.raises(ck.CheckpointError, match="corrupted: checksum mismatch"):
        ck.safe_load(path)
    bad = tmp_path / "nan.pth"
    ck.atomic_save({"model": {"a": torch.ones(2), "b.weight": torch.tensor([1.0, float("nan")])}}, bad)
    with pytest.raises(ck.CheckpointError, match="non-finite values in 'b.weight'"):
        ck.safe_load(bad)


def test_disk_full_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    ck.atomic_save({"epoch": 1}, path)

    def full_disk(obj, f):  # what torch.save raises when the disk fills up mid-write
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 2048 vs 1960")

    monkeypatch.setattr(ck.torch, "save", full_disk)
    with pytest.raises(ck.DiskError, match="cannot write .*last.pth: disk full") as e:
        ck.atomic_save({"epoch": 2}, path)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert ck.safe_load(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_checkpoints_get_the_umask_permissions_and_stale_temp_files_go(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        ck.atomic_save({"epoch": 1}, tmp_path / "last.pth")
    finally:
        os.umask(old)
    assert (tmp_path / "last.pth").stat().st_mode & 0o777 == 0o644
    stale = [tmp_path / ".last.pth.abc123.tmp", tmp_path / ".epoch_010.pth.x.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    keep = tmp_path / ".hidden_notes.txt"
    keep.write_text("not ours")
    assert sorted(ck.remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert keep.exists() and (tmp_path / "last.pth").exists()


def test_keep_last_prunes_by_epoch_number_across_the_width_change(tmp_path):
    """epoch_1000.pth is newer than epoch_975.pth although it sorts first as text (a 1000-epoch own-data run lost its
    final epoch file this way)."""
    for e in (25, 950, 975, 1000):
        (tmp_path / f"epoch_{e:03d}.pth").write_bytes(b"x")
    for name in ("last.pth", "best.pth", "epoch_notes.pth"):
        (tmp_path / name).write_bytes(b"x")
    removed = ck.prune_epoch_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["epoch_025.pth", "epoch_950.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.pth", "epoch_1000.pth", "epoch_975.pth", "epoch_notes.pth", "last.pth"]
    assert ck.prune_epoch_checkpoints(tmp_path, 0) == []  # 0 keeps every epoch file
    assert len(list(tmp_path.glob("epoch_*.pth"))) == 3


def test_resume_refuses_another_total_batch_and_accepts_the_same_one():
    cfg = Config()
    ckpt = _training_ckpt(cfg)  # 1 process x 8 images
    two = Config()
    two.data.batch_size = 4
    ck.check_total_batch(ckpt, two, 2, "x.pth")  # 2 x 4 = 8: the same global order continues
    with pytest.raises(ck.CheckpointError, match="data.batch_size=4 on 2 process"):
        ck.check_total_batch(ckpt, cfg, 2, "x.pth")
