"""The sample order: seeded by epoch, shared out across ranks, foreground share met in every batch
(image lists and volume slices)."""

import numpy as np
import pytest

from segdino.data import synthetic as syn
from segdino.train_config import resolve_config
from segdino.training import EpochSampler, build_datasets


LESION = syn.VOLUME_LABELS["lesion"]


def test_epoch_order_depends_on_seed_and_epoch_only():
    data = list(range(23))
    a = EpochSampler(data, 4, seed=1)
    b = EpochSampler(data, 4, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b) and len(list(a)) == 20
    b.set_epoch(4)
    assert list(a) != list(b)
    # Two ranks of a 2-process run share out the one-process order of the same global batch.
    one = [i for _, i in EpochSampler(data, 8, seed=1)]
    r0 = [i for _, i in EpochSampler(data, 4, seed=1, rank=0, world=2)]
    r1 = [i for _, i in EpochSampler(data, 4, seed=1, rank=1, world=2)]
    assert sorted(r0 + r1) == sorted(one) and not set(r0) & set(r1)


def test_a_run_sampler_gives_every_epoch_its_own_keys_back_to_back():
    from torch.utils.data import DataLoader

    from segdino.training import RunSampler

    data = list(range(23))
    fg = np.arange(18, 23)
    s = EpochSampler(data, 4, seed=5, foreground=fg, foreground_ratio=0.5)
    per_epoch = []
    for e in range(2, 5):
        s.set_epoch(e)
        per_epoch += list(s)
    run = RunSampler(s, 2, 5)
    assert list(run) == per_epoch and len(run) == len(per_epoch) == 3 * 20
    s.set_epoch(0)  # the trainer moving the epoch meanwhile changes none of the run's keys
    assert list(run) == per_epoch
    # Through one DataLoader iterator, batches never straddle two epochs.
    class Keys:
        def __getitem__(self, key):
            return key

        def __len__(self):
            return 23

    batches = list(DataLoader(Keys(), batch_size=4, sampler=run, collate_fn=lambda b: b))
    assert len(batches) == 15 and all(len({e for e, _ in b}) == 1 for b in batches)


def test_foreground_ratio_is_met_in_every_batch():
    data = list(range(100))
    fg = np.arange(90, 100)
    s = EpochSampler(data, 6, seed=0, foreground=fg, foreground_ratio=1 / 3)
    order = [i for _, i in s]
    for b in range(0, len(order), 6):
        assert sum(i in set(fg.tolist()) for i in order[b : b + 6]) >= 2
    overall = np.isin(order, fg).mean()
    assert overall >= 1 / 3 - 1e-9 and overall < 0.5


@pytest.mark.parametrize("ratio", [0.25, 0.5, 1.0])
@pytest.mark.parametrize("world", [1, 2])
def test_sampler_hits_the_foreground_ratio_on_volume_slices(tiny_volumes, ratio, world):
    cfg = resolve_config(dict(data=str(tiny_volumes), out="unused", image_size=32, intensity="abdomen",
                              foreground_ratio=ratio, seed=5))
    train, _, foreground = build_datasets(cfg)
    table = train.label_index()
    # The rarest class is the lesion (fewer slices than the organ), and the sampler is given its slices.
    assert LESION in table and len(table[LESION]) < len(table[1]) < len(train)
    np.testing.assert_array_equal(foreground, table[LESION])
    natural = len(table[LESION]) / len(train)
    assert natural < 0.5  # without forcing, most slices hold no lesion

    batch = 4
    gb = batch * world
    forced = int(round(ratio * gb))
    for epoch in range(3):
        ranks = []
        for rank in range(world):
            s = EpochSampler(train, batch, seed=5, rank=rank, world=world, foreground=foreground,
                             foreground_ratio=ratio)
            s.set_epoch(epoch)
            ranks.append([i for _, i in s])
        steps = len(ranks[0]) // batch
        assert steps == len(train) // gb
        hits = []
        for b in range(steps):
            global_batch = [i for r in ranks for i in r[b * batch : (b + 1) * batch]]
            # Judged by the masks the model is trained on, not by the sampler's own bookkeeping.
            with_lesion = sum(bool((train[i]["mask"] == LESION).any()) for i in global_batch)
            assert with_lesion >= forced, (epoch, b, global_batch)
            hits.append(with_lesion / gb)
        # The rest of each batch is drawn as without forcing: the overall share sits near
        # r + (1 - r) * natural, far above the natural share for small r.
        expected = forced / gb + (1 - forced / gb) * natural
        assert abs(np.mean(hits) - expected) < 0.2
        assert np.mean(hits) >= forced / gb


def test_sampler_without_ratio_keeps_the_natural_share(tiny_volumes):
    cfg = resolve_config(dict(data=str(tiny_volumes), out="unused", image_size=32, intensity="abdomen",
                              foreground_ratio=0.0))
    train, _, foreground = build_datasets(cfg)
    assert foreground is None
    s = EpochSampler(train, 4, seed=0, foreground=foreground, foreground_ratio=cfg.foreground_ratio)
    order = [i for _, i in s]
    assert len(set(order)) == len(order) == (len(train) // 4) * 4  # a plain pass: every slice at most once


def test_workers_not_given_are_chosen_for_the_device_and_recorded(monkeypatch):
    # 2 on the CPU; on a GPU machine one per usable core less two, between 2 and 12.
    import os

    import torch

    from segdino.train_config import resolve_config
    from segdino.training.model_init import resolve_runtime
    from segdino.training.sampling import default_workers

    assert default_workers(False) == 2
    for cores, want in ((1, 2), (4, 2), (8, 6), (16, 12), (64, 12)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert default_workers(True) == want
    cfg = resolve_config({"data": "d", "out": "o"})
    assert cfg.num_workers is None
    resolve_runtime(cfg, torch.device("cpu"))
    assert cfg.num_workers == 2 and cfg.to_dict()["num_workers"] == 2  # what config.yaml records
    given = resolve_config({"data": "d", "out": "o", "num_workers": 5})
    resolve_runtime(given, torch.device("cpu"))
    assert given.num_workers == 5
