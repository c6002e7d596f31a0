"""RoPE tables computed once per token-grid size instead of on every forward pass.

timm's DINOv3 ViT, built with ``dynamic_img_size=True``, recomputes its rotary sin/cos table from
the periods on every call (a chain of small kernels each step). The table depends only on the grid
size, so :class:`CachedRope` keeps one per size, computed in float32 by the original module (the
same numbers), and hands it out while no training-time coordinate augmentation is active.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class CachedRope(nn.Module):
    """Stands in for a timm rotary-embedding module (``get_embed(shape)``), caching its tables.

    ``prime(shape, device)`` computes the table of a grid size ahead of time, outside any compiled
    region; ``get_embed`` returns a primed table, or computes one (not cached) for other sizes.
    """

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.inner = rope
        # A float32 copy computes the tables, whatever dtype the model is later cast to; held in a
        # list so that module casts (``.to(bfloat16)``) leave it and the tables alone.
        self._fp32 = [copy.deepcopy(rope).float()]
        self._tables: dict[tuple[int, int], torch.Tensor] = {}

    def _augmenting(self) -> bool:
        return self.training and bool(getattr(self.inner, "aug_active", False))

    def prime(self, shape: tuple[int, int], device: torch.device) -> None:
        key = (int(shape[0]), int(shape[1]))
        table = self._tables.get(key)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" names the current card: compare as it
            device = torch.device("cuda", torch.cuda.current_device())
        if table is None or table.device != device:
            src = self._fp32[0].to(device)
            # An ordinary tensor even when primed under inference mode, so that training can use it.
            with torch.inference_mode(False), torch.no_grad():
                table = src.get_embed(shape=[key[0], key[1]]).float().to(device)
            if table.is_cuda:  # a fixed address: CUDA graphs read it in place instead of copying it in
                torch._dynamo.mark_static_address(table)
            self._tables[key] = table

    def get_embed(self, shape=None, **kwargs) -> torch.Tensor:
        if shape is not None and not kwargs and not self._augmenting():
            table = self._tables.get((int(shape[0]), int(shape[1])))
            if table is not None:
                return table
        return self.inner.get_embed(shape=shape, **kwargs)


def cache_rope(vit: nn.Module) -> CachedRope | None:
    """Replace ``vit.rope`` by a :class:`CachedRope` (in place); None when the ViT has no RoPE."""
    rope = getattr(vit, "rope", None)
    if rope is None or not hasattr(rope, "get_embed"):
        return None
    if not isinstance(rope, CachedRope):
        vit.rope = CachedRope(rope)
    return vit.rope
