"""Validation during training: Dice from overlap counts, empty cases scored as one."""

import numpy as np
import pytest
import torch

from segdino.training import Trainer, build_datasets, dice_from_counts, overlap_counts
from tests.training.conftest import config


def test_training_time_dice_from_counts_scores_both_empty_as_one():
    """The validation Dice that picks the best epoch: 2|P∩G| / (|P|+|G|), 1 when both are empty."""
    counts = np.array([[3, 4, 6],    # 6 / 10
                       [0, 0, 0],    # both empty: perfect
                       [0, 5, 0],    # false positive on an empty mask
                       [0, 0, 7],    # lesion missed
                       [9, 9, 9]])  # exact
    assert dice_from_counts(counts).tolist() == pytest.approx([0.6, 1.0, 0.0, 0.0, 1.0])
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
    gt = torch.tensor([[0, 1, 0], [2, 0, 0]])
    assert overlap_counts(pred, gt, 3).tolist() == [[1, 2, 1], [1, 2, 1]]
    assert overlap_counts(pred, gt, 1).tolist() == [[1, 2, 1]]  # binary: label 1
    empty = torch.zeros(4, 4, dtype=torch.long)
    assert dice_from_counts(overlap_counts(empty, empty, 3)).tolist() == [1.0, 1.0]


def test_validation_scores_an_empty_case_predicted_empty_as_one(discs, tmp_path):
    """An empty mask predicted empty counts 1 in the mean (DDTI has seven such cases), not 0 or NaN."""
    cfg = config(discs, tmp_path / "run")
    train, val, _ = build_datasets(cfg)
    trainer = Trainer(cfg, train, val, None, out=tmp_path / "run")
    with torch.no_grad():  # a model that predicts background everywhere
        trainer.model.head.conv.weight.zero_()
        trainer.model.head.conv.bias.fill_(-10.0)
    trainer.native_mask = lambda index: torch.zeros(tuple(val.native_mask(index).shape), dtype=torch.long)
    assert trainer.validate() == (1.0, [1.0])
