"""Fused SS2D core in Triton: cross-scan + dt projection + selective scan + cross-merge.

What one call does, for x of shape (batch, C, H, W), L = H * W, K = 4 directions:

    for each direction k and channel c, walking the map in direction k's order s_k(t):
        delta_t = softplus(sum_r dt_weight[k, c, r] * dt_low[b, k, r, s_k(t)] + dt_bias[k, c])
        h_t     = exp(delta_t * A[k*C + c]) * h_{t-1} + delta_t * Bs[b, k, :, s_k(t)] * x[b, c, s_k(t)]
        y[b, c, s_k(t)] += <Cs[b, k, :, s_k(t)], h_t> + D[k*C + c] * x[b, c, s_k(t)]

The split between this kernel and the model: the model computes ``x_proj`` as one GEMM on the
map in its spatial order (dt_low, Bs, Cs: (batch, K, R or N, L)); projecting the cross-scanned
sequences would give the same numbers permuted, so nothing is lost by never materializing them.
The kernel then reads x, dt_low, Bs and Cs in each direction's order by index arithmetic and does
the rank-R dt projection itself, so neither the (batch, 4, C, L) cross-scanned copy of x nor the
(batch, 4, C, L) delta exists in memory, and it writes only the merged (batch, C, H, W) output.
Bytes saved per call, with e = bytes per input element: the cross-scanned copy, written and read
(2 * 4 * B*C*L * e), delta written and read (2 * 4 * B*C*L * e), and the four per-direction
outputs written, read and summed (about 3 * 4 * B*C*L * 4 bytes of float32): for VMamba-T stage 1
at batch 128 with bf16 inputs, 1.23 GB + 1.23 GB + 1.85 GB, against 0.23 GB it does read and write.
One exception, d_state 1 with a dt rank R >= 16 (``ss2d_n1.PROJECT_FROM_RANK``: VMamba-T/S stages
3-4, VMamba-B stages 2-4): there the projection costs the kernel 2R loads and R multiply-adds
per element, most of its instructions, so it is one GEMM before the launch instead (float16
for float16 dt_low, as under fp16 autocast; else float32), and the kernel reads delta's
pre-activation (batch, 4, C, L) like x: 2 * 4 * B*C*L * e bytes more traffic (VMamba-B stage 3
at batch 128, float32: 0.82 GB, ~0.3 ms), and the forward and forward+backward there took 23%
less time on the H100 (docs/kernels.md).

One program owns (batch b, a block of channels) and runs the 4 directions one after the other,
adding into the output it owns: the merge is a fixed-order sum, no atomics, so the forward and the
backward are bitwise deterministic. Within a program the sequence is processed in chunks of
BLOCK_L steps with ``tl.associative_scan``; the state is carried between chunks in float32. The
forward saves the state at every chunk start (batch, 4, C, L / BLOCK_L, N floats) so the backward
can recompute each chunk's states without replaying the whole sequence.

The backward reduces over channels (dB, dC, d dt_low) and over the batch (dA, dD, d dt_bias,
d dt_weight) through per-program partial buffers summed afterwards in a fixed order, which again
keeps it deterministic.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .compile_ops import opaque_under_compile
from .triton_math import _combine, _softplus

__all__ = ['ss2d_scan_general', 'ss2d_scan_general_unfused']


@triton.jit
def _spatial_index(t, k: tl.constexpr, H, W, L, MERGED: tl.constexpr):
    """Row-major spatial index visited at scan step t of direction k (t itself when the inputs
    were already materialized in scan order, MERGED=False)."""
    if (k == 0) or (not MERGED):
        s = t
    elif k == 1:
        s = (t % H) * W + t // H
    elif k == 2:
        s = L - 1 - t
    else:
        r = L - 1 - t
        s = (r % H) * W + r // H
    return s


@triton.jit
def _chunk_inputs(x_base, dtl_base, bs_base, w_tile, bias, c, cm, n, nm, r, s, tm, L, R):
    """Load one chunk in scan order; delta's pre-activation as one (BLOCK_C, BLOCK_R) x
    (BLOCK_R, BLOCK_L) product in full float32 (the weight tile is loaded once per direction)."""
    m2 = cm[:, None] & tm[None, :]
    u = tl.load(x_base + c[:, None] * L + s[None, :], mask=m2, other=0.).to(tl.float32)
    dt = tl.load(dtl_base + r[:, None] * L + s[None, :], mask=(r < R)[:, None] & tm[None, :],
                 other=0.).to(tl.float32)
    pre = tl.dot(w_tile, dt, input_precision='ieee') + bias[:, None]
    bv = tl.load(bs_base + n[:, None] * L + s[None, :], mask=nm[:, None] & tm[None, :],
                 other=0.).to(tl.float32)
    return u, dt, pre, bv


@triton.jit
def _ss2d_fwd_kernel(x_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, hs_ptr,
                     CH, H, W, L, R, N, NCH,
                     HAS_D: tl.constexpr, SAVE_STATES: tl.constexpr, MERGED: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
                     BLOCK_R: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CH
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    lt = tl.arange(0, BLOCK_L)
    r = tl.arange(0, BLOCK_R)
    cr_mask = cm[:, None] & (r < R)[None, :]
    for k in tl.static_range(4):
        kc = k * CH + c
        w_tile = tl.load(w_ptr + kc[:, None] * R + r[None, :], mask=cr_mask, other=0.)
        # merged: one (B, C, L) map read in 4 orders; unmerged: (B, 4, C, L) already in scan order
        dir_offset = (b * CH * L) if MERGED else ((b * 4 + k) * CH * L)
        x_base = x_ptr + dir_offset
        y_base = y_ptr + dir_offset
        A = tl.load(A_ptr + kc[:, None] * N + n[None, :], mask=cm[:, None] & nm[None, :],
                    other=0.).to(tl.float32)
        bias = tl.load(bias_ptr + kc, mask=cm, other=0.).to(tl.float32)
        dtl_base = dtl_ptr + (b * 4 + k) * R * L
        bs_base = B_ptr + (b * 4 + k) * N * L
        cs_base = C_ptr + (b * 4 + k) * N * L
        hs_base = hs_ptr + ((b * 4 + k) * CH + c[:, None]) * NCH * N + n[None, :]
        h = tl.zeros((BLOCK_C, BLOCK_N), tl.float32)
        for ch in range(NCH):
            t = ch * BLOCK_L + lt
            tm = t < L
            s = _spatial_index(t, k, H, W, L, MERGED)
            u, dt, pre, bv = _chunk_inputs(x_base, dtl_base, bs_base, w_tile, bias, c, cm, n, nm,
                                           r, s, tm, L, R)
            cv = tl.load(cs_base + n[:, None] * L + s[None, :], mask=nm[:, None] & tm[None, :],
                         other=0.).to(tl.float32)
            delta = _softplus(pre)
            decay = tl.exp(delta[:, None, :] * A[:, :, None])
            decay = tl.where(tm[None, None, :], decay, 1.0)
            inp = (delta * u)[:, None, :] * bv[None, :, :]
            if SAVE_STATES:
                tl.store(hs_base + ch * N, h, mask=cm[:, None] & nm[None, :])
            prod, states = tl.associative_scan((decay, inp), 2, _combine)
            states = states + prod * h[:, :, None]
            y = tl.sum(states * cv[None, :, :], 1)
            if HAS_D:
                y += tl.load(D_ptr + kc, mask=cm, other=0.).to(tl.float32)[:, None] * u
            h = tl.sum(tl.where(lt[None, None, :] == BLOCK_L - 1, states, 0.), 2)
            m2 = cm[:, None] & tm[None, :]
            y_ptrs = y_base + c[:, None] * L + s[None, :]
            if MERGED and k > 0:
                y += tl.load(y_ptrs, mask=m2, other=0.)
            tl.store(y_ptrs, y, mask=m2)
        # the next direction reads back, in another order, what this one wrote
        tl.debug_barrier()


@triton.jit
def _ss2d_bwd_kernel(x_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_ptr,
                     dx_ptr, ddtl_ptr, dw_ptr, dbias_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr,
                     CH, H, W, L, R, N, NCH, NCB,
                     HAS_D: tl.constexpr, MERGED: tl.constexpr, BLOCK_C: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CH
    n = tl.arange(0, BLOCK_N)
    nm = n < N
    cn_mask = cm[:, None] & nm[None, :]
    lt = tl.arange(0, BLOCK_L)
    r = tl.arange(0, BLOCK_R)
    cr_mask = cm[:, None] & (r < R)[None, :]
    shift = tl.minimum(lt + 1, BLOCK_L - 1)[None, None, :] + tl.zeros((BLOCK_C, BLOCK_N, 1),
                                                                       tl.int32)
    for k in tl.static_range(4):
        kc = k * CH + c
        w_tile = tl.load(w_ptr + kc[:, None] * R + r[None, :], mask=cr_mask, other=0.)
        dir_offset = (b * CH * L) if MERGED else ((b * 4 + k) * CH * L)
        x_base = x_ptr + dir_offset
        dy_base = dy_ptr + dir_offset
        dx_base = dx_ptr + dir_offset
        A = tl.load(A_ptr + kc[:, None] * N + n[None, :], mask=cn_mask, other=0.).to(tl.float32)
        bias = tl.load(bias_ptr + kc, mask=cm, other=0.).to(tl.float32)
        if HAS_D:
            Dk = tl.load(D_ptr + kc, mask=cm, other=0.).to(tl.float32)
        dtl_base = dtl_ptr + (b * 4 + k) * R * L
        bs_base = B_ptr + (b * 4 + k) * N * L
        cs_base = C_ptr + (b * 4 + k) * N * L
        hs_base = hs_ptr + ((b * 4 + k) * CH + c[:, None]) * NCH * N + n[None, :]
        part_bc = (((b * 4 + k) * NCB + pid_c) * N + n[:, None]) * L  # dB / dC partial rows
        part_dtl = ddtl_ptr + ((b * 4 + k) * NCB + pid_c) * R * L
        dw_acc = tl.zeros((BLOCK_C, BLOCK_R), tl.float32)
        g_next = tl.zeros((BLOCK_C, BLOCK_N), tl.float32)  # dL/dh at the next chunk's first step
        a_next = tl.full((BLOCK_C, BLOCK_N), 1.0, tl.float32)  # its decay
        dA_acc = tl.zeros((BLOCK_C, BLOCK_N), tl.float32)
        dD_acc = tl.zeros((BLOCK_C, ), tl.float32)
        dbias_acc = tl.zeros((BLOCK_C, ), tl.float32)
        for i in range(NCH):
            ch = NCH - 1 - i
            t = ch * BLOCK_L + lt
            tm = t < L
            m2 = cm[:, None] & tm[None, :]
            s = _spatial_index(t, k, H, W, L, MERGED)
            u, dt, pre, bv = _chunk_inputs(x_base, dtl_base, bs_base, w_tile, bias, c, cm, n, nm,
                                           r, s, tm, L, R)
            cv = tl.load(cs_base + n[:, None] * L + s[None, :], mask=nm[:, None] & tm[None, :],
                         other=0.).to(tl.float32)
            dy = tl.load(dy_base + c[:, None] * L + s[None, :], mask=m2, other=0.).to(tl.float32)
            delta = _softplus(pre)
            decay = tl.exp(delta[:, None, :] * A[:, :, None])
            decay = tl.where(tm[None, None, :], decay, 1.0)
            du_in = delta * u
            inp = du_in[:, None, :] * bv[None, :, :]
            h0 = tl.load(hs_base + ch * N, mask=cn_mask, other=0.)
            prod, states = tl.associative_scan((decay, inp), 2, _combine)
            states = states + prod * h0[:, :, None]
            # g_t = C_t dy_t + decay_{t+1} g_{t+1}: a reverse scan with the decay shifted by one
            decay_next = tl.gather(decay, shift, 2)
            decay_next = tl.where(lt[None, None, :] == BLOCK_L - 1, a_next[:, :, None], decay_next)
            emit = cv[None, :, :] * dy[:, None, :]
            prod_r, g = tl.associative_scan((decay_next, emit), 2, _combine, reverse=True)
            g = g + prod_r * g_next[:, :, None]
            carried = states - inp  # decay_t * h_{t-1}
            du = tl.sum(g * bv[None, :, :], 1) * delta
            if HAS_D:
                du += Dk[:, None] * dy
                dD_acc += tl.sum(dy * u, 1)
            ddelta = tl.sum(g * (A[:, :, None] * carried + bv[None, :, :] * u[:, None, :]), 1)
            dpre = tl.where(m2, ddelta / (1.0 + tl.exp(-pre)), 0.)
            dA_acc += tl.sum(g * delta[:, None, :] * carried, 2)
            dbias_acc += tl.sum(dpre, 1)
            bn_mask = nm[:, None] & tm[None, :]
            tl.store(dB_ptr + part_bc + s[None, :], tl.sum(g * du_in[:, None, :], 0), mask=bn_mask)
            tl.store(dC_ptr + part_bc + s[None, :], tl.sum(states * dy[:, None, :], 0),
                     mask=bn_mask)
            dx_ptrs = dx_base + c[:, None] * L + s[None, :]
            if MERGED and k > 0:
                du += tl.load(dx_ptrs, mask=m2, other=0.)
            tl.store(dx_ptrs, du, mask=m2)
            ddt = tl.dot(tl.trans(w_tile), dpre, input_precision='ieee')
            tl.store(part_dtl + r[:, None] * L + s[None, :], ddt,
                     mask=(r < R)[:, None] & tm[None, :])
            dw_acc += tl.dot(dpre, tl.trans(dt), input_precision='ieee')
            g_next = tl.sum(tl.where(lt[None, None, :] == 0, g, 0.), 2)
            a_next = tl.sum(tl.where(lt[None, None, :] == 0, decay, 0.), 2)
        tl.store(dw_ptr + (b * 4 * CH + kc[:, None]) * R + r[None, :], dw_acc, mask=cr_mask)
        tl.store(dA_ptr + (b * 4 * CH + kc[:, None]) * N + n[None, :], dA_acc, mask=cn_mask)
        tl.store(dbias_ptr + b * 4 * CH + kc, dbias_acc, mask=cm)
        if HAS_D:
            tl.store(dD_ptr + b * 4 * CH + kc, dD_acc, mask=cm)
        tl.debug_barrier()


def launch_config(channels, length, d_state, rank, block_c=None, block_l=None, num_warps=None):
    """Tile sizes and warps. tl.dot needs every tile dimension >= 16 (masked where larger than
    the problem). Defaults from the H100 sweep (docs/kernels.md): long sequences 64 steps x 8
    warps, short ones 32 x 4."""
    long_seq = length >= 1024
    block_l = block_l or min(64 if long_seq else 32, max(16, triton.next_power_of_2(length)))
    block_c = block_c or 16
    num_warps = num_warps or (8 if long_seq else 4)
    if block_c < 16 or block_l < 16:
        raise ValueError(f'block_c and block_l must be >= 16, got {block_c} and {block_l}')
    return dict(BLOCK_C=block_c, BLOCK_N=triton.next_power_of_2(d_state), BLOCK_L=block_l,
                BLOCK_R=max(16, triton.next_power_of_2(rank)), num_warps=num_warps)


def _forward_outputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width, merged, save,
                     block_c, block_l, num_warps):
    """Empty float32 y and states of the forward launch (also its fake implementation)."""
    n_chunks = triton.cdiv(height * width, block_l)
    shapes = (x.shape, (x.shape[0], 4, dt_weight.shape[1], n_chunks, A.shape[1]) if save else (1, ))
    return tuple(x.new_empty(shape, dtype=torch.float32) for shape in shapes)


@opaque_under_compile('ss2d_fwd', _forward_outputs)
def _launch_forward(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                    dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                    D: Optional[torch.Tensor], height: int, width: int, merged: bool, save: bool,
                    block_c: int, block_l: int, num_warps: int
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward launch: returns y (float32) and the chunk start states (a placeholder unless
    ``save``)."""
    channels, rank = dt_weight.shape[1], dt_weight.shape[2]
    length, d_state = height * width, A.shape[1]
    cfg = launch_config(channels, length, d_state, rank, block_c, block_l, num_warps)
    y, states = _forward_outputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                                 merged, save, block_c, block_l, num_warps)
    _ss2d_fwd_kernel[(triton.cdiv(channels, block_c), x.shape[0])](
        x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D if D is not None else A, y, states,
        channels, height, width, length, rank, d_state, triton.cdiv(length, block_l),
        HAS_D=D is not None, SAVE_STATES=save, MERGED=merged, **cfg)
    return y, states


def _backward_outputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states, dy, height, width,
                      merged, block_c, block_l, num_warps):
    """Empty float32 dx, ddtl, dw, dbias, dA, dB, dC, dD of the backward launch (also its fake
    implementation)."""
    batch, channels, rank, d_state = x.shape[0], dt_weight.shape[1], dt_weight.shape[2], A.shape[1]
    length, n_cblocks = height * width, triton.cdiv(channels, block_c)
    shapes = (x.shape, (batch, 4, n_cblocks, rank, length), (batch, 4, channels, rank),
              (batch, 4 * channels), (batch, 4 * channels, d_state),
              (batch, 4, n_cblocks, d_state, length), (batch, 4, n_cblocks, d_state, length),
              (batch, 4 * channels))
    return tuple(x.new_empty(shape, dtype=torch.float32) for shape in shapes)


@opaque_under_compile('ss2d_bwd', _backward_outputs)
def _launch_backward(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                     dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                     D: Optional[torch.Tensor], states: torch.Tensor, dy: torch.Tensor,
                     height: int, width: int, merged: bool, block_c: int, block_l: int,
                     num_warps: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor]:
    """The backward launch: float32 dx and per-program partials of the other gradients
    (d dt_low and dB / dC per channel block, the rest per batch)."""
    channels, rank = dt_weight.shape[1], dt_weight.shape[2]
    length, d_state = height * width, A.shape[1]
    cfg = launch_config(channels, length, d_state, rank, block_c, block_l, num_warps)
    dx, ddtl, dw, dbias, dA, dB, dC, dD = _backward_outputs(
        x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states, dy, height, width, merged, block_c,
        block_l, num_warps)
    n_cblocks = ddtl.shape[2]
    _ss2d_bwd_kernel[(n_cblocks, x.shape[0])](
        x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D if D is not None else A, states, dy,
        dx, ddtl, dw, dbias, dA, dB, dC, dD,
        channels, height, width, length, rank, d_state, states.shape[3], n_cblocks,
        HAS_D=D is not None, MERGED=merged, **cfg)
    return dx, ddtl, dw, dbias, dA, dB, dC, dD


class SS2DScanFunction(torch.autograd.Function):
    """Autograd wrapper owning the forward and backward launches of the SS2D core.

    ``merged=True``: x is the (batch, C, H, W) map, read in the 4 orders, output merged.
    ``merged=False`` (benchmark baseline): x is the materialized (batch, 4, C, L) cross scan, all
    inputs in scan order, output per direction (batch, 4, C, L).
    """

    @staticmethod
    def forward(ctx, x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width, merged, config):
        cfg = launch_config(dt_weight.shape[1], height * width, A.shape[1], dt_weight.shape[2],
                            **(config or {}))
        tiles = (cfg['BLOCK_C'], cfg['BLOCK_L'], cfg['num_warps'])
        save = any(ctx.needs_input_grad)
        y, states = _launch_forward(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                                    merged, save, *tiles)
        if save:
            ctx.save_for_backward(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states)
            ctx.meta = (height, width, merged, tiles)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states = ctx.saved_tensors
        height, width, merged, tiles = ctx.meta
        channels = dt_weight.shape[1]
        dx, ddtl, dw, dbias, dA, dB, dC, dD = _launch_backward(
            x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states, dy.contiguous(), height, width,
            merged, *tiles)
        # (reductions and casts only: nothing here that autocast would run in half precision)
        return (dx.to(x.dtype), ddtl.sum(2).to(dt_low.dtype), dw.sum(0).to(dt_weight.dtype),
                dbias.sum(0).view(4, channels).to(dt_bias.dtype), dA.sum(0).to(A.dtype),
                dB.sum(2).to(Bs.dtype), dC.sum(2).to(Cs.dtype),
                dD.sum(0).to(D.dtype) if D is not None else None) + (None, ) * 4


def ss2d_scan_general(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D=None, block_c=None,
                      block_l=None, num_warps=None):
    """Fused SS2D core for any d_state (inputs as :func:`vmamba_kernels.ss2d_scan`, already
    checked); returns (batch, C, H, W) float32. The tile arguments override
    :func:`launch_config`'s defaults."""
    height, width = x.shape[2], x.shape[3]
    config = dict(block_c=block_c, block_l=block_l, num_warps=num_warps)
    return SS2DScanFunction.apply(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                                  True, config)


def ss2d_scan_general_unfused(xs, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                              config=None):
    """The general kernel over inputs already cross-scanned into (batch, 4, ., L) scan order
    (the benchmark's unfused baseline); returns per-direction (batch, 4, C, L)."""
    return SS2DScanFunction.apply(xs, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                                  False, config)

