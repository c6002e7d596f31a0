"""Segmentation losses: BCE / CE, soft Dice, and their sums.

Binary models (one logit channel) use BCE with logits; multi-class models use cross-entropy over
``num_classes`` channels. The soft Dice term averages over foreground classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce", "bce_dice", "ce", "ce_dice", "auto", "auto_dice")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0, batch: bool = False) -> torch.Tensor:
    """1 - soft Dice, per image and foreground class, averaged.

    Args:
        logits: (B, K, H, W); K = 1 binary (sigmoid), else softmax over K.
        target: (B, H, W) integer labels.
        batch: one Dice per class over the whole batch (nnU-Net's batch Dice) instead of one per
            image. Patches are often empty, and per image an empty patch costs ``1 - 1/(sum p + 1)``,
            so every bit of probability it holds is punished as hard as a missed lesion; summed
            over the batch, the patches that hold a lesion set the scale.
    """
    if logits.shape[1] == 1:
        prob = torch.sigmoid(logits[:, 0]).unsqueeze(1)
        onehot = (target == 1).unsqueeze(1).to(prob.dtype)
    else:
        prob = torch.softmax(logits, dim=1)[:, 1:]
        onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    dims = (0, 2, 3) if batch else (2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce_dice",
                      batch_dice: bool = False) -> torch.Tensor:
    """Loss of (B, K, H, W) float32 logits against (B, H, W) labels.

    ``kind``: ``bce`` / ``ce`` (pixel-wise only), ``bce_dice`` / ``ce_dice`` (plus soft Dice);
    ``bce`` and ``ce`` are interchangeable names chosen by the model's class count.
    ``batch_dice``: the Dice term over the whole batch (:func:`soft_dice_loss`).
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target.to(logits.dtype))
    else:
        pixel = F.cross_entropy(logits, target.long())
    if kind.endswith("_dice"):
        return pixel + soft_dice_loss(logits, target, batch=batch_dice)
    return pixel
