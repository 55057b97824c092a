"""build_criterion: unit-anchor GIoU, zero positives, the Focal path, SB plumbing and the balance hook."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import generalized_box_iou, sigmoid_focal_loss

from detector.config import LossCfg
from detector.losses import alrp_loss, build_criterion, giou_errors

STDS = [0.1, 0.1, 0.2, 0.2]


def _encode(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Normalised xyxy -> (dx, dy, dw, dh) deltas (DeltaXYWH, means 0), written out here for independence."""
    pw, ph = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    px, py = anchors[:, 0] + 0.5 * pw, anchors[:, 1] + 0.5 * ph
    gw, gh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    gx, gy = boxes[:, 0] + 0.5 * gw, boxes[:, 1] + 0.5 * gh
    d = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], 1)
    return d / torch.tensor(STDS, dtype=d.dtype)


ANCHORS = torch.tensor([[10.0, 20, 74, 84], [100, 50, 164, 178], [0, 0, 32, 32], [200, 200, 456, 328]])
GT = torch.tensor([[12.0, 25, 80, 90], [90, 60, 150, 200], [3, 1, 40, 28], [220, 190, 430, 350]])
PRED = torch.tensor([[15.0, 22, 70, 95], [120, 40, 170, 150], [30, 20, 60, 50], [210, 210, 440, 300]])


def test_giou_on_unit_anchor_equals_image_space_giou():
    errors = giou_errors(_encode(ANCHORS, PRED), _encode(ANCHORS, GT), STDS)
    want = 1 - torch.diag(generalized_box_iou(PRED.double(), GT.double()))
    assert torch.allclose(errors.double(), want, atol=1e-5)
    assert errors[2] > 1.0  # the third prediction does not overlap its box: GIoU < 0


def test_unit_anchor_decoding_clamps_log_ratios():
    huge = torch.tensor([[0.0, 0.0, 100.0, -100.0]])
    err = giou_errors(huge, torch.zeros(1, 4), STDS)
    w, h = math.exp(abs(math.log(16 / 1000))), math.exp(-abs(math.log(16 / 1000)))
    area = w * h
    inter = min(w, 1) * min(h, 1)
    union = area + 1 - inter
    enclose = max(w, 1) * max(h, 1)
    giou = inter / union - (enclose - union) / enclose
    assert float(err) == pytest.approx(1 - giou, rel=1e-4)


def _batch(gen: torch.Generator, num_pos: int, M: int = 400):
    logits = (torch.randn(M, generator=gen) - 2).requires_grad_(True)
    targets = torch.zeros(M)
    targets[torch.randperm(M, generator=gen)[:num_pos]] = 1
    targets[-20:] = torch.where(targets[-20:] == 1, targets[-20:], torch.full((20,), -1.0))
    num_pos = int((targets == 1).sum())
    anchors = ANCHORS[torch.arange(num_pos) % 4]
    pred = (_encode(anchors, PRED[torch.arange(num_pos) % 4]) + 0.1 * torch.randn(num_pos, 4, generator=gen))
    return logits, targets, pred.requires_grad_(True), _encode(anchors, GT[torch.arange(num_pos) % 4])


@pytest.mark.parametrize("kind", ["alrp", "ap", "focal"])
def test_losses_are_finite_and_flow(kind):
    crit = build_criterion(LossCfg(type=kind), 80, STDS).train()
    crit.set_period(100)
    logits, targets, pred, target = _batch(torch.Generator().manual_seed(0), 12)
    out = crit(logits, targets, pred, target)
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    total.backward()
    assert torch.isfinite(total)
    assert logits.grad.abs().sum() > 0 and pred.grad.abs().sum() > 0
    assert torch.all(logits.grad[targets == -1] == 0)
    assert all(not v.requires_grad for k, v in out.items() if not k.startswith("loss_"))
    assert float(out["num_pos"]) == 12


@pytest.mark.parametrize("kind", ["alrp", "ap"])
def test_zero_positive_batch_gives_zero_losses_and_zero_gradients(kind):
    crit = build_criterion(LossCfg(type=kind), 80, STDS).train()
    crit.set_period(100)
    logits = torch.randn(300, requires_grad=True)
    deltas = torch.randn(300, 4, requires_grad=True)  # a "box branch" output; no row is selected
    pos = torch.zeros(300, dtype=torch.bool)
    out = crit(logits, torch.zeros(300), deltas[pos], deltas.detach()[pos])
    assert out["loss_cls"].requires_grad and out["loss_box"].requires_grad
    assert float(out["loss_cls"].detach()) == 0 and float(out["loss_box"].detach()) == 0
    (out["loss_cls"] + out["loss_box"]).backward()
    assert torch.equal(logits.grad, torch.zeros(300)) and torch.equal(deltas.grad, torch.zeros(300, 4))
    if kind == "alrp":
        assert int(crit.sb.iteration) == 1 and float(crit.sb.count) == 0  # the iteration counts, not its losses


def test_focal_path_matches_torchvision():
    cfg = LossCfg(type="focal", reg="smooth_l1", smooth_l1_beta=0.11)
    crit = build_criterion(cfg, 80, STDS)
    logits, targets, pred, target = _batch(torch.Generator().manual_seed(1), 9)
    out = crit(logits, targets, pred, target)
    keep = targets >= 0
    want = sigmoid_focal_loss(logits[keep], targets[keep], alpha=0.25, gamma=2.0, reduction="sum") / 9
    assert torch.allclose(out["loss_cls"], want, rtol=1e-6)
    want_box = torch.nn.functional.smooth_l1_loss(pred, target, beta=0.11, reduction="mean")
    assert torch.allclose(out["loss_box"], want_box, rtol=1e-6)


def test_alrp_criterion_is_cls_plus_sb_times_loc_and_balanced():
    cfg = LossCfg(type="alrp", sb_init=50.0, sb_period=2)
    crit = build_criterion(cfg, 80, STDS).train()
    crit.set_period(1000)  # ignored: loss.sb_period > 0 wins
    crit.track_balance = True
    gen = torch.Generator().manual_seed(2)
    for step in range(2):
        logits, targets, pred, target = _batch(gen, 10)
        out = crit(logits, targets, pred, target)
        cls, loc = alrp_loss(logits, targets, giou_errors(pred, target, STDS))
        assert torch.allclose(out["loss_cls"], cls) and torch.allclose(out["loc_raw"], loc)
        assert torch.allclose(out["loss_box"], out["sb_weight"] * loc)
        (out["loss_cls"] + out["loss_box"]).backward()
        pos_sum, neg_sum = crit.last_balance
        assert float(pos_sum) < 0 and float(pos_sum / neg_sum) == pytest.approx(-1.0, abs=1e-5)  # Theorem 2
        if step == 0:
            first = (float(cls.detach()), float(loc.detach()))
    cls, loc = float(cls.detach()), float(loc.detach())
    assert float(out["sb_weight"]) == pytest.approx((first[0] + cls + first[1] + loc) / (first[1] + loc), rel=1e-5)


def test_bad_config_values_name_the_key():
    with pytest.raises(ValueError, match="loss.type"):
        build_criterion(LossCfg(type="softmax"), 80, STDS)
    with pytest.raises(ValueError, match="loss.reg"):
        build_criterion(LossCfg(type="focal", reg="iou"), 80, STDS)


# --------------------------------------------------------------------------- loss.rank_scope: global (2 gloo ranks)
GLOBAL_CASES = {"alrp": LossCfg(type="alrp", sb_period=100, rank_scope="global"),
                "ap_smooth_l1": LossCfg(type="ap", reg="smooth_l1", rank_scope="global"),
                "ap_giou": LossCfg(type="ap", reg="giou", reg_weight=2.0, rank_scope="global")}
RANK_POS = (5, 9)  # positives per rank (different on purpose: the regression's normaliser is the global count)


def _global_pools() -> list[tuple[torch.Tensor, ...]]:
    """Both ranks' pools (float64 logits), deterministic: the same on every process."""
    gen = torch.Generator().manual_seed(5)
    pools = []
    for num_pos in RANK_POS:
        logits, targets, pred, target = _batch(gen, num_pos, M=300)
        pools.append((logits.detach().double(), targets, pred.detach().double(), target.double()))
    return pools


def _run(cfg: LossCfg, pool) -> dict[str, torch.Tensor]:
    crit = build_criterion(cfg, 80, STDS).train()
    logits, targets, pred, target = (t.clone().requires_grad_(t.is_floating_point() and i in (0, 2))
                                     for i, t in enumerate(pool))
    out = crit(logits, targets, pred, target)
    (out["loss_cls"] + out["loss_box"]).backward()
    return {"cls": out["loss_cls"].detach(), "box": out["loss_box"].detach(), "g_logits": logits.grad,
            "g_pred": pred.grad}


def _global_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        pool = _global_pools()[rank]
        torch.save({name: _run(cfg, pool) for name, cfg in GLOBAL_CASES.items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_global_rank_scope_gradients_sum_to_the_single_process_gradient(tmp_path):
    """Each rank's loss gradient w.r.t. its own inputs is its slice of the gradient of one process holding both
    pools; the ranking terms are the global value on every rank, the regression terms add up over the ranks."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_global_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    pools = _global_pools()
    whole = tuple(torch.cat([p[i] for p in pools]) for i in range(4))
    m0, p0 = pools[0][0].numel(), pools[0][2].shape[0]
    for name, cfg in GLOBAL_CASES.items():
        single = _run(LossCfg(**{**cfg.__dict__, "rank_scope": "device"}), whole)  # no process group: one ranking
        r0, r1 = ranks[0][name], ranks[1][name]
        for r in (r0, r1):
            torch.testing.assert_close(r["cls"], single["cls"], rtol=1e-6, atol=1e-9)
        if name == "alrp":  # the localisation component is global too (SB x L_loc, same SB on both)
            torch.testing.assert_close(r0["box"], single["box"], rtol=1e-5, atol=1e-8)
            torch.testing.assert_close(r1["box"], single["box"], rtol=1e-5, atol=1e-8)
        else:  # normalised by the global positive count: the ranks' parts add up
            torch.testing.assert_close(r0["box"] + r1["box"], single["box"], rtol=1e-6, atol=1e-9)
            assert float(r0["box"]) != pytest.approx(float(single["box"]))  # not the per-device normalisation
        torch.testing.assert_close(torch.cat([r0["g_logits"], r1["g_logits"]]), single["g_logits"],
                                   rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(torch.cat([r0["g_pred"], r1["g_pred"]]), single["g_pred"], rtol=1e-5, atol=1e-8)
        assert r0["g_pred"].shape[0] == p0 and r0["g_logits"].shape[0] == m0


def test_rank_scope_is_refused_for_non_ranking_losses_and_checked():
    with pytest.raises(ValueError, match="loss.rank_scope"):
        build_criterion(LossCfg(type="focal", rank_scope="global"), 80, STDS)
    with pytest.raises(ValueError, match="loss.rank_scope"):
        build_criterion(LossCfg(type="alrp", rank_scope="world"), 80, STDS)
    for kind in ("alrp", "ap"):  # without a process group a global scope ranks the device's pool, as 'device'
        crit = build_criterion(LossCfg(type=kind, rank_scope="global", sb_period=10), 80, STDS)
        assert crit.rank_scope == "global" and crit.group() is None


def test_criterion_hooks_reach_every_self_balance():
    crit = build_criterion(LossCfg(type="alrp"), 80, STDS)
    assert crit.has_self_balance and crit.sb.period == 0
    crit.set_period(37)
    assert crit.sb.period == 37
    crit.consolidate()  # no process group: nothing to move, state unchanged
    assert crit.sb.period == 37 and float(crit.sb.weight) == 50.0
    ap = build_criterion(LossCfg(type="ap"), 80, STDS)
    assert not ap.has_self_balance
    ap.set_period(37)  # a no-op without self-balance
