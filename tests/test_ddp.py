"""Multi-process training for real: 2 CPU processes with gloo, launched as clusters launch them.

- torchrun with validation every epoch writes best.pth and exits 0 (aLRP; AP Loss and Focal marked slow);
- SIGTERM to the whole process group (DataLoader workers included) saves last.pth, every rank exits with the
  resumable code, and the resumed run ends bit-identical to an uninterrupted one;
- a 1-process checkpoint resumes on 2 processes with the same total batch, and is refused with another;
- two torchrun launchers on localhost (``--nnodes 2``, one process each) train together.

Every launch is bounded in time: a hang fails the test instead of blocking the suite.
"""
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

from detector.checkpoint import safe_load
from detector.errors import EXIT_CHECKPOINT, EXIT_PREEMPTED

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.num_classes=4", "model.backbone.name=resnet18", "model.fpn.out_channels=16",
    "model.head.num_convs=1", "model.head.channels=16",
    "data.train_size=64", "data.test_short=64", "data.test_max=64", "data.test_batch_size=4",
    "data.num_workers=0", "data.min_size=4", "data.shapes={num_train: 16, num_val: 4, image_size: 64, seed: 1}",
    "solver.warmup_iters=3", "solver.base_lr=0.01", "solver.reference_batch=4", "runtime.log_interval=1",
    "runtime.eval_interval=0", "runtime.device=cpu",
]
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _args(out: Path, data_root: Path, *extra: str) -> list[str]:
    return ["--config", "configs/default.yaml", "--output-dir", str(out), *TINY, f"data.root={data_root}", *extra]


def _wait(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[int]:
    deadline = time.time() + timeout
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a process hung (>{timeout} s): {p.args}")
    return codes


def _launch_ranks(n: int, args: list[str], log_dir: Path) -> list[subprocess.Popen]:
    """Start ``n`` ranks of train.py (as srun does: RANK/WORLD_SIZE in the environment) in ONE process group."""
    port, procs = _free_port(), []
    log_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(n):
        env = {**_env(), "RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(log_dir / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, process_group=0 if rank == 0 else procs[0].pid))
    return procs


def _torchrun(args: list[str], log: Path, nproc: int = 2, extra: tuple[str, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", *extra, "train.py", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _rows(out: Path, kind: str) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["type"] == kind]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The shapes data, generated once by a single process so that no two ranks race to write it."""
    root = tmp_path_factory.mktemp("shapes")
    from data.shapes import ensure_shapes_dataset
    from detector.config import load_config
    cfg = load_config(REPO / "configs" / "default.yaml", TINY + [f"data.root={root}"])
    ensure_shapes_dataset(cfg.data.root, **vars(cfg.data.shapes))
    return root


@pytest.mark.parametrize("loss", [
    "alrp", pytest.param("ap", marks=pytest.mark.slow), pytest.param("focal", marks=pytest.mark.slow),
    pytest.param("alrp-global", marks=pytest.mark.slow)])
def test_torchrun_with_validation_writes_best_and_exits_0(tmp_path, data_root, loss):
    """The first evaluation of a multi-process run used to abort gloo (a collective inside a rank-0 branch).

    ``alrp-global`` runs the trainer with ``loss.rank_scope=global`` (one ranking over both processes' images)."""
    out = tmp_path / "run"
    args = _args(out, data_root, "data.batch_size=2", "solver.epochs=2", "solver.lr_steps=[1]",
                 "runtime.eval_interval=1", f"loss.type={loss.split('-')[0]}")
    if loss.startswith("ap") or loss == "focal":
        args.append("loss.reg=smooth_l1")
    if loss.endswith("global"):
        args.append("loss.rank_scope=global")
    proc = _torchrun(args, tmp_path / "torchrun.log")
    assert _wait([proc]) == [0], (tmp_path / "torchrun.log").read_text()[-3000:]
    assert (out / "best.pth").is_file() and (out / "last.pth").is_file()
    evals = _rows(out, "eval")
    assert [r["epoch"] for r in evals] == [1, 2]
    best = safe_load(out / "best.pth")
    assert best["kind"] == "weights" and "optimizer" not in best  # lean
    assert best["best_ap"] == pytest.approx(max(r["AP"] for r in evals))
    assert safe_load(out / "last.pth")["best_ap"] == best["best_ap"]
    assert (out / "exit_status").read_text().split()[0] == "0"


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_workers_resumes_bit_identical(tmp_path, data_root):
    common = ["data.batch_size=2", "data.num_workers=2", "solver.epochs=4", "solver.lr_steps=[3]"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _wait(_launch_ranks(2, _args(straight, data_root, *common), tmp_path / "logs_straight")) == [0, 0]

    procs = _launch_ranks(2, _args(split, data_root, *common), tmp_path / "logs_split")
    deadline = time.time() + TIMEOUT
    while len(_rows(split, "train")) < 3 and time.time() < deadline and procs[0].poll() is None:
        time.sleep(0.05)
    assert procs[0].poll() is None, "the run ended before it could be interrupted"
    os.killpg(procs[0].pid, signal.SIGTERM)  # what Slurm / Kubernetes do: the whole group, workers included
    codes = _wait(procs)
    logs = "".join((tmp_path / "logs_split" / f"rank{r}.log").read_text() for r in range(2))
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], logs[-3000:]
    stopped = safe_load(split / "last.pth")
    assert 3 <= stopped["global_iter"] < 16 and "SIGTERM" in logs and "Traceback" not in logs
    assert (split / "exit_status").read_text().split()[0] == str(EXIT_PREEMPTED)

    assert _wait(_launch_ranks(2, _args(split, data_root, *common) + ["--resume"], tmp_path / "logs_resume")) == [0, 0]
    a, b = safe_load(straight / "last.pth"), safe_load(split / "last.pth")
    assert a["global_iter"] == b["global_iter"] == 16
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k in ("global_iter", "loss", "loss_cls", "loss_box",  # noqa: E731
                                                                  "sb_weight", "lr")} for r in rows]
    assert strip(_rows(straight, "train")) == strip(_rows(split, "train"))


def test_resume_on_another_world_size_keeps_the_total_batch(tmp_path, data_root):
    out = tmp_path / "run"
    one = subprocess.run([sys.executable, "train.py", *_args(out, data_root, "data.batch_size=4", "solver.max_iters=2")],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stderr[-2000:]
    assert safe_load(out / "last.pth")["total_batch"] == 4

    # 2 processes x 4 images would read other samples per iteration: refused, naming the fix
    refused = _wait(_launch_ranks(2, _args(out, data_root, "data.batch_size=4", "solver.max_iters=4") + ["--resume"],
                                  tmp_path / "logs_refused"))
    text = (tmp_path / "logs_refused" / "rank0.log").read_text()
    assert refused == [EXIT_CHECKPOINT, EXIT_CHECKPOINT] and "data.batch_size=2" in text, text[-2000:]
    assert safe_load(out / "last.pth")["global_iter"] == 2  # untouched

    # 2 processes x 2 images: continues at the next unseen samples of the same global order
    codes = _wait(_launch_ranks(2, _args(out, data_root, "data.batch_size=2") + ["--resume", "solver.max_iters=4"],
                                tmp_path / "logs_resume"))
    text = (tmp_path / "logs_resume" / "rank0.log").read_text()
    assert codes == [0, 0], text[-2000:]
    ckpt = safe_load(out / "last.pth")
    assert ckpt["global_iter"] == 4 and ckpt["world_size"] == 2 and ckpt["total_batch"] == 4
    assert "resuming a 1-process run on 2 process(es)" in text
    assert [r["global_iter"] for r in _rows(out, "train")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_two_torchrun_launchers_on_localhost(tmp_path, data_root):
    """Multi-node as two nodes would do it: --nnodes 2, one process per launcher, static rendezvous."""
    out, port = tmp_path / "run", _free_port()
    args = _args(out, data_root, "data.batch_size=2", "solver.max_iters=3")
    launchers = [_torchrun(args, tmp_path / f"node{n}.log", nproc=1,
                           extra=("--nnodes=2", f"--node_rank={n}", "--master_addr=127.0.0.1", f"--master_port={port}"))
                 for n in range(2)]
    codes = _wait(launchers)
    assert codes == [0, 0], (tmp_path / "node0.log").read_text()[-2000:]
    ckpt = safe_load(out / "last.pth")
    assert ckpt["global_iter"] == 3 and ckpt["world_size"] == 2
