"""Samplers, collate and loaders: determinism across workers, resume position, sharding, padding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.build import build_dataset, build_test_loader, build_train_loader, collate
from data.sampler import InferenceSampler, TrainSampler, sample_seed
from detector.config import DataCfg


@pytest.fixture(scope="module")
def shapes_cfg(tmp_path_factory) -> DataCfg:
    cfg = DataCfg(dataset="shapes", root=str(tmp_path_factory.mktemp("shapes") / "set"), train_size=64,
                  test_short=64, test_max=100, batch_size=4, test_batch_size=3, num_workers=0)
    cfg.shapes.num_train, cfg.shapes.num_val, cfg.shapes.image_size = 40, 10, 64
    return cfg


def test_sampler_epoch_permutations():
    s = TrainSampler(10, batch_size=2, seed=4)
    s.set_epoch(0)
    e0 = list(s)
    assert e0 == list(s)  # same epoch, same order and seeds
    assert sorted(i for i, _ in e0) == list(range(10))
    s.set_epoch(1)
    e1 = list(s)
    assert sorted(i for i, _ in e1) == list(range(10)) and [i for i, _ in e1] != [i for i, _ in e0]
    assert [seed for _, seed in e0] == [sample_seed(4, 0, p) for p in range(10)]
    assert len({seed for _, seed in e0 + e1}) == 20
    other = TrainSampler(10, batch_size=2, seed=5)
    other.set_epoch(0)
    assert [i for i, _ in other] != [i for i, _ in e0]


def test_sampler_distributed_split_is_one_global_order():
    ranks = [TrainSampler(10, batch_size=2, world_size=3, rank=r, seed=1) for r in range(3)]
    for r in ranks:
        r.set_epoch(2)
    order = ranks[0].global_order()
    assert sorted(order.tolist()) == list(range(10))
    assert ranks[0].batches_per_epoch == 1  # 10 // (3 x 2): the partial global batch is dropped
    shares = [list(r) for r in ranks]
    assert all(len(sh) == 2 == len(r) for sh, r in zip(shares, ranks))
    for rank, sh in enumerate(shares):  # rank r reads positions r, r + 3 of the global order
        assert [i for i, _ in sh] == [int(order[rank]), int(order[rank + 3])]
        assert [seed for _, seed in sh] == [sample_seed(1, 2, rank), sample_seed(1, 2, rank + 3)]
    assert len({i for sh in shares for i, _ in sh}) == 6


def test_sampler_same_total_batch_reads_the_same_samples_on_any_world_size():
    """1 rank x 4 images and 2 ranks x 2 images see the same samples (and seeds) at every iteration."""
    one = TrainSampler(23, batch_size=4, world_size=1, rank=0, seed=3)
    two = [TrainSampler(23, batch_size=2, world_size=2, rank=r, seed=3) for r in range(2)]
    for s in [one, *two]:
        s.set_epoch(1, start_iter=2)
    a = list(one)
    b0, b1 = list(two[0]), list(two[1])
    assert one.batches_per_epoch == two[0].batches_per_epoch == 5
    for it in range(3):
        assert sorted(a[it * 4:(it + 1) * 4]) == sorted(b0[it * 2:(it + 1) * 2] + b1[it * 2:(it + 1) * 2])


def test_sampler_resume_continues_at_exact_position():
    s = TrainSampler(23, batch_size=4, seed=0)
    s.set_epoch(3)
    full = list(s)
    assert len(full) == 20  # 5 full batches
    s.set_epoch(3, start_iter=2)
    assert list(s) == full[8:] and len(s) == 20 - 8
    s.set_epoch(4)
    assert len(s) == 20  # the next epoch starts from the beginning again
    with pytest.raises(ValueError, match="start_iter"):
        s.set_epoch(3, start_iter=6)


def test_inference_sampler_shards_in_order():
    shards = [list(InferenceSampler(10, 3, r)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(InferenceSampler(2, 3, r)) for r in range(3)] == [1, 1, 0]


def test_collate_pads_bottom_right_to_divisor():
    a = (torch.ones(3, 40, 50), {"image_id": 1})
    b = (torch.full((3, 70, 20), 2.0), {"image_id": 2})
    images, targets = collate([a, None, b], size_divisor=32)
    assert images.shape == (2, 3, 96, 64) and [t["image_id"] for t in targets] == [1, 2]
    assert images[0, :, :40, :50].eq(1).all() and images[0, :, 40:].eq(0).all() and images[0, :, :, 50:].eq(0).all()
    assert images[1, :, :70, :20].eq(2).all() and images[1, :, 70:].eq(0).all()
    square, _ = collate([(torch.ones(3, 64, 64), {}), (torch.ones(3, 64, 64), {})])
    assert square.shape == (2, 3, 64, 64) and square.eq(1).all()


def _epoch(loader):
    return [(images.clone(), [(t["image_id"], t["boxes"].clone(), t["labels"].clone()) for t in targets])
            for images, targets in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x[0], y[0]) and all(p[0] == q[0] and torch.equal(p[1], q[1]) and torch.equal(p[2], q[2])
                                        for p, q in zip(x[1], y[1])) for x, y in zip(a, b))


def test_same_batches_with_0_and_2_workers_and_after_resume(shapes_cfg):
    ds = build_dataset(shapes_cfg, "train")
    loader0, sampler0 = build_train_loader(shapes_cfg, ds, seed=7)
    sampler0.set_epoch(1)
    ref = _epoch(loader0)
    assert len(ref) == len(ds) // 4 and all(b[0].shape == (4, 3, 64, 64) for b in ref)
    shapes_cfg.num_workers = 2
    try:
        loader2, sampler2 = build_train_loader(shapes_cfg, ds, seed=7)
        sampler2.set_epoch(1)
        assert _same(_epoch(loader2), ref)
        sampler2.set_epoch(1, start_iter=3)
        assert len(loader2) == len(ref) - 3
        assert _same(_epoch(loader2), ref[3:])
    finally:
        shapes_cfg.num_workers = 0
    sampler0.set_epoch(2)
    assert not torch.equal(_epoch(loader0)[0][0], ref[0][0])


def test_train_loader_flags(shapes_cfg):
    ds = build_dataset(shapes_cfg, "train")
    loader, sampler = build_train_loader(shapes_cfg, ds, seed=0)
    assert loader.drop_last and loader.batch_size == 4 and loader.sampler is sampler
    assert loader.pin_memory == torch.cuda.is_available() and not loader.persistent_workers
    assert len(loader) == sampler.batches_per_epoch == len(ds) // 4


def test_test_loader_covers_every_image_once(shapes_cfg):
    ds = build_dataset(shapes_cfg, "val")
    seen = []
    for rank in range(2):
        for images, targets in build_test_loader(shapes_cfg, ds, world_size=2, rank=rank):
            assert images.shape[2] % 32 == 0 and images.shape[3] % 32 == 0
            for img, t in zip(images, targets):
                h, w = t["img_size"].tolist()
                assert (h, w) == (64, 64)
                assert img[:, h:].eq(0).all() and img[:, :, w:].eq(0).all()
            seen += [t["image_id"] for t in targets]
    assert seen == ds.ids


def test_worker_seeding_is_deterministic(shapes_cfg):
    """numpy/random inside workers are seeded from the loader generator (seed), not left to chance."""
    from torch.utils.data import DataLoader

    from data.build import worker_init_fn

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return float(np.random.rand())

    def run(seed):
        return [x.item() for x in DataLoader(Draws(), batch_size=1, num_workers=2, worker_init_fn=worker_init_fn,
                                             generator=torch.Generator().manual_seed(seed))]
    assert run(3) == run(3) and run(3) != run(4)
