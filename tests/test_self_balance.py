"""Self-balance: update arithmetic, period bookkeeping, checkpoint round trip, and agreement across 2 gloo ranks."""
from __future__ import annotations

import io
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detector.losses import SelfBalance


def _feed(sb: SelfBalance, cls: list[float], loc: list[float], has_pos: list[bool]) -> list[float]:
    out = []
    for c, l, h in zip(cls, loc, has_pos):
        out.append(float(sb(torch.tensor(c), torch.tensor(l), h)))
    return out


def test_update_arithmetic_by_hand():
    sb = SelfBalance(init_weight=50.0, period=4)
    cls = [0.9, 0.7, 123.0, 0.5]
    loc = [0.2, 0.4, 456.0, 0.3]
    weights = _feed(sb, cls, loc, [True, True, False, True])  # the 3rd iteration has no positives
    mean_cls, mean_loc = (0.9 + 0.7 + 0.5) / 3, (0.2 + 0.4 + 0.3) / 3
    assert weights[:3] == [50.0, 50.0, 50.0]
    assert weights[3] == pytest.approx((mean_cls + mean_loc) / mean_loc, rel=1e-6)  # applies on the update iteration
    assert float(sb.cls_sum) == 0 and float(sb.loc_sum) == 0 and float(sb.count) == 0  # cleared
    assert int(sb.iteration) == 4
    # next period: only 2 of its 4 iterations happen yet, so the weight holds
    held = _feed(sb, [0.3, 0.3], [0.1, 0.1], [True, True])
    assert held == [weights[3]] * 2


def test_period_without_positives_keeps_the_weight():
    sb = SelfBalance(init_weight=7.0, period=2)
    assert _feed(sb, [1.0, 1.0], [1.0, 1.0], [False, False]) == [7.0, 7.0]


def test_eval_mode_does_not_accumulate():
    sb = SelfBalance(period=1).eval()
    assert _feed(sb, [1.0], [0.5], [True]) == [50.0]
    assert int(sb.iteration) == 0


def test_missing_period_warns_once_and_keeps_weight():
    sb = SelfBalance(period=0)
    with pytest.warns(UserWarning, match="set_period"):
        w = _feed(sb, [1.0, 2.0], [0.5, 0.5], [True, True])
    assert w == [50.0, 50.0]
    sb.set_period(3)
    assert _feed(sb, [1.0], [0.5], [True])[0] == pytest.approx(1 + 4.0 / 1.5)  # 3rd call: update over all 3
    with pytest.raises(ValueError):
        sb.set_period(0)


def test_epoch_length_applies_unless_a_period_was_configured():
    free, fixed = SelfBalance(period=0), SelfBalance(period=5)
    free.set_epoch_length(12)
    fixed.set_epoch_length(12)
    assert (free.period, fixed.period) == (12, 5)
    fixed.set_period(7)  # an explicit period always applies
    assert fixed.period == 7


def test_state_dict_round_trip_resumes_mid_period():
    sb = SelfBalance(init_weight=50.0, period=3)
    _feed(sb, [0.6, 0.2, 0.4], [0.3, 0.1, 0.2], [True] * 3)  # update: weight = 1 + 1.2 / 0.6 = 3
    _feed(sb, [0.5], [0.25], [True])  # one iteration into the next period
    buf = io.BytesIO()
    torch.save({"model": sb.state_dict()}, buf)
    buf.seek(0)
    restored = SelfBalance(init_weight=50.0, period=3)
    restored.load_state_dict(torch.load(buf)["model"])
    assert float(restored.weight) == pytest.approx(3.0)
    assert int(restored.iteration) == 4 and float(restored.count) == 1
    # both continue identically: the update lands on call 6 and includes the pre-checkpoint iteration
    a = _feed(sb, [0.1, 0.3], [0.05, 0.35], [True, True])
    b = _feed(restored, [0.1, 0.3], [0.05, 0.35], [True, True])
    assert a == b and a[0] == pytest.approx(3.0)
    assert a[1] == pytest.approx(1 + 0.9 / 0.65, rel=1e-6)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# per-rank losses; rank 1 has an iteration without positives
RANK_CLS = [[0.8, 0.6, 0.4], [0.2, 9.0, 0.3]]
RANK_LOC = [[0.1, 0.3, 0.2], [0.4, 9.0, 0.1]]
RANK_POS = [[True, True, True], [True, False, True]]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        sb = SelfBalance(init_weight=50.0, period=3)
        weights = _feed(sb, RANK_CLS[rank], RANK_LOC[rank], RANK_POS[rank])
        torch.save(weights, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _resume_worker(rank: int, port: int, out_dir: str) -> None:
    """Two iterations, consolidate + 'checkpoint' (rank 0's state), fresh modules load it, third iteration."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        sb = SelfBalance(init_weight=50.0, period=3)
        _feed(sb, RANK_CLS[rank][:2], RANK_LOC[rank][:2], RANK_POS[rank][:2])
        sb.consolidate()
        state = [sb.state_dict() if rank == 0 else None]
        dist.broadcast_object_list(state, src=0)  # every rank reads the file rank 0 wrote
        resumed = SelfBalance(init_weight=50.0, period=3)
        resumed.load_state_dict(state[0])
        weights = _feed(resumed, RANK_CLS[rank][2:], RANK_LOC[rank][2:], RANK_POS[rank][2:])
        torch.save(weights, f"{out_dir}/resumed{rank}.pt")
    finally:
        dist.destroy_process_group()


def _expected_two_rank_weight() -> float:
    cls = [c for r in range(2) for c, p in zip(RANK_CLS[r], RANK_POS[r]) if p]
    loc = [v for r in range(2) for v, p in zip(RANK_LOC[r], RANK_POS[r]) if p]
    return (sum(cls) / len(cls) + sum(loc) / len(loc)) / (sum(loc) / len(loc))


def test_two_gloo_ranks_resume_mid_period_to_the_same_weight(tmp_path):
    mp.spawn(_resume_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"resumed{r}.pt") for r in range(2))
    assert w0 == w1 and w0[0] == pytest.approx(_expected_two_rank_weight(), rel=1e-6)


def test_two_gloo_ranks_end_the_period_with_the_same_weight(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    cls = [c for r in range(2) for c, p in zip(RANK_CLS[r], RANK_POS[r]) if p]
    loc = [v for r in range(2) for v, p in zip(RANK_LOC[r], RANK_POS[r]) if p]
    expected = (sum(cls) / len(cls) + sum(loc) / len(loc)) / (sum(loc) / len(loc))
    assert w0[:2] == w1[:2] == [50.0, 50.0]
    assert w0[2] == w1[2] == pytest.approx(expected, rel=1e-6)
    local0 = 1 + sum(RANK_CLS[0]) / sum(RANK_LOC[0])
    assert abs(w0[2] - local0) > 0.1  # the per-process weight of the release would differ
