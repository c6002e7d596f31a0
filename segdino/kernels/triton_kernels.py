"""The Triton programs behind :mod:`segdino.kernels` (imported only where a kernel is about to run).

Kernels are built on first use and once per interpreter setting, because Triton decides at
decoration time whether a kernel is compiled for the GPU or run by its CPU interpreter.
Written for Triton 3.x (tested with 3.6 on the GPU and 3.8's interpreter).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .dispatch import interpreting


@functools.lru_cache(maxsize=2)
def _kernels(interpret: bool):
    # One long function on purpose: Triton compiles the kernels defined inside it, once per
    # interpreter setting (the cache), so the kernels are built only when a CUDA run asks for them.
    @triton.jit
    def bilinear_add_kernel(
        x_ptr, a_ptr, o_ptr, C, h, w, H, W, scale_h, scale_w,
        sxb, sxc, sxh, sxw, sab, sac, sah, saw, sob, soc, soh, sow,
        HAS_ADD: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # One program: one output row of one image, BLOCK_W columns, BLOCK_C channels.
        pid = tl.program_id(0)
        b = pid // H
        oy = pid % H
        ox = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        cs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        # PyTorch's source index, in float32 like its float/bf16 kernels.
        sy = tl.maximum((oy.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
        y0 = tl.minimum(sy.to(tl.int32), h - 1)
        y1 = tl.minimum(y0 + 1, h - 1)
        ly = sy - y0.to(tl.float32)
        sx = tl.maximum((ox.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
        x0 = tl.minimum(sx.to(tl.int32), w - 1)
        x1 = tl.minimum(x0 + 1, w - 1)
        lx = (sx - x0.to(tl.float32))[:, None]
        mask = (ox < W)[:, None] & (cs < C)[None, :]
        base = x_ptr + b.to(tl.int64) * sxb + cs[None, :] * sxc
        r0 = base + y0 * sxh
        r1 = base + y1 * sxh
        v00 = tl.load(r0 + x0[:, None] * sxw, mask=mask, other=0.0).to(tl.float32)
        v01 = tl.load(r0 + x1[:, None] * sxw, mask=mask, other=0.0).to(tl.float32)
        v10 = tl.load(r1 + x0[:, None] * sxw, mask=mask, other=0.0).to(tl.float32)
        v11 = tl.load(r1 + x1[:, None] * sxw, mask=mask, other=0.0).to(tl.float32)
        v = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
        if HAS_ADD:
            a = tl.load(a_ptr + b.to(tl.int64) * sab + oy * sah + ox[:, None] * saw + cs[None, :] * sac,
                        mask=mask, other=0.0)
            v = v + a.to(tl.float32)
        o = o_ptr + b.to(tl.int64) * sob + oy * soh + ox[:, None] * sow + cs[None, :] * soc
        tl.store(o, v.to(o_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def dw_pw_stats_kernel(
        x_ptr, dw_ptr, pw_ptr, t_ptr, st_ptr, H, W, n_tiles,
        sxb, sxc, sxh, sxw, stb, stc, sth, stw,
        C: tl.constexpr, GS: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr,
    ):
        # One program: BP pixels of one row of one image, all C channels. The depthwise 3x3 conv is
        # computed BK input channels at a time and fed straight into the pointwise product, so the
        # depthwise output never reaches memory; the tile's GroupNorm statistics leave with it.
        pid = tl.program_id(0)
        b = pid // H
        oy = pid % H
        tile = tl.program_id(1)
        px = tile * BP + tl.arange(0, BP)
        co = tl.arange(0, C)
        xb = x_ptr + b.to(tl.int64) * sxb
        acc = tl.zeros((BP, C), dtype=tl.float32)
        for k0 in tl.static_range(0, C, BK):
            ck = k0 + tl.arange(0, BK)
            d = tl.zeros((BP, BK), dtype=tl.float32)
            for dy in tl.static_range(3):
                yy = oy + dy - 1
                row_ok = (yy >= 0) & (yy < H)
                for dx in tl.static_range(3):
                    xx = px + dx - 1
                    m = ((xx >= 0) & (xx < W) & row_ok)[:, None]
                    v = tl.load(xb + yy * sxh + xx[:, None] * sxw + ck[None, :] * sxc, mask=m, other=0.0)
                    wk = tl.load(dw_ptr + ck * 9 + dy * 3 + dx).to(tl.float32)
                    d += v.to(tl.float32) * wk[None, :]
            wt = tl.load(pw_ptr + ck[:, None] * C + co[None, :])  # (BK, C): rows of pw^T, coalesced
            acc = tl.dot(d.to(wt.dtype), wt, acc)
        t = acc.to(t_ptr.dtype.element_ty)
        valid = px < W
        tl.store(t_ptr + b.to(tl.int64) * stb + oy * sth + px[:, None] * stw + co[None, :] * stc, t,
                 mask=valid[:, None])
        # Per tile and group: the sum and the centred sum of squares (combined exactly on the host).
        tf = tl.where(valid[:, None], t.to(tl.float32), 0.0)
        n = tl.sum(valid.to(tl.float32), axis=0) * GS
        g_sum = tl.sum(tl.sum(tl.reshape(tf, (BP, C // GS, GS)), axis=2), axis=0)  # (G,)
        g_mean = g_sum / n
        dev = tl.reshape(tf, (BP, C // GS, GS)) - g_mean[None, :, None]
        dev = tl.where(tl.reshape(tl.broadcast_to(valid[:, None], (BP, C)), (BP, C // GS, GS)), dev, 0.0)
        g_m2 = tl.sum(tl.sum(dev * dev, axis=2), axis=0)
        gi = tl.arange(0, C // GS)
        out = st_ptr + ((b * H + oy) * n_tiles + tile).to(tl.int64) * (2 * (C // GS)) + gi * 2
        tl.store(out, g_sum)
        tl.store(out + 1, g_m2)

    @triton.jit
    def dw_pw_stats_tiled_kernel(
        x_ptr, dw_ptr, pw_ptr, t_ptr, st_ptr, H, W, n_tiles,
        sxb, sxc, sxh, sxw, stb, stc, sth, stw,
        C: tl.constexpr, GS: tl.constexpr, BP: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
    ):
        # One program: BP pixels of one row, BN output channels (a (BP, BN) float32 accumulator,
        # small enough to stay in registers). The C // BN programs of one pixel tile are adjacent
        # in launch order, so the input tile they all read comes from cache after the first.
        n_ct = C // BN
        pid = tl.program_id(0)
        nt = pid % n_ct
        rest = pid // n_ct
        tile = rest % n_tiles
        row = rest // n_tiles
        b = row // H
        oy = row % H
        px = tile * BP + tl.arange(0, BP)
        co = nt * BN + tl.arange(0, BN)
        xb = x_ptr + b.to(tl.int64) * sxb
        acc = tl.zeros((BP, BN), dtype=tl.float32)
        for k0 in range(0, C, BK):
            ck = k0 + tl.arange(0, BK)
            d = tl.zeros((BP, BK), dtype=tl.float32)
            for dy in tl.static_range(3):
                yy = oy + dy - 1
                row_ok = (yy >= 0) & (yy < H)
                for dx in tl.static_range(3):
                    xx = px + dx - 1
                    m = ((xx >= 0) & (xx < W) & row_ok)[:, None]
                    v = tl.load(xb + yy * sxh + xx[:, None] * sxw + ck[None, :] * sxc, mask=m, other=0.0)
                    wk = tl.load(dw_ptr + ck * 9 + dy * 3 + dx).to(tl.float32)
                    d += v.to(tl.float32) * wk[None, :]
            wt = tl.load(pw_ptr + ck[:, None] * C + co[None, :])  # (BK, BN) of pw^T
            acc = tl.dot(d.to(wt.dtype), wt, acc)
        t = acc.to(t_ptr.dtype.element_ty)
        valid = px < W
        tl.store(t_ptr + b.to(tl.int64) * stb + oy * sth + px[:, None] * stw + co[None, :] * stc, t,
                 mask=valid[:, None])
        # The tile's sum and centred sum of squares for each of its BN // GS groups (of the stored,
        # rounded values, which are what the normalisation reads back).
        tf = tl.where(valid[:, None], t.to(tl.float32), 0.0)
        n = tl.sum(valid.to(tl.float32), axis=0) * GS
        g_sum = tl.sum(tl.sum(tl.reshape(tf, (BP, BN // GS, GS)), axis=2), axis=0)
        dev = tl.reshape(tf, (BP, BN // GS, GS)) - (g_sum / n)[None, :, None]
        dev = tl.where(tl.reshape(tl.broadcast_to(valid[:, None], (BP, BN)), (BP, BN // GS, GS)), dev, 0.0)
        g_m2 = tl.sum(tl.sum(dev * dev, axis=2), axis=0)
        gi = nt * (BN // GS) + tl.arange(0, BN // GS)
        out = st_ptr + (row * n_tiles + tile).to(tl.int64) * (2 * (C // GS)) + gi * 2
        tl.store(out, g_sum)
        tl.store(out + 1, g_m2)

    @triton.jit
    def block_pass_kernel(
        x_ptr, a_ptr, dw_ptr, pw_ptr, st_ptr, ms_ptr, gamma_ptr, beta_ptr, gain_ptr, y_ptr, H, W, n_tiles,
        C: tl.constexpr, GS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
        APPLY: tl.constexpr, DEPTHWISE: tl.constexpr,
    ):
        # One program: BM consecutive pixels (row-major, rows may wrap) of one image, BN output
        # channels. x is channels-last and contiguous, so pixel p's channel c is at p * C + c. The
        # loop over input channels computes the depthwise 3x3 conv BK channels at a time in
        # registers and feeds it to the pointwise product (tensor cores); it is a real loop so that
        # Triton pipelines its loads. The pre-norm map t = PW(DW(x)) never reaches memory:
        # APPLY=0 stores the tile's GroupNorm partials (sum, centred sum of squares per group);
        # APPLY=1 recomputes t bit for bit and writes x + gain * GELU(GN(t)). DEPTHWISE=0: the
        # depthwise output is given (a_ptr, same layout, e.g. from cuDNN) and the loop is a plain
        # matrix product over it.
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        b = pid_m // n_tiles
        tile = pid_m % n_tiles
        hw = H * W
        p = tile * BM + tl.arange(0, BM)
        valid = p < hw
        py = p // W
        px = p % W
        co = pid_n * BN + tl.arange(0, BN)
        xb = x_ptr + b.to(tl.int64) * hw * C
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        ab = a_ptr + b.to(tl.int64) * hw * C
        for k0 in range(0, C, BK):
            ck = k0 + tl.arange(0, BK)
            if DEPTHWISE:
                d = tl.zeros((BM, BK), dtype=tl.float32)
                for dy in tl.static_range(3):
                    yy = py + (dy - 1)
                    for dx in tl.static_range(3):
                        xx = px + (dx - 1)
                        m = valid & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
                        v = tl.load(xb + (yy * W + xx)[:, None] * C + ck[None, :], mask=m[:, None], other=0.0)
                        wk = tl.load(dw_ptr + ck * 9 + (dy * 3 + dx)).to(tl.float32)
                        d += v.to(tl.float32) * wk[None, :]
                a = d.to(pw_ptr.dtype.element_ty)
            else:
                a = tl.load(ab + p[:, None] * C + ck[None, :], mask=valid[:, None], other=0.0)
            wt = tl.load(pw_ptr + ck[:, None] * C + co[None, :])  # (BK, BN) of pw^T
            acc = tl.dot(a.to(wt.dtype), wt, acc)
        if APPLY:
            gi = co // GS
            mean = tl.load(ms_ptr + (b * (C // GS) + gi) * 2)
            rstd = tl.load(ms_ptr + (b * (C // GS) + gi) * 2 + 1)
            scale = rstd * tl.load(gamma_ptr + co)
            shift = tl.load(beta_ptr + co) - mean * scale
            z = acc * scale[None, :] + shift[None, :]
            act = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
            off = p[:, None] * C + co[None, :]
            res = tl.load(xb + off, mask=valid[:, None], other=0.0).to(tl.float32)
            out = res + tl.load(gain_ptr).to(tl.float32) * act
            tl.store(y_ptr + b.to(tl.int64) * hw * C + off, out.to(y_ptr.dtype.element_ty), mask=valid[:, None])
        else:
            tf = tl.where(valid[:, None], acc, 0.0)
            n = tl.sum(valid.to(tl.float32), axis=0) * GS
            g_sum = tl.sum(tl.sum(tl.reshape(tf, (BM, BN // GS, GS)), axis=2), axis=0)
            dev = tl.reshape(tf, (BM, BN // GS, GS)) - (g_sum / n)[None, :, None]
            dev = tl.where(tl.reshape(tl.broadcast_to(valid[:, None], (BM, BN)), (BM, BN // GS, GS)), dev, 0.0)
            g_m2 = tl.sum(tl.sum(dev * dev, axis=2), axis=0)
            gi = pid_n * (BN // GS) + tl.arange(0, BN // GS)
            out = st_ptr + (pid_m.to(tl.int64) * (C // GS) + gi) * 2
            tl.store(out, g_sum)
            tl.store(out + 1, g_m2)

    return {"bilinear_add": bilinear_add_kernel, "dw_pw_stats": dw_pw_stats_kernel,
            "dw_pw_stats_tiled": dw_pw_stats_tiled_kernel, "block_pass": block_pass_kernel}


def kernels():
    return _kernels(interpreting())


def bilinear_add_triton(x: torch.Tensor, addend: torch.Tensor | None, out: torch.Tensor) -> None:
    """``out = resize(x, out's size) + addend``; ``out`` preallocated (B, C, H, W), any strides."""
    b, c, h, w = x.shape
    hh, ww = out.shape[-2:]
    block_c = min(128, triton.next_power_of_2(c))
    block_w = max(1, min(triton.next_power_of_2(ww), 4096 // block_c))
    grid = (b * hh, triton.cdiv(ww, block_w), triton.cdiv(c, block_c))
    a = addend if addend is not None else out  # never read without HAS_ADD
    kernels()["bilinear_add"][grid](
        x, a, out, c, h, w, hh, ww, h / hh, w / ww,
        *x.stride(), *a.stride(), *out.stride(),
        HAS_ADD=addend is not None, BLOCK_W=block_w, BLOCK_C=block_c,
    )


def dw_pw_stats_triton(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, t: torch.Tensor,
                       stats: torch.Tensor, group_size: int, tile: int) -> None:
    """``t = pointwise(depthwise(x))`` and per-tile GroupNorm partials into ``stats`` (B, H, tiles, G, 2).

    ``dw``: (C, 9); ``pw``: the pointwise weight transposed, (C_in, C_out), contiguous.
    """
    b, c, h, w = x.shape
    n_tiles = triton.cdiv(w, tile)
    kernels()["dw_pw_stats"][(b * h, n_tiles)](
        x, dw, pw, t, stats, h, w, n_tiles, *x.stride(), *t.stride(),
        C=c, GS=group_size, BP=tile, BK=min(c, 32), num_warps=8 if c >= 128 else 4,
    )


def dw_pw_stats_tiled_triton(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, t: torch.Tensor,
                             stats: torch.Tensor, group_size: int, tile: int, block_n: int,
                             block_k: int, num_warps: int = 4) -> None:
    """:func:`dw_pw_stats_triton` with ``block_n`` output channels per program (a power of two
    dividing C, a multiple of ``group_size``) and ``block_k`` input channels per step."""
    b, c, h, w = x.shape
    n_tiles = triton.cdiv(w, tile)
    kernels()["dw_pw_stats_tiled"][(b * h * n_tiles * (c // block_n),)](
        x, dw, pw, t, stats, h, w, n_tiles, *x.stride(), *t.stride(),
        C=c, GS=group_size, BP=tile, BK=block_k, BN=block_n, num_warps=num_warps,
    )


def block_pass_triton(x: torch.Tensor, dw: torch.Tensor, pw: torch.Tensor, stats: torch.Tensor,
                      mean_rstd: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, gain: torch.Tensor,
                      out: torch.Tensor | None, group_size: int, config: dict,
                      depthwise_out: torch.Tensor | None = None) -> None:
    """One pass of the two-pass SAD block over a contiguous channels-last ``x`` (B, C, H, W).

    ``out`` None: the GroupNorm partials into ``stats`` (B, tiles, G, 2); otherwise ``out = x + gain *
    GELU(GN(PW(DW(x))))`` from ``mean_rstd`` (B, G, 2). ``dw``: (C, 9); ``pw``: the pointwise weight
    transposed (C_in, C_out); ``config``: the tile (``BM`` pixels, ``BN`` output channels, ``BK``
    input channels per step) and ``num_warps``, ``num_stages``. ``depthwise_out``: the depthwise
    conv's output, given (same shape and layout as ``x``), instead of computed in the kernel.
    """
    b, c, h, w = x.shape
    bm, bn = config["BM"], config["BN"]
    n_tiles = triton.cdiv(h * w, bm)
    kernels()["block_pass"][(b * n_tiles, c // bn)](
        x, x if depthwise_out is None else depthwise_out, dw, pw, stats, mean_rstd, gamma, beta, gain,
        x if out is None else out, h, w, n_tiles,
        C=c, GS=group_size, BM=bm, BN=bn, BK=config["BK"], APPLY=out is not None, DEPTHWISE=depthwise_out is None,
        num_warps=config["num_warps"], num_stages=config["num_stages"],
    )
