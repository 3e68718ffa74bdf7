"""SS2D core kernels for d_state N = 1 on a channels-last map (small maps; inference by default).

The chunked kernels (``ss2d_n1.py``) read the map channel-first, one channel per row of a
(BLOCK_C, BLOCK_L) tile: below 512 positions their column directions walk it with a stride
(one 2-byte element per 32-byte sector; at 14 x 14 the forward ran at ~80% of L2 throughput)
and their reversed directions pay for ``reverse=True`` scans. Here the map is (batch, H*W, C):
each step of every direction is one contiguous row of channels, so walking columns or walking
backwards only changes which rows a chunk gathers. A program takes BLOCK_C channels of one
image, one channel per thread, and every step of a chunk (BLOCK_L of them) in that thread's
registers: the scans along the steps need no shuffle. Delta's pre-activation comes from one
GEMM before each launch, (batch, 4, H*W, C) in map order, in the dt projection's dtype
(``ss2d_n1._projected_dt``); the backward recomputes it rather than holding it, and the
projection's gradients and the per-image sums are the chunked kernels' (``ss2d_n1``).

The directions add into a float32 map (the last one writes y in the output's dtype), or, on
a float16 map with ``fp16_sums`` (the chunked kernels' default: ``ss2d_n1.default_fp16_sums``),
into the float16 output itself, as the authors' merge adds them. The backward's channel sums of
dB and dC use float32 atomics (not bitwise reproducible); its dA, d bias and dD are per-image
partials summed by the caller.

Where they run (H100 timings in docs/kernels.md): ``$VMAMBA_SCAN_CHANNELS_LAST``, by default
``inference``: maps below ``ss2d_n1.TRANSPOSE_FROM_LENGTH`` positions where no gradient is
wanted (the forward with its inference tile 13% faster than the chunked kernels' at 14 x 14;
compiled inference of the whole model +5-8% at VMamba-T, +11-13% at S and B); ``small``: those
maps also in training (the training pair is slower); ``all``: every map; ``0``: nowhere. Or
``channels_last=True`` of :func:`vmamba_kernels.ss2d_n1.ss2d_scan_n1`;
:func:`channels_last_scan` tells the model which layout to hand the scan.
"""
import inspect
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .checks import env_choice, wants_grad
from .compile_ops import opaque_under_compile
from .triton_math import _channel_params, _chunk_grads, _combine, _combine_grad, _softplus

__all__ = ['channels_last_scan', 'cl_launch_config', 'ss2d_scan_n1_channels_last',
           'CHANNELS_LAST_ENV', 'CL_TILES']

CHANNELS_LAST_ENV = 'VMAMBA_SCAN_CHANNELS_LAST'
CHANNELS_LAST_CHOICES = {'0': 'off', 'inference': 'maps below 512 positions, without gradients',
                         'small': 'maps below 512 positions', 'all': 'every map'}
# H100, compiled inference at batch 128, fp16 (docs/kernels.md): VMamba-T 7681 / 8043 -> 8320 /
# 8422 img/s, S 4018 -> 4534, B 2932 -> 3269 against '0'
DEFAULT_CHANNELS_LAST = 'inference'


def channels_last_scan(height: int, width: int, inference: bool = False) -> bool:
    """Whether the d_state 1 scan of an (height, width) map runs these kernels by default
    (``$VMAMBA_SCAN_CHANNELS_LAST``; ``inference``: no gradient is wanted), so that a caller
    can hand it the map channels-last."""
    from .ss2d_n1 import TRANSPOSE_FROM_LENGTH
    mode = env_choice(CHANNELS_LAST_ENV, CHANNELS_LAST_CHOICES, DEFAULT_CHANNELS_LAST)
    small = height * width < TRANSPOSE_FROM_LENGTH
    return mode == 'all' or (small and (mode == 'small' or (mode == 'inference' and inference)))


def cl_launch_config(block_c=None, block_l=None, num_warps=None, bwd_block_c=None,
                     bwd_num_warps=None, fp16_sums=None, inference=False):
    """Forward and backward tiles: BLOCK_C channels (one per thread) x BLOCK_L steps, warps; one
    BLOCK_L for both (the backward starts each chunk from the state the forward saved at it).
    Defaults (H100, VMamba-T / B stages 3-4, fp16, batch 128; docs/kernels.md): with gradients
    8 steps, the forward 32 channels on one warp, the backward 128 on four (longer chunks spill
    in the backward); ``inference`` (no backward follows) the forward 16 channels x 32 steps on
    one warp (stage 3: 0.30 ms against 0.52 with the training tile). ``fp16_sums``: on a float16
    map with y (forward) or dx (backward) in float16 the directions add into that output, else
    into a float32 map; None: :func:`ss2d_n1.default_fp16_sums`."""
    from .ss2d_n1 import resolve_fp16_sums
    fp16 = resolve_fp16_sums(fp16_sums)

    def launch(c, l, w):
        for name, value in (('block_c', c), ('block_l', l), ('num_warps', w)):
            if value < 1 or value & (value - 1):
                raise ValueError(f'{name} must be a power of two, got {value}')
        return dict(BLOCK_C=c, BLOCK_L=l, num_warps=w, fp16_sums=fp16)

    block_l = block_l or (32 if inference else 8)
    return (launch(block_c or (16 if inference else 32), block_l, num_warps or 1),
            launch(bwd_block_c or 128, block_l, bwd_num_warps or 4))


# the launch options these kernels take; the chunked kernels' others (segments, register caps,
# the backward's sums) keep a call on the chunked kernels
CL_TILES = tuple(name for name in inspect.signature(cl_launch_config).parameters
                 if name != 'inference')


@triton.jit
def _channels(pid_c, CS, BLOCK_C: tl.constexpr):
    """This program's channels times CS (1 at run time, not specialised): unable to prove them
    contiguous, the compiler lays the (channels, steps) tiles out one channel per thread with
    the steps in its registers, instead of vectors of 8 channels per thread with the steps
    across threads and warps (which puts the scans along the steps across them)."""
    return (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)) * CS


@triton.jit
def _chunk(x_base, pre_base, bs_base, cs_base, A, bias, j, K, c, cm, lt, CH, H, W, L,
           BLOCK_L: tl.constexpr):
    """Chunk j of direction K's walk (0, 1: rows, columns; 2, 3: the same backwards) as a
    (channels, BLOCK_L steps) tile in walk order: the step mask, map offsets s, tile mask and
    offsets, u, delta's pre-activation (with bias), the B and C rows, delta and the decay (1
    past the walk's end)."""
    i = j * BLOCK_L + lt
    valid = i < L
    t = tl.where(K >= 2, L - 1 - i, i)
    s = tl.where(K % 2 == 1, (t % H) * W + t // H, t)
    s = tl.where(valid, s, 0)
    m2 = cm[:, None] & valid[None, :]
    offs = c[:, None] + s[None, :] * CH
    u = tl.load(x_base + offs, mask=m2, other=0.).to(tl.float32)
    pre = tl.load(pre_base + offs, mask=m2, other=0.).to(tl.float32) + bias[:, None]
    bv = tl.load(bs_base + s, mask=valid, other=0.).to(tl.float32)
    cv = tl.load(cs_base + s, mask=valid, other=0.).to(tl.float32)
    delta = _softplus(pre)
    decay = tl.where(valid[None, :], tl.exp(delta * A[:, None]), 1.0)
    return valid, s, m2, offs, u, pre, bv, cv, delta, decay


@triton.jit
def _add_direction(v, acc_base, out_base, offs, m2, K: tl.constexpr):
    """Direction K's part ``v`` (float32) of the sum over the directions: the first stores it
    into the map acc (float32, or out itself), the next add it to what is there, the last
    writes the sum to out (out's dtype). The same threads hold the same elements in every
    direction."""
    if K > 0:
        v += tl.load(acc_base + offs, mask=m2, other=0.).to(tl.float32)
    if K == 3:
        tl.store(out_base + offs, v.to(out_base.dtype.element_ty), mask=m2)
    else:
        tl.store(acc_base + offs, v.to(acc_base.dtype.element_ty), mask=m2)


@triton.jit
def _fwd_direction(x_base, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, acc_base, y_base,
                   hs_ptr, b, K: tl.constexpr, c, cm, lt, CH, H, W, L, HAS_D: tl.constexpr,
                   SAVE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Direction K over BLOCK_C channels of image b: the first stores into the map acc, the
    next add to it, the last writes the sum to y (y's dtype). SAVE: each chunk's start
    state into hs (batch, 4, chunks, C) for the backward."""
    kc = K * CH + c
    A, bias, Dk = _channel_params(A_ptr, bias_ptr, D_ptr, kc, cm, HAS_D)
    pre_base = pre_ptr + (b * 4 + K) * L * CH
    rows = (b * 4 + K) * L
    n_chunks = tl.cdiv(L, BLOCK_L)
    hs_base = hs_ptr + (b * 4 + K) * n_chunks * CH + c
    h = tl.zeros((BLOCK_C, ), tl.float32)
    for j in range(0, n_chunks):
        valid, s, m2, offs, u, pre, bv, cv, delta, decay = _chunk(
            x_base, pre_base, B_ptr + rows, C_ptr + rows, A, bias, j, K, c, cm, lt, CH, H, W, L,
            BLOCK_L)
        if SAVE:
            tl.store(hs_base + j * CH, h, mask=cm)
        prod, states = tl.associative_scan((decay, delta * u * bv[None, :]), 1, _combine)
        states += prod * h[:, None]
        h = tl.sum(tl.where(lt[None, :] == BLOCK_L - 1, states, 0.), 1)
        _add_direction(states * cv[None, :] + Dk[:, None] * u, acc_base, y_base, offs, m2, K)


@triton.jit(do_not_specialize=['CS'])
def _ss2d_fwd_cl_kernel(x_ptr, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, acc_ptr, y_ptr,
                        hs_ptr, CH, H, W, L, CS, HAS_D: tl.constexpr, SAVE: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = _channels(pid_c, CS, BLOCK_C)
    cm = c < CH
    lt = tl.arange(0, BLOCK_L)
    base = b * L * CH
    args = (x_ptr + base, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, acc_ptr + base,
            y_ptr + base, hs_ptr, b)
    # each direction adds to what the previous ones stored (the same threads: the barriers
    # only keep the order plain)
    _fwd_direction(*args, 0, c, cm, lt, CH, H, W, L, HAS_D, SAVE, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _fwd_direction(*args, 1, c, cm, lt, CH, H, W, L, HAS_D, SAVE, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _fwd_direction(*args, 2, c, cm, lt, CH, H, W, L, HAS_D, SAVE, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _fwd_direction(*args, 3, c, cm, lt, CH, H, W, L, HAS_D, SAVE, BLOCK_C, BLOCK_L)


@triton.jit
def _bwd_direction(x_base, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_base,
                   acc_base, dx_base, dpre_ptr, dA_ptr, dbias_ptr, dD_ptr, dB_ptr, dC_ptr, b,
                   K: tl.constexpr, c, cm, lt, CH, H, W, L, HAS_D: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Direction K of the backward, chunks last to first: the recurrences of
    ``ss2d_n1._bwd_direction`` on (channels, steps) tiles. dx: the first direction stores into
    the map acc (float32, or dx), the next add to it, the last writes dx (dx's dtype);
    d(pre-activation) per direction in map order; dB / dC summed over channels by float32
    atomics; dA, d bias, dD per (image, direction, channel)."""
    kc = K * CH + c
    A, bias, Dk = _channel_params(A_ptr, bias_ptr, D_ptr, kc, cm, HAS_D)
    pre_base = pre_ptr + (b * 4 + K) * L * CH
    dpre_base = dpre_ptr + (b * 4 + K) * L * CH
    rows = (b * 4 + K) * L
    n_chunks = tl.cdiv(L, BLOCK_L)
    hs_base = hs_ptr + (b * 4 + K) * n_chunks * CH + c
    carry = tl.zeros((BLOCK_C, ), tl.float32)  # decay * dL/dh of the step after the chunk
    dA_acc = tl.zeros((BLOCK_C, ), tl.float32)
    dD_acc = tl.zeros((BLOCK_C, ), tl.float32)
    dbias_acc = tl.zeros((BLOCK_C, ), tl.float32)
    for jj in range(0, n_chunks):
        j = n_chunks - 1 - jj
        valid, s, m2, offs, u, pre, bv, cv, delta, decay = _chunk(
            x_base, pre_base, B_ptr + rows, C_ptr + rows, A, bias, j, K, c, cm, lt, CH, H, W, L,
            BLOCK_L)
        dy = tl.load(dy_base + offs, mask=m2, other=0.).to(tl.float32)
        # g_t = C_t dy_t + decay_{t+1} g_{t+1}, without shifting the decay (_combine_grad)
        one = tl.full((BLOCK_C, BLOCK_L), 1.0, tl.float32)
        g, gain, _ = tl.associative_scan((cv[None, :] * dy, one, decay), 1, _combine_grad,
                                         reverse=True)
        g = g + gain * carry[:, None]
        carry = tl.sum(tl.where(lt[None, :] == 0, decay * g, 0.), 1)
        h0 = tl.load(hs_base + j * CH, mask=cm, other=0.)
        du, dpre, dA_part, dbias_part, dD_part, dB_sum, dC_sum = _chunk_grads(
            g, decay, delta, u, bv, A, Dk, pre, dy, h0, m2, HAS_D, False)
        dA_acc += dA_part
        dbias_acc += dbias_part
        if HAS_D:
            dD_acc += dD_part
        tl.atomic_add(dB_ptr + rows + s, dB_sum, mask=valid, sem='relaxed')
        tl.atomic_add(dC_ptr + rows + s, dC_sum, mask=valid, sem='relaxed')
        _add_direction(du, acc_base, dx_base, offs, m2, K)
        tl.store(dpre_base + offs, dpre.to(dpre_ptr.dtype.element_ty), mask=m2)
    part = b * 4 * CH + kc
    tl.store(dA_ptr + part, dA_acc, mask=cm)
    tl.store(dbias_ptr + part, dbias_acc, mask=cm)
    if HAS_D:
        tl.store(dD_ptr + part, dD_acc, mask=cm)


@triton.jit(do_not_specialize=['CS'])
def _ss2d_bwd_cl_kernel(x_ptr, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_ptr,
                        acc_ptr, dx_ptr, dpre_ptr, dA_ptr, dbias_ptr, dD_ptr, dB_ptr, dC_ptr, CH,
                        H, W, L, CS, HAS_D: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_L: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = _channels(pid_c, CS, BLOCK_C)
    cm = c < CH
    lt = tl.arange(0, BLOCK_L)
    base = b * L * CH
    args = (x_ptr + base, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_ptr + base,
            acc_ptr + base, dx_ptr + base, dpre_ptr, dA_ptr, dbias_ptr, dD_ptr, dB_ptr, dC_ptr, b)
    _bwd_direction(*args, 0, c, cm, lt, CH, H, W, L, HAS_D, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _bwd_direction(*args, 1, c, cm, lt, CH, H, W, L, HAS_D, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _bwd_direction(*args, 2, c, cm, lt, CH, H, W, L, HAS_D, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _bwd_direction(*args, 3, c, cm, lt, CH, H, W, L, HAS_D, BLOCK_C, BLOCK_L)


def _sum_map(out, fp16_sums):
    """The map the directions add into: ``out`` (y or dx) where it is float32, or float16 with
    ``fp16_sums``; else a float32 map."""
    if out.dtype == torch.float32 or (fp16_sums and out.dtype == torch.float16):
        return out
    return torch.empty_like(out, dtype=torch.float32)


def _forward_outputs(x, pre, dt_bias, A, Bs, Cs, D, height, width, save, out_x_dtype, block_c,
                     block_l, num_warps, fp16_sums):
    """Empty y ((batch, L, C), float32 or x's dtype) and chunk start states (float32;
    a placeholder unless ``save``) of the forward launch (also its fake implementation)."""
    batch, length, channels = x.shape
    y = x.new_empty(x.shape, dtype=x.dtype if out_x_dtype else torch.float32)
    states = x.new_empty((batch, 4, triton.cdiv(length, block_l), channels) if save else (1, ),
                         dtype=torch.float32)
    return y, states


@opaque_under_compile('ss2d_n1_cl_fwd', _forward_outputs)
def _launch_forward(x: torch.Tensor, pre: torch.Tensor, dt_bias: torch.Tensor, A: torch.Tensor,
                    Bs: torch.Tensor, Cs: torch.Tensor, D: Optional[torch.Tensor], height: int,
                    width: int, save: bool, out_x_dtype: bool, block_c: int, block_l: int,
                    num_warps: int, fp16_sums: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward launch on x (batch, L, C) and pre (batch, 4, L, C): y (batch, L, C), the
    four directions summed in float32 (rounded once to x's dtype with ``out_x_dtype``; summed
    in y on a float16 map with ``fp16_sums``), and the chunk start states."""
    batch, length, channels = x.shape
    y, states = _forward_outputs(x, pre, dt_bias, A, Bs, Cs, D, height, width, save, out_x_dtype,
                                 block_c, block_l, num_warps, fp16_sums)
    acc = _sum_map(y, fp16_sums)
    _ss2d_fwd_cl_kernel[(triton.cdiv(channels, block_c), batch)](
        x, pre, dt_bias, A, Bs, Cs, D if D is not None else A, acc, y, states, channels, height,
        width, length, 1, HAS_D=D is not None, SAVE=save, BLOCK_C=block_c, BLOCK_L=block_l,
        num_warps=num_warps)
    return y, states


def _backward_outputs(x, pre, dt_bias, A, Bs, Cs, D, states, dy, height, width, block_c,
                      block_l, num_warps, fp16_sums):
    """Empty dx (x's dtype), dpre (pre's), dbias, dA, dD (per image, float32) and dB, dC
    ((batch, 4, 1, L) float32) of the backward launch (also its fake implementation)."""
    batch, length, channels = x.shape
    per_image = (batch, 4 * channels)
    f32 = dict(dtype=torch.float32)
    return (x.new_empty(x.shape), pre.new_empty(pre.shape), x.new_empty(per_image, **f32),
            x.new_empty(per_image, **f32), x.new_empty((batch, 4, 1, length), **f32),
            x.new_empty((batch, 4, 1, length), **f32), x.new_empty(per_image, **f32))


@opaque_under_compile('ss2d_n1_cl_bwd', _backward_outputs)
def _launch_backward(x: torch.Tensor, pre: torch.Tensor, dt_bias: torch.Tensor, A: torch.Tensor,
                     Bs: torch.Tensor, Cs: torch.Tensor, D: Optional[torch.Tensor],
                     states: torch.Tensor, dy: torch.Tensor, height: int, width: int,
                     block_c: int, block_l: int, num_warps: int, fp16_sums: bool
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward launch: dx (batch, L, C; the directions summed in float32, or in dx on a
    float16 map with ``fp16_sums``), d(delta pre-activation) (batch, 4, L, C), per-image
    d dt_bias, dA, dD and dB, dC."""
    batch, length, channels = x.shape
    dx, dpre, dbias, dA, dB, dC, dD = _backward_outputs(
        x, pre, dt_bias, A, Bs, Cs, D, states, dy, height, width, block_c, block_l, num_warps,
        fp16_sums)
    dB.zero_()
    dC.zero_()
    acc = _sum_map(dx, fp16_sums)
    _ss2d_bwd_cl_kernel[(triton.cdiv(channels, block_c), batch)](
        x, pre, dt_bias, A, Bs, Cs, D if D is not None else A, states, dy, acc, dx, dpre, dA,
        dbias, dD, dB, dC, channels, height, width, length, 1, HAS_D=D is not None,
        BLOCK_C=block_c, BLOCK_L=block_l, num_warps=num_warps)
    return dx, dpre, dbias, dA, dB, dC, dD


class SS2DScanN1ChannelsLast(torch.autograd.Function):
    """Forward and backward launches on x (batch, L, C); returns y (batch, L, C)."""

    @staticmethod
    def forward(ctx, x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width, cfg, bwd_cfg,
                out_x_dtype):
        from .ss2d_n1 import _projected_dt
        save = any(ctx.needs_input_grad)
        y, states = _launch_forward(x, _projected_dt(dt_weight, dt_low, channels_last=True),
                                    dt_bias, A, Bs, Cs, D, height, width, save, out_x_dtype,
                                    cfg['BLOCK_C'], cfg['BLOCK_L'], cfg['num_warps'],
                                    cfg['fp16_sums'])
        if save:
            ctx.save_for_backward(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states)
            ctx.meta = (height, width, bwd_cfg)
        return y

    @staticmethod
    def backward(ctx, dy):
        from .ss2d_n1 import _parameter_grads, _projected_dt, _projection_grads
        # the GEMMs in the projection's dtype, also when a compiled backward is traced under the
        # forward's autocast
        with torch.autocast(dy.device.type, enabled=False):
            saved = ctx.saved_tensors
            x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states = saved
            height, width, cfg = ctx.meta
            pre = _projected_dt(dt_weight, dt_low, channels_last=True)  # recomputed, not held
            dx, dpre, dbias, dA, dB, dC, dD = _launch_backward(
                x, pre, dt_bias, A, Bs, Cs, D, states, dy.contiguous(), height, width,
                cfg['BLOCK_C'], cfg['BLOCK_L'], cfg['num_warps'], cfg['fp16_sums'])
            del pre
            # the projection's gradients: the chunked kernels' two GEMMs on dpre read as
            # (batch, 4, C, L)
            ddtl, dw = _projection_grads(dt_weight, dt_low, dpre.transpose(2, 3))
        # the chunked Function's gradients after x's, less its extra inputs' Nones
        return (dx, ) + _parameter_grads(saved, ddtl, dw, dbias, dA, dB, dC, dD)[:7] + \
            (None, ) * 5


def ss2d_scan_n1_channels_last(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D=None, out_x=False,
                               inference=None, **tiles):
    """The d_state 1 scan on these kernels (inputs as :func:`vmamba_kernels.ss2d_scan`, already
    checked; ``tiles``: :func:`cl_launch_config`). x (batch, C, H, W) is read channels-last (a
    copy unless it is stored so); y is (batch, C, H, W) stored channels-last, float32 or, with
    ``out_x``, in x's dtype. ``inference``: whether no gradient is wanted (None: found from the
    inputs), which picks the forward's tile."""
    batch, channels, height, width = x.shape
    if inference is None:
        inference = not wants_grad(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    cfg, bwd_cfg = cl_launch_config(**tiles, inference=inference)
    # a view of a channels-last x; else a copy (a view could keep x's channel-first strides)
    x_cl = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels).contiguous()
    y = SS2DScanN1ChannelsLast.apply(x_cl, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height,
                                     width, cfg, bwd_cfg, out_x)
    return y.view(batch, height, width, channels).permute(0, 3, 1, 2)
