"""The cached RoPE table is timm's own."""

import torch

from segdino.kernels.rope import CachedRope


def test_rope_cache_returns_timms_table():
    from segdino.backbone import create_vit, get_spec

    vit = create_vit(get_spec("vitt16"))
    rope = CachedRope(vit.rope)
    want = vit.rope.get_embed(shape=[3, 5])
    assert rope.get_embed(shape=[3, 5]) is not None and not rope._tables  # uncached sizes are computed
    rope.prime((3, 5), torch.device("cpu"))
    got = rope.get_embed(shape=[3, 5])
    assert got is rope._tables[(3, 5)] and torch.equal(got, want.float())

