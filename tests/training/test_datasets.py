"""Volume runs decode their cases once, up front, into the cache the DataLoader workers share;
greyscale 2D images get the augmentation and optimiser the data decides."""

import torch
import yaml
from PIL import Image

from segdino.train_config import greyscale_options, resolve_config
from segdino.training import build_datasets
from segdino.volumes import VolumeSliceDataset
from tests.training.conftest import config, write_discs


def test_volume_cases_are_decoded_once_before_training_and_give_the_same_samples(tiny_volumes, tmp_path):
    cfg = config(tiny_volumes, tmp_path / "run", intensity="abdomen", volume_cache=2)
    data = build_datasets(cfg)
    train = data.train
    n = len(train.cases)
    assert n > cfg.volume_cache
    assert train.loads == n and len(train._cache) == n  # every case decoded once, all kept
    before = train.loads
    for i in range(0, len(train), 5):
        train[i]
    assert train.loads == before  # no decoding while training
    fresh = VolumeSliceDataset(train.cases, axis=train.axis_setting, context=train.context, intensity=train.intensity,
                               image_size=train.image_size, num_classes=train.num_classes, cache_size=1)
    for i in (0, len(train) // 2, len(train) - 1):
        a, b = train[i], fresh[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_volumes_larger_than_the_budget_stay_decoded_on_demand(tiny_volumes, tmp_path):
    cfg = config(tiny_volumes, tmp_path / "run", intensity="abdomen", volume_cache=2)
    data = build_datasets(cfg)
    ds = VolumeSliceDataset(data.train.cases, intensity=data.train.intensity, image_size=32, cache_size=2)
    need = sum(ds.decoded_bytes(ci) for ci in range(len(ds.cases)))
    assert need == sum(8 * 32 * 32 * 3 for _ in ds.cases)  # float16 image + 8-bit labels per voxel
    assert not ds.preload(2, max_bytes=need - 1) and ds.loads == 0 and ds.cache_size == 2
    assert ds.preload(2, max_bytes=need) and ds.loads == len(ds.cases)


def test_patch_runs_decode_their_cases_once_at_the_target_spacing(tiny_volumes, tmp_path):
    cfg = config(tiny_volumes, tmp_path / "run", intensity="abdomen", volume_cache=1, spacing="2.4,2.4", patch_size=16)
    train = build_datasets(cfg).train
    assert train.loads == len(train.cases) == len(train._cache)
    norm, _ = train.case_arrays(0)
    # (8, 32, 32) voxels of 1.2 mm in-plane, at 2.4 mm: the estimate follows the resampled plane
    assert train.decoded_bytes(0) == norm.size * 3


def _configured(data, run, **opts):
    cfg = resolve_config(dict(data=str(data), out=str(run), device="cpu", **opts))
    return build_datasets(cfg, run=run if opts.get("resume") else None).configure(cfg)


def _optimiser(cfg):
    return cfg.batch_size, cfg.lr, cfg.schedule, cfg.weight_decay, cfg.augment


def test_greyscale_images_train_the_segdino_recipe_with_the_authors_optimiser_unless_told_otherwise(tmp_path):
    colour = write_discs(tmp_path / "colour", n=8, size=32)
    grey = write_discs(tmp_path / "grey", n=8, size=32)
    for f in (grey / "images").glob("*.png"):
        Image.open(f).convert("L").save(f)
    g = _configured(grey, tmp_path / "run")
    assert _optimiser(g) == (4, 1e-4, "constant", 0.01, "paper")
    assert (g.loss, g.grad_clip, g.warmup_epochs, g.precision) == ("bce_dice", 1.0, 2.0, "auto")  # the recipe's
    assert _optimiser(_configured(colour, tmp_path / "run")) == (16, 5e-4, "cosine", 0.05, "segdino")
    # What the user gives stays; what they left alone still follows the data.
    assert _optimiser(_configured(grey, tmp_path / "run", batch_size=8, lr=3e-4)) == (8, 3e-4, "constant", 0.01,
                                                                                        "paper")
    assert greyscale_options(resolve_config({"recipe": "paper"})) == {}
    # A run started before the rule (batch 16 at 5e-4, cosine) resumes with what it started with.
    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(dict(batch_size=16, lr=5e-4, schedule="cosine",
                                                         weight_decay=0.05, augment="paper")))
    assert _optimiser(_configured(grey, run, resume=True)) == (16, 5e-4, "cosine", 0.05, "paper")
