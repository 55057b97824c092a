"""End-to-end training on CPU with a tiny model and the generated shapes data: artefacts, exact resume,
pre-emption, non-finite loss, and a 2-process gloo run."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import train
from detector.checkpoint import safe_load
from detector.config import load_config
from detector.errors import EXIT_NON_FINITE, EXIT_PREEMPTED, NonFiniteLossError, exit_code_for

REPO = Path(__file__).resolve().parents[1]

TINY = [
    "model.num_classes=4", "model.backbone.name=resnet18", "model.fpn.out_channels=16",
    "model.head.num_convs=1", "model.head.channels=16",
    "data.train_size=64", "data.test_short=64", "data.test_max=64", "data.batch_size=4", "data.test_batch_size=4",
    "data.num_workers=0", "data.min_size=4",
    "data.shapes={num_train: 16, num_val: 4, image_size: 64, seed: 1}",
    "solver.warmup_iters=3", "solver.epochs=50", "solver.lr_steps=[40]", "solver.base_lr=0.01",
    "solver.reference_batch=4", "runtime.log_interval=1", "runtime.eval_interval=0", "runtime.device=cpu",
]


def tiny_args(out: Path, data_root: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / "configs" / "default.yaml"), "--output-dir", str(out), *TINY,
            f"data.root={data_root}", *extra]


def train_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timing = ("time", "iter_time", "imgs_per_s", "data_time", "eta_s", "max_mem_mb")
    return [{k: v for k, v in r.items() if k not in timing} for r in rows if r["type"] == "train"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def _generate(data_root: Path) -> None:
    """Write the shapes data once, so that two ranks never race to generate it."""
    from data.shapes import ensure_shapes_dataset
    cfg = load_config(REPO / "configs" / "default.yaml", TINY + [f"data.root={data_root}"])
    ensure_shapes_dataset(cfg.data.root, **vars(cfg.data.shapes))


def test_tiny_run_writes_every_artifact(tmp_path, data_root):
    out = tmp_path / "run"
    extra = ["solver.max_iters=4", "runtime.eval_interval=1", "runtime.log_interval=2"]
    code, _, state = train.run(tiny_args(out, data_root, *extra))
    assert code == 0 and state.global_iter == 4 and state.epoch == 1
    assert (out / "log.txt").read_text().count("iter") >= 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_r = [r for r in rows if r["type"] == "train"]
    eval_r = [r for r in rows if r["type"] == "eval"]
    assert len(train_r) == 2 and len(eval_r) == 1
    for key in ("loss", "loss_cls", "loss_box", "sb_weight", "lr", "imgs_per_s", "grad_balance", "epoch",
                "global_iter", "num_pos"):
        assert key in train_r[0], key
    # Theorem 2 (aLRP): the positives' gradients balance the negatives' exactly
    assert train_r[0]["grad_balance"] == pytest.approx(-1.0, abs=1e-4)
    for key in ("AP", "AP50", "AP75", "oLRP", "epoch"):
        assert key in eval_r[0], key
    assert list((out / "tb").glob("events.out.tfevents.*"))
    expected_cfg = load_config(REPO / "configs" / "default.yaml", TINY + [f"data.root={data_root}", *extra])
    assert load_config(out / "config.yaml") == expected_cfg
    for name in ("last.pth", "best.pth"):
        ckpt = safe_load(out / name)
        assert ckpt["global_iter"] == 4 and ckpt["epoch"] == 1 and ckpt["iter_in_epoch"] == 0


def test_exact_resume_is_bit_identical(tmp_path, data_root):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train.run(tiny_args(straight, data_root, "solver.max_iters=6"))[0] == 0
    assert train.run(tiny_args(split, data_root, "solver.max_iters=3"))[0] == 0  # stops mid-epoch 1
    assert safe_load(split / "last.pth")["iter_in_epoch"] == 3
    assert train.run(tiny_args(split, data_root, "solver.max_iters=6") + ["--resume"])[0] == 0
    a, b = safe_load(straight / "last.pth"), safe_load(split / "last.pth")
    assert a["global_iter"] == b["global_iter"] == 6
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert train_rows(straight) == train_rows(split)
    assert len(train_rows(split)) == 6


def test_resume_with_another_config_is_refused(tmp_path, data_root):
    out = tmp_path / "run"
    assert train.run(tiny_args(out, data_root, "solver.max_iters=1"))[0] == 0
    with pytest.raises(Exception, match="solver.base_lr"):
        train.run(tiny_args(out, data_root, "solver.max_iters=2", "solver.base_lr=0.02") + ["--resume"])


def test_non_finite_loss_stops_with_dump_of_the_state_before_the_step(tmp_path, data_root):
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as e:
        train.run(tiny_args(out, data_root, "solver.max_iters=30", "solver.base_lr=1e12",
                            "solver.warmup_iters=0", "loss.type=focal", "loss.reg=smooth_l1"))
    assert exit_code_for(e.value) == EXIT_NON_FINITE
    dump = safe_load(out / "nan_dump.pth", verify=False)
    failing = int(str(e.value).split("non-finite loss at iteration ")[1].split()[0])
    assert dump["global_iter"] == failing >= 2 and set(dump["losses"]) >= {"loss_cls", "loss_box"}
    # the BatchNorm statistics (trained BN in this config) are those before the failing forward: finite
    stats = {k: v for k, v in dump["model"].items() if "running_" in k}
    assert stats and all(bool(torch.isfinite(v).all()) for v in stats.values())
    assert len(dump["image_ids"]) == 4 and len(dump["targets"]) == 4 and dump["images"].shape[0] == 4
    # the last.pth of the run is the one before: never overwritten with the broken state
    assert not (out / "last.pth").exists() or safe_load(out / "last.pth")["global_iter"] < failing
    from scripts.replay_nan import replay
    found = replay(str(out / "nan_dump.pth"))
    assert found["iteration"] == failing and found["bad_losses"]


def test_sigterm_saves_last_and_resumes(tmp_path, data_root):
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "train.py")] + tiny_args(out, data_root, "solver.max_iters=100000")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_PREEMPTED, output
    ckpt = safe_load(out / "last.pth")
    assert ckpt["global_iter"] >= 1 and "SIGTERM" in output and "Traceback" not in output
    n = ckpt["global_iter"]
    code, _, state = train.run(tiny_args(out, data_root, f"solver.max_iters={n + 1}") + ["--resume"])
    assert code == 0 and state.global_iter == n + 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, port: int, out: str, data_root: str, result_dir: str,
                 max_iters: str = "solver.max_iters=3") -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        code, model, state = train.run(tiny_args(Path(out), Path(data_root), max_iters, "data.batch_size=2"))
        result = {"code": code, "iters": state.global_iter, "model": model.state_dict()}
    except Exception as e:  # noqa: BLE001 - the exit code the CLI would give
        result = {"code": exit_code_for(e), "message": str(e)}
    torch.save(result, Path(result_dir) / f"rank{rank}.pt")


def test_two_process_gloo_run(tmp_path, data_root):
    # generate the data once in the parent so both ranks read the same files
    _generate(data_root)
    out, res = tmp_path / "ddp", tmp_path / "res"
    res.mkdir()
    mp.start_processes(_dist_worker, args=(_free_port(), str(out), str(data_root), str(res)), nprocs=2,
                       start_method="spawn")
    r0, r1 = (torch.load(res / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["code"] == r1["code"] == 0 and r0["iters"] == r1["iters"] == 3
    # parameters and the all-reduced self-balance weight agree; BN running statistics are per rank
    # (the default config trains BN from scratch, DDP runs with broadcast_buffers=False) and so are the SB sums
    # (their running sums are consolidated on rank 0 when a checkpoint is written)
    compared = [k for k in r0["model"] if "running_" not in k and "num_batches_tracked" not in k
                and not k.endswith(("_sum", ".count"))]
    assert any(k.startswith("criterion.") for k in compared)
    for k in compared:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    rows = train_rows(out)
    assert [r["global_iter"] for r in rows] == [1, 2, 3]  # one writer: rank 0 only
    assert safe_load(out / "last.pth")["global_iter"] == 3


def test_grad_clip_bounds_the_step_and_logs_the_raw_norm(tmp_path, data_root):
    # plain SGD (no momentum, no weight decay): the first update is exactly -lr * clipped gradient, so the
    # parameters move by at most lr * grad_clip, while the logged norm is the one measured before clipping
    clip = 1e-3
    plain = ["solver.momentum=0.0", "solver.weight_decay=0.0", f"solver.grad_clip={clip}"]
    from detector.build import build_model
    torch.manual_seed(0)  # as the trainer does (runtime.seed) before building the model
    init_model = build_model(load_config(REPO / "configs" / "default.yaml", TINY + plain))
    code, model, _ = train.run(tiny_args(tmp_path / "run", data_root, "solver.max_iters=1", *plain))
    assert code == 0
    row = train_rows(tmp_path / "run")[0]
    assert row["grad_norm"] > 10 * clip  # the unclipped gradient of a fresh model is far larger than the clip
    before = dict(init_model.named_parameters())
    step = torch.cat([(p.detach() - before[n].detach()).flatten() for n, p in model.named_parameters()])
    assert 0 < step.norm() <= row["lr"] * clip * (1 + 1e-4)


def _dist_nan_worker(rank: int, port: int, out: str, data_root: str, result_dir: str) -> None:
    """Rank 1 alone gets a NaN classification loss at its 2nd training iteration."""
    import detector.build as build

    real_build = build.build_model

    def build_with_nan(cfg):
        model = real_build(cfg)
        if rank == 1:
            forward, calls = model.forward, [0]

            def nan_forward(images, targets=None):
                out = forward(images, targets)
                if model.training:
                    calls[0] += 1
                    if calls[0] == 2:
                        out = {**out, "loss_cls": out["loss_cls"] * float("nan")}
                return out
            model.forward = nan_forward
        return model

    build.build_model = build_with_nan
    _dist_worker(rank, port, out, data_root, result_dir, "solver.max_iters=5")


def test_nan_on_one_rank_stops_every_rank(tmp_path, data_root):
    # without agreement the healthy rank would wait in DDP's gradient all-reduce until the NCCL/gloo timeout
    _generate(data_root)
    out, res = tmp_path / "ddp", tmp_path / "res"
    res.mkdir()
    ctx = mp.start_processes(_dist_nan_worker, args=(_free_port(), str(out), str(data_root), str(res)), nprocs=2,
                             start_method="spawn", join=False)
    deadline = time.time() + 240
    while not ctx.join(timeout=5):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("a rank hung after another rank's loss became non-finite")
    r0, r1 = (torch.load(res / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["code"] == r1["code"] == EXIT_NON_FINITE
    assert "non-finite loss at iteration 2" in r0["message"] and "non-finite loss at iteration 2" in r1["message"]
    assert safe_load(out / "nan_dump.pth", verify=False)["global_iter"] == 2


def test_norm_eval_keeps_batchnorm_statistics_frozen_while_training(tmp_path, data_root):
    """With model.backbone.norm_eval=true (every paper config) the backbone's BN statistics never move, while
    the weights do; the trainer puts the model in training mode through the backbone's own ``train()``."""
    from detector.build import build_model

    extra = ["model.backbone.norm_eval=true", "model.backbone.frozen_stages=1"]
    torch.manual_seed(0)  # as the trainer does (runtime.seed) before building the model
    init = build_model(load_config(REPO / "configs" / "default.yaml", TINY + extra)).state_dict()
    code, model, _ = train.run(tiny_args(tmp_path / "run", data_root, "solver.max_iters=2", *extra))
    assert code == 0
    after = model.state_dict()
    stats = [k for k in after if k.startswith("backbone.layer") and "running_" in k]
    assert stats and all(torch.equal(after[k], init[k]) for k in stats)
    conv = "backbone.layer2.0.conv1.weight"
    assert not torch.equal(after[conv], init[conv])
