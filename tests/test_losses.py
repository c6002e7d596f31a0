"""The losses: soft Dice per image and over the batch, and their sums with BCE / CE."""

import torch

from segdino.losses import segmentation_loss, soft_dice_loss


def _logits(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p).unsqueeze(1)


def test_batch_dice_is_one_dice_over_every_pixel_of_the_batch():
    # A patch with a lesion predicted half right and an empty patch with a little probability.
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1
    p = torch.full((2, 4, 4), 0.01)
    p[0, :2, :2] = 0.5
    p[1, 0, 0] = 0.9
    logits = _logits(p)
    inter = float((p * (target == 1)).sum())
    denom = float(p.sum() + (target == 1).sum())
    assert abs(float(soft_dice_loss(logits, target, batch=True)) - (1 - (2 * inter + 1) / (denom + 1))) < 1e-5
    per_image = [1 - (2 * float((p[i] * (target[i] == 1)).sum()) + 1) / (float(p[i].sum() + (target[i] == 1).sum()) + 1)
                 for i in range(2)]
    assert abs(float(soft_dice_loss(logits, target)) - sum(per_image) / 2) < 1e-5


def test_an_empty_patch_costs_less_under_batch_dice():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    p = torch.where(target == 1, 0.9, 0.01)
    p[1, :2, :2] = 0.6  # a false spot on the empty patch
    logits = _logits(p)
    # Per image, the empty patch alone costs 1 - 1/(sum p + 1), well over a third here.
    assert float(soft_dice_loss(logits, target)) > 0.3
    assert float(soft_dice_loss(logits, target, batch=True)) < 0.15


def test_segmentation_loss_passes_batch_dice_on():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    logits = torch.randn(2, 1, 8, 8)
    pixel = segmentation_loss(logits, target, "bce")
    assert torch.allclose(segmentation_loss(logits, target, "bce_dice", batch_dice=True) - pixel,
                          soft_dice_loss(logits, target, batch=True))
    multi = torch.randn(2, 3, 8, 8)
    assert float(segmentation_loss(multi, target, "ce_dice", batch_dice=True)) != float(
        segmentation_loss(multi, target, "ce_dice"))
