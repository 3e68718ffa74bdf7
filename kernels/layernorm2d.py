"""LayerNorm over the channels of a channel-first (batch, C, H, W) map, in Triton.

The torch route (permute to channel-last, ``F.layer_norm``, permute back) moves the map through
memory three times in the forward and again in the backward, and under autocast its float32
output is cast again by the next layer. One program here owns (batch b, BLOCK_P positions) and
all C channels: it reads the (C, BLOCK_P) tile once (each channel row contiguous over positions),
normalises over C in float32 and writes the result once, in the requested dtype. The backward
loops over the channels twice (x and dy read twice, the second time mostly from cache), writes
dx, and reduces d weight / d bias through per-program partial rows summed in a fixed order
(deterministic, no atomics).
"""
from typing import List, Tuple

import torch
import triton
import triton.language as tl

from .checks import check_tensor
from .compile_ops import opaque_under_compile

__all__ = ['layer_norm_2d_triton', 'layer_norm_2d_torch']


@triton.jit
def _tile(C, P, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's (batch, BLOCK_P positions) tile over all channels, with its masks."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, BLOCK_C)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    cm = c < C
    pm = p < P
    return pid_p, b, c, p, cm, pm, cm[:, None] & pm[None, :]


@triton.jit
def _ln2d_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, C, P, eps, sxc, sxp, syc,
                     syp, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    pid_p, b, c, p, cm, pm, m2 = _tile(C, P, BLOCK_C, BLOCK_P)
    base = b * C * P
    x = tl.load(x_ptr + base + c[:, None] * sxc + p[None, :] * sxp, mask=m2,
                other=0.).to(tl.float32)
    mean = tl.sum(x, 0) / C
    xc = tl.where(m2, x - mean[None, :], 0.)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 0) / C + eps)
    w = tl.load(w_ptr + c, mask=cm, other=0.).to(tl.float32)
    bias = tl.load(b_ptr + c, mask=cm, other=0.).to(tl.float32)
    y = xc * rstd[None, :] * w[:, None] + bias[:, None]
    tl.store(y_ptr + base + c[:, None] * syc + p[None, :] * syp, y.to(y_ptr.dtype.element_ty),
             mask=m2)
    tl.store(mean_ptr + b * P + p, mean, mask=pm)
    tl.store(rstd_ptr + b * P + p, rstd, mask=pm)


@triton.jit
def _channel_block(src_ptr, w_ptr, b_ptr, dy_ptr, base, c0, p, pm, C, ssc, ssp, syc, syp,
                   FROM_OUTPUT: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channels c0 .. c0 + BLOCK_C of the backward's positions p: their indices and masks, the
    saved map (x, or FROM_OUTPUT: the output y) and dy as float32, the weight and, FROM_OUTPUT,
    the bias."""
    c = c0 + tl.arange(0, BLOCK_C)
    cm = c < C
    m2 = cm[:, None] & pm[None, :]
    src = tl.load(src_ptr + base + c[:, None] * ssc + p[None, :] * ssp, mask=m2,
                  other=0.).to(tl.float32)
    dy = tl.load(dy_ptr + base + c[:, None] * syc + p[None, :] * syp, mask=m2,
                 other=0.).to(tl.float32)
    w = tl.load(w_ptr + c, mask=cm, other=0.).to(tl.float32)
    if FROM_OUTPUT:
        bias = tl.load(b_ptr + c, mask=cm, other=0.).to(tl.float32)
    else:
        bias = tl.zeros_like(w)
    return c, cm, m2, src, dy, w, bias


@triton.jit
def _normalized(src, w, bias, mean, rstd, m2, FROM_OUTPUT: tl.constexpr):
    """x-hat from x and the statistics, or FROM_OUTPUT from y = w x-hat + b (|w| kept above
    1e-12 so that a zero weight gives a finite result; that channel's x-hat is then lost, as
    its output no longer depends on it)."""
    if FROM_OUTPUT:
        w_safe = tl.where(tl.abs(w) < 1e-12, tl.where(w < 0, -1e-12, 1e-12), w)
        xhat = (src - bias[:, None]) / w_safe[:, None]
    else:
        xhat = (src - mean[None, :]) * rstd[None, :]
    return tl.where(m2, xhat, 0.)


@triton.jit
def _ln2d_bwd_kernel(src_ptr, w_ptr, b_ptr, dy_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr,
                     C, P, NPB, ssc, ssp, syc, syp, sdc, sdp, FROM_OUTPUT: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Two passes over the channels, BLOCK_C at a time: the first sums the per-position terms
    of dx (and writes this program's d weight / d bias partial rows), the second writes dx. The
    saved map (x, or FROM_OUTPUT the output y) and dy are read twice (the second time mostly
    from cache): a whole-channel tile per program held ~200 registers per thread at 1024
    channels, one program per SM, and ran at 5x the byte floor (docs/kernels.md)."""
    pid_p = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = p < P
    base = b * C * P
    rstd = tl.load(rstd_ptr + b * P + p, mask=pm, other=0.)
    if FROM_OUTPUT:
        mean = tl.zeros_like(rstd)
    else:
        mean = tl.load(mean_ptr + b * P + p, mask=pm, other=0.)
    sum_xhat_wdy = tl.zeros((BLOCK_P, ), tl.float32)
    sum_wdy = tl.zeros((BLOCK_P, ), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c, cm, m2, src, dy, w, bias = _channel_block(src_ptr, w_ptr, b_ptr, dy_ptr, base, c0, p,
                                                     pm, C, ssc, ssp, syc, syp, FROM_OUTPUT,
                                                     BLOCK_C)
        xhat = _normalized(src, w, bias, mean, rstd, m2, FROM_OUTPUT)
        wdy = dy * w[:, None]
        sum_xhat_wdy += tl.sum(xhat * wdy, 0)
        sum_wdy += tl.sum(wdy, 0)
        row = (b * NPB + pid_p) * C + c
        tl.store(dw_ptr + row, tl.sum(dy * xhat, 1), mask=cm)
        tl.store(db_ptr + row, tl.sum(dy, 1), mask=cm)
    c1 = sum_xhat_wdy / C
    c2 = sum_wdy / C
    for c0 in range(0, C, BLOCK_C):
        c, cm, m2, src, dy, w, bias = _channel_block(src_ptr, w_ptr, b_ptr, dy_ptr, base, c0, p,
                                                     pm, C, ssc, ssp, syc, syp, FROM_OUTPUT,
                                                     BLOCK_C)
        xhat = _normalized(src, w, bias, mean, rstd, m2, FROM_OUTPUT)
        dx = (dy * w[:, None] - xhat * c1[None, :] - c2[None, :]) * rstd[None, :]
        tl.store(dx_ptr + base + c[:, None] * sdc + p[None, :] * sdp,
                 dx.to(dx_ptr.dtype.element_ty), mask=m2)


def _tiles(channels):
    """The forward's tile: all channels x BLOCK_P positions (at least 16: 64-byte rows), ~32
    elements per thread."""
    block_c = triton.next_power_of_2(channels)
    block_p = max(16, min(128, 4096 // block_c))
    return block_c, block_p, max(4, min(16, block_c * block_p // 1024))


def _bwd_tiles(channels, positions):
    """The backward's tile: BLOCK_C channels per step of its loops x BLOCK_P positions, and
    warps. (64, 64, 4) was best or within ~7% of the best at every VMamba-B training shape on
    the H100 (``tools/analysis/experiments/ln2d_tiles.py``)."""
    return (min(64, triton.next_power_of_2(channels)),
            min(64, max(16, triton.next_power_of_2(positions))), 4)


def _layout_strides(t):
    """(channel stride, position stride) of a (batch, C, H, W) map stored channel-first or
    channels-last; None for any other layout."""
    channels, positions = t.shape[1], t.shape[2] * t.shape[3]
    if t.is_contiguous():
        return positions, 1
    if t.is_contiguous(memory_format=torch.channels_last):
        return 1, channels
    return None


def _in_layout(t):
    """t itself when channel-first or channels-last (both read directly), else a copy."""
    return t if _layout_strides(t) is not None else t.contiguous()


def _forward_outputs(x, weight, bias, eps, out_dtype, channels_last_out):
    """Empty y (in the requested dtype and layout) and stats (also the fake implementation)."""
    fmt = torch.channels_last if channels_last_out else torch.contiguous_format
    return (torch.empty(x.shape, device=x.device, dtype=out_dtype, memory_format=fmt),
            x.new_empty((2, x.shape[0], x.shape[2] * x.shape[3]), dtype=torch.float32))


@opaque_under_compile('layer_norm_2d_fwd', _forward_outputs)
def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
             out_dtype: torch.dtype, channels_last_out: bool
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One launch; returns y and the per-position (mean, rstd) the backward needs."""
    batch, channels = x.shape[:2]
    positions = x.shape[2] * x.shape[3]
    block_c, block_p, warps = _tiles(channels)
    y, stats = _forward_outputs(x, weight, bias, eps, out_dtype, channels_last_out)
    grid = (triton.cdiv(positions, block_p), batch)
    _ln2d_fwd_kernel[grid](x, weight, bias, y, stats[0], stats[1], channels, positions, eps,
                           *_layout_strides(x), *_layout_strides(y), BLOCK_C=block_c,
                           BLOCK_P=block_p, num_warps=warps)
    return y, stats


def _backward_outputs(src, weight, bias, mean, rstd, dy, from_output, dx_dtype, dx_strides):
    """Empty dx (x's dtype and layout: ``dx_dtype``, ``dx_strides``) and the d weight / d bias
    partial rows (also the fake implementation)."""
    positions = src.shape[2] * src.shape[3]
    n_rows = src.shape[0] * triton.cdiv(positions, _bwd_tiles(src.shape[1], positions)[1])
    partials = src.new_empty((n_rows, src.shape[1]), dtype=torch.float32)
    dx = torch.empty_strided(src.shape, dx_strides, dtype=dx_dtype, device=src.device)
    return dx, partials, torch.empty_like(partials)


@opaque_under_compile('layer_norm_2d_bwd', _backward_outputs)
def _backward(src: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
              rstd: torch.Tensor, dy: torch.Tensor, from_output: bool, dx_dtype: torch.dtype,
              dx_strides: List[int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One launch; returns dx and per-block partial sums of d weight, d bias. ``src`` is the
    input x, or with ``from_output`` the output y (x-hat recovered as (y - bias) / weight)."""
    batch, channels = src.shape[:2]
    positions = src.shape[2] * src.shape[3]
    block_c, block_p, warps = _bwd_tiles(channels, positions)
    n_blocks = triton.cdiv(positions, block_p)
    dx, dw, db = _backward_outputs(src, weight, bias, mean, rstd, dy, from_output, dx_dtype,
                                   dx_strides)
    _ln2d_bwd_kernel[(n_blocks, batch)](src, weight, bias, dy, mean, rstd, dx, dw, db, channels,
                                        positions, n_blocks, *_layout_strides(src),
                                        *_layout_strides(dy), *_layout_strides(dx),
                                        FROM_OUTPUT=from_output, BLOCK_C=block_c,
                                        BLOCK_P=block_p, num_warps=warps)
    return dx, dw, db


class LayerNorm2dFunction(torch.autograd.Function):
    """Forward and backward launches. ``save_output``: keep the output y for the backward
    instead of the input x (x-hat = (y - bias) / weight): where y is held anyway, by the linear
    layer it feeds, the norm then holds no map of its own."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype, channels_last_out, save_output=False):
        y, stats = _forward(x, weight, bias, eps, out_dtype, channels_last_out)
        if save_output:
            ctx.save_for_backward(y, weight, bias, stats[1], stats[1])
            ctx.dx_like = (x.dtype, list(x.stride()))
        else:
            ctx.save_for_backward(x, weight, bias, stats[0], stats[1])
            ctx.dx_like = None
        return y

    @staticmethod
    def backward(ctx, dy):
        src, weight, bias, mean, rstd = ctx.saved_tensors
        dx_dtype, dx_strides = ctx.dx_like or (src.dtype, list(src.stride()))
        dx, dw, db = _backward(src, weight, bias, mean, rstd, _in_layout(dy),
                               ctx.dx_like is not None, dx_dtype, dx_strides)
        return (dx, dw.sum(0).to(weight.dtype), db.sum(0).to(weight.dtype)) + (None, ) * 4


def layer_norm_2d_triton(x, weight, bias, eps=1e-5, out_dtype=None, channels_last_out=False,
                         save_output=False):
    """LayerNorm over dim 1 of a (batch, C, H, W) map stored channel-first or channels-last
    (Triton; CUDA tensors, or CPU under ``TRITON_INTERPRET=1``). Statistics in float32; the
    output is ``out_dtype`` (default x's dtype), stored channels-last if ``channels_last_out``
    (what a following 1x1 convolution runs on without a layout change).

    ``save_output``: the backward recomputes x-hat from the output, (y - bias) / weight, so the
    input is not held (as Apex's memory-efficient LayerNorm). The output must then stay
    unmodified until the backward. Exact up to rounding in float32; with a half-precision output
    x-hat carries its rounding, about 2^-11 |y| / |weight| (float16)."""
    check_tensor('x', x, 4, (torch.float32, torch.bfloat16, torch.float16))
    channels = x.shape[1]
    for name, t in (('weight', weight), ('bias', bias)):
        check_tensor(name, t, 1)
        if t.shape[0] != channels:
            raise ValueError(f'{name} must have {channels} entries (the channels of x), got '
                             f'{tuple(t.shape)}')
    if _layout_strides(x) is None:
        raise ValueError('x must be contiguous, channel-first or channels-last, for the Triton '
                         f'LayerNorm2d; got strides {tuple(x.stride())} for shape '
                         f'{tuple(x.shape)}')
    out_dtype = out_dtype or x.dtype
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or
                                    bias.requires_grad):
        return LayerNorm2dFunction.apply(x, weight, bias, float(eps), out_dtype,
                                         bool(channels_last_out), bool(save_output))
    # no graph to record: skip the autograd Function's overhead (it shows in launch-bound runs)
    return _forward(x, weight, bias, float(eps), out_dtype, channels_last_out)[0]


def layer_norm_2d_torch(x, weight, bias, eps=1e-5):
    """Reference / CPU path: the same normalisation through ``F.layer_norm`` on a channel-last
    view."""
    return torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), weight, bias,
                                          eps).permute(0, 3, 1, 2)
