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
    other.solver.lr_steps = [60, 80]
    other.model.backbone.name = "resnet101"
    other.runtime.log_interval = 5  # allowed to differ
    with pytest.raises(ck.CheckpointError) as e:
        ck.check_compatible(ckpt, other, "x.pth")
    msg = str(e.value)
    assert "solver.lr_steps" in msg and "model.backbone.name" in msg and "resnet101" in msg
    assert "runtime.log_interval" not in msg
    ck.check_compatible(ckpt, cfg, "x.pth")  # same config: fine


def test_checkpoint_from_older_version_is_refused():
    ckpt = _training_ckpt(Config())
    ckpt["format_version"] = 0
    with pytest.raises(ck.CheckpointError, match="version"):
        ck.check_compatible(ckpt, Config(), "old.pth")


def test_load_model_weights_reports_keys(tmp_path):
    src = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    torch.save({"model": src.state_dict()}, tmp_path / "w.pth")
    dst = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    ck.load_model_weights(dst, tmp_path / "w.pth")
    assert torch.equal(dst[0].weight, src[0].weight)
    wrong = torch.nn.Sequential(torch.nn.Linear(2, 4))
    with pytest.raises(ck.CheckpointError, match="0.weight"):
        ck.load_model_weights(wrong, tmp_path / "w.pth")
    fewer = torch.nn.Sequential(torch.nn.Linear(2, 3))
    with pytest.raises(ck.CheckpointError, match="unexpected keys: \\['1.weight'"):
        ck.load_model_weights(fewer, tmp_path / "w.pth")
