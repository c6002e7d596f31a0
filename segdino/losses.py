"""Segmentation losses: BCE / CE, soft Dice, and their sums.

Binary models (one logit channel) use BCE with logits; multi-class models use cross-entropy over
``num_classes`` channels. The soft Dice term averages over foreground classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "bce_dice", "ce", "ce_dice", "auto", "auto_dice")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, per image and foreground class, averaged.

    Args:
        logits: (B, K, H, W); K = 1 binary (sigmoid), else softmax over K.
        target: (B, H, W) integer labels.
    """
    if logits.shape[1] == 1:
        prob = torch.sigmoid(logits[:, 0]).unsqueeze(1)
        onehot = (target == 1).unsqueeze(1).to(prob.dtype)
    else:
        prob = torch.softmax(logits, dim=1)[:, 1:]
        onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    dims = (2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce_dice") -> torch.Tensor:
    """Loss of (B, K, H, W) float32 logits against (B, H, W) labels.

    ``kind``: ``bce`` / ``ce`` (pixel-wise only), ``bce_dice`` / ``ce_dice`` (plus soft Dice);
    ``bce`` and ``ce`` are interchangeable names chosen by the model's class count.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    else:
        pixel = F.cross_entropy(logits, target.long())
    if kind.endswith("_dice"):
        return pixel + soft_dice_loss(logits, target)
    return pixel
