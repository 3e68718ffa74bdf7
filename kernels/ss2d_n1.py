"""SS2D core kernels specialised for d_state N = 1 (the final VMamba archs).

Same computation and program layout as the general kernels in ``ss2d_triton.py`` (one program =
batch b x a block of channels, the 4 directions in sequence, fixed-order merge, chunk start states
saved by the forward), but every tile is 2-D (BLOCK_C, BLOCK_L): with one state
per channel there is no state axis, B and C are single rows, and the rank-R dt projection is a
loop of R rank-1 updates instead of a padded matrix product. The general kernels keep a
(BLOCK_C, BLOCK_N, BLOCK_L) layout and a (BLOCK_C, 16) x (16, BLOCK_L) product, which at N = 1
cost ~190 registers per thread (one 8-warp program per SM, too few warps in flight to hide the
latency of each chunk step).

What else differs, each measured on the H100 (docs/kernels.md):

* Directions 2 and 3 are walked as 0 and 1 backwards: chunks last to first, each scanned with
  ``reverse=True``, so their loads are contiguous like the forward directions'.
* On maps of >= 512 positions the column directions (1, 3) read a transposed copy of x and write
  a transposed output (the launch functions transpose, and sum y + yt^T); strided column walks
  cost more than half the time at 56 x 56. Their dt_low / Bs / Cs rows are passed column-major
  too (a small copy), so that no access walks a row-major array by column.
* The backward solves g_t = C_t dy_t + a_{t+1} g_{t+1} with a 3-tuple combine
  (:func:`_combine_grad`) instead of shifting the decay by one step, and writes d(delta
  pre-activation) so that the dt projection's two gradients are batched GEMMs in the caller
  rather than 2 R reductions per chunk.
* The backward adds its channel sums of dB and dC with float32 atomics into a few rows per
  image and direction (no partial row per channel block to write and read back; 16 rows on maps
  of 128 to 511 positions, one elsewhere: :func:`default_sum_rows`), so its dB / dC are not
  bitwise reproducible; under
  ``torch.use_deterministic_algorithms(True)`` it writes the per-block rows and sums them in a
  fixed order (:func:`default_atomic_sums`).
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .checks import env_choice, env_int, wants_grad
from .compile_ops import opaque_under_compile
from .map_transpose import add_transposed, transposed
from .ss2d_n1_cl import CL_TILES, channels_last_scan, ss2d_scan_n1_channels_last
from .ss2d_n1_map import launch_backward_map, launch_forward_map, map_fits, map_launch_config
from .triton_math import _channel_params, _chunk_grads, _combine, _combine_grad, _softplus

__all__ = ['ss2d_scan_n1', 'ss2d_scan_n1_unfused', 'SS2DScanN1Function', 'n1_launch_config']


@triton.jit
def _scan_index(t, K: tl.constexpr, H, W, STRIDED: tl.constexpr):
    """Offset in the map read by direction K at step t: t itself (row directions, and column
    directions reading the transposed map) or, with STRIDED column directions reading the
    row-major map, the column-major walk."""
    if STRIDED and (K % 2 == 1):
        s = (t % H) * W + t // H
    else:
        s = t
    return s


@triton.jit
def _chunk_n1(x_base, dtl_base, w_ptr, kc, bias, c, cm, s, sp, tm, L, R: tl.constexpr,
              PRE_GIVEN: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """u and delta's pre-activation for one chunk, in scan order (x at offsets s, the dt_low
    rows at sp), the projection as R rank-1 updates (R is a compile-time constant: unrolled,
    their loads issue together); PRE_GIVEN: dtl_base holds the projection w dt_low itself,
    (C, L) float16 or float32, in the walked map's order like x (read at s)."""
    m2 = cm[:, None] & tm[None, :]
    u = tl.load(x_base + c[:, None] * L + s[None, :], mask=m2, other=0.).to(tl.float32)
    if PRE_GIVEN:
        pre = tl.load(dtl_base + c[:, None] * L + s[None, :], mask=m2, other=0.).to(tl.float32)
        return u, pre + bias[:, None]
    pre = tl.zeros((BLOCK_C, BLOCK_L), tl.float32) + bias[:, None]
    for r in tl.static_range(R):
        w_r = tl.load(w_ptr + kc * R + r, mask=cm, other=0.).to(tl.float32)
        dt_r = tl.load(dtl_base + r * L + sp, mask=tm, other=0.).to(tl.float32)
        pre += w_r[:, None] * dt_r[None, :]
    return u, pre


@triton.jit
def _direction_inputs(dtl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, hs_ptr, b, c, cm, CH, L,
                      R: tl.constexpr, NCH, K: tl.constexpr, HAS_D: tl.constexpr,
                      PRE_GIVEN: tl.constexpr):
    """Direction K's per-channel parameters (A, dt bias, D: zeros without D) and the bases of
    its dt_low (or, PRE_GIVEN, projected dt) / Bs / Cs rows and saved chunk states."""
    kc = K * CH + c
    A, bias, Dk = _channel_params(A_ptr, bias_ptr, D_ptr, kc, cm, HAS_D)
    return (kc, A, bias, Dk, dtl_ptr + (b * 4 + K) * (CH if PRE_GIVEN else R) * L,
            B_ptr + (b * 4 + K) * L,
            C_ptr + (b * 4 + K) * L, hs_ptr + ((b * 4 + K) * CH + c) * NCH)


@triton.jit
def _chunk_step(x_base, dtl_base, w_ptr, bs_base, cs_base, kc, A, bias, c, cm, lt, ch,
                K: tl.constexpr, H, W, L, R: tl.constexpr, MERGED: tl.constexpr,
                COLS_T: tl.constexpr, PRE_GIVEN: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_L: tl.constexpr):
    """What the forward and the backward both compute for chunk ``ch`` of direction K: the step
    indices and masks, the offsets in the map walked (s) and in the dt_low / Bs / Cs rows (sp:
    row-major, or walk order when the column directions read the transposed map), u, delta's
    pre-activation, delta, the B and C rows and the decay (1 past L)."""
    t = ch * BLOCK_L + lt
    tm = t < L
    m2 = cm[:, None] & tm[None, :]
    s = _scan_index(t, K, H, W, MERGED and not COLS_T)  # in the map read / written
    # in dt_low, Bs, Cs: row-major, or in walk order like the map when COLS_T
    sp = s if COLS_T else _scan_index(t, K, H, W, MERGED)
    u, pre = _chunk_n1(x_base, dtl_base, w_ptr, kc, bias, c, cm, s, sp, tm, L, R, PRE_GIVEN,
                       BLOCK_C, BLOCK_L)
    bv = tl.load(bs_base + sp, mask=tm, other=0.).to(tl.float32)
    cv = tl.load(cs_base + sp, mask=tm, other=0.).to(tl.float32)
    delta = _softplus(pre)
    decay = tl.where(tm[None, :], tl.exp(delta * A[:, None]), 1.0)
    return tm, m2, s, u, pre, bv, cv, delta, decay


@triton.jit
def _segment_start(entry_ptr, b, seg, c, cm, CH, NSEG, K: tl.constexpr, SEGMENTED: tl.constexpr,
                   SUMMARY: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's row in the (batch, 4, C, segments) summaries and what enters its segment:
    the value the entry pass found (SEGMENTED main pass), else zero."""
    seg_row = ((b * 4 + K) * CH + c) * NSEG + seg
    if SEGMENTED and not SUMMARY:
        start = tl.load(entry_ptr + seg_row, mask=cm, other=0.)
    else:
        start = tl.zeros((BLOCK_C, ), tl.float32)
    return seg_row, start


@triton.jit
def _fwd_direction(x_ptr, xt_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr,
                   yt_ptr, yo_ptr, hs_ptr, hin_ptr, sum_ptr, b, seg, c, cm, lt, CH, H, W, L,
                   R: tl.constexpr, NCH, NSEG, SEG_CH, SUM_STRIDE, K: tl.constexpr,
                   REV: tl.constexpr, HAS_D: tl.constexpr, SAVE_STATES: tl.constexpr,
                   MERGED: tl.constexpr, COLS_T: tl.constexpr, PRE_GIVEN: tl.constexpr,
                   SEGMENTED: tl.constexpr, SUMMARY: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_L: tl.constexpr):
    """Direction K of the forward over segment ``seg`` (SEG_CH chunks; one segment of NCH
    chunks unless SEGMENTED); REV: walk it as direction K - 2 backwards (chunks last to first,
    each scanned in reverse). SEGMENTED: the segment starts from the state in ``hin_ptr``.
    SUMMARY (the pre-pass of a segmented forward): nothing is written but the segment's total
    decay and its end state from a zero start, the two halves of ``sum_ptr``. Each direction
    adds into the map of the earlier ones (float32, or float16 with the launch's fp16_sums: the
    stores round to the pointers' dtype); where the merged map has no transposed part the last
    one writes the sum into ``yo_ptr`` (y in the output's dtype)."""
    kc, A, bias, Dk, dtl_base, bs_base, cs_base, hs_base = _direction_inputs(
        dtl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, hs_ptr, b, c, cm, CH, L, R, NCH, K, HAS_D,
        PRE_GIVEN)
    dir_offset = (b * CH * L) if MERGED else ((b * 4 + K) * CH * L)
    # merged: the column directions (K odd) read / write the transposed maps
    x_base = (xt_ptr if MERGED and COLS_T and K % 2 == 1 else x_ptr) + dir_offset
    y_base = (yt_ptr if MERGED and COLS_T and K % 2 == 1 else y_ptr) + dir_offset
    seg_row, h = _segment_start(hin_ptr, b, seg, c, cm, CH, NSEG, K, SEGMENTED, SUMMARY,
                                BLOCK_C)
    log_decay = tl.zeros((BLOCK_C, ), tl.float32)
    for i in range(SEG_CH):
        ch = seg * SEG_CH + ((SEG_CH - 1 - i) if REV else i)  # past NCH: all steps masked
        tm, m2, s, u, pre, bv, cv, delta, decay = _chunk_step(
            x_base, dtl_base, w_ptr, bs_base, cs_base, kc, A, bias, c, cm, lt, ch, K, H, W, L, R,
            MERGED, COLS_T, PRE_GIVEN, BLOCK_C, BLOCK_L)
        inp = delta * u * bv[None, :]
        if SAVE_STATES and not SUMMARY:
            tl.store(hs_base + ch, h, mask=cm & (ch < NCH))
        prod, states = tl.associative_scan((decay, inp), 1, _combine, reverse=REV)
        states = states + prod * h[:, None]
        h = tl.sum(tl.where(lt[None, :] == (0 if REV else BLOCK_L - 1), states, 0.), 1)
        if SUMMARY:
            log_decay += tl.sum(tl.where(m2, delta * A[:, None], 0.), 1)
        else:
            y = states * cv[None, :]
            if HAS_D:
                y += Dk[:, None] * u
            y_ptrs = y_base + c[:, None] * L + s[None, :]
            # add to what the earlier directions wrote into the same map
            if MERGED and (K >= 2 or (K == 1 and not COLS_T)):
                y += tl.load(y_ptrs, mask=m2, other=0.)
            if MERGED and not COLS_T and K == 3:
                tl.store(yo_ptr + dir_offset + c[:, None] * L + s[None, :],
                         y.to(yo_ptr.dtype.element_ty), mask=m2)
            else:
                tl.store(y_ptrs, y, mask=m2)
    if SUMMARY:
        tl.store(sum_ptr + seg_row, tl.exp(log_decay), mask=cm)
        tl.store(sum_ptr + SUM_STRIDE + seg_row, h, mask=cm)


@triton.jit
def _ss2d_fwd_n1_kernel(x_ptr, xt_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr,
                        y_ptr, yt_ptr, yo_ptr, hs_ptr, hin_ptr, sum_ptr, CH, H, W, L,
                        R: tl.constexpr,
                        NCH, NSEG, SEG_CH, SUM_STRIDE, HAS_D: tl.constexpr,
                        SAVE_STATES: tl.constexpr, MERGED: tl.constexpr, COLS_T: tl.constexpr,
                        PRE_GIVEN: tl.constexpr, SEGMENTED: tl.constexpr, SUMMARY: tl.constexpr,
                        BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CH
    lt = tl.arange(0, BLOCK_L)
    # (compile-time constants are passed one by one: inside a tuple they would not stay so)
    args = (x_ptr, xt_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, yt_ptr,
            yo_ptr, hs_ptr, hin_ptr, sum_ptr, b, seg, c, cm, lt, CH, H, W, L)
    sizes = (NCH, NSEG, SEG_CH, SUM_STRIDE)
    # each direction may add into what the previous ones wrote, from other threads: barriers
    _fwd_direction(*args, R, *sizes, 0, False, HAS_D, SAVE_STATES, MERGED, COLS_T, PRE_GIVEN,
                   SEGMENTED, SUMMARY, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _fwd_direction(*args, R, *sizes, 1, False, HAS_D, SAVE_STATES, MERGED, COLS_T, PRE_GIVEN,
                   SEGMENTED, SUMMARY, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _fwd_direction(*args, R, *sizes, 2, MERGED, HAS_D, SAVE_STATES, MERGED, COLS_T, PRE_GIVEN,
                   SEGMENTED, SUMMARY, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _fwd_direction(*args, R, *sizes, 3, MERGED, HAS_D, SAVE_STATES, MERGED, COLS_T, PRE_GIVEN,
                   SEGMENTED, SUMMARY, BLOCK_C, BLOCK_L)


@triton.jit
def _bwd_direction(x_ptr, xt_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr,
                   dy_ptr, dyt_ptr, dx_ptr, dxt_ptr, dxo_ptr, dpre_ptr, dbias_ptr, dA_ptr,
                   dB_ptr, dC_ptr, dD_ptr, cin_ptr, sum_ptr, b, seg, pid_c, c, cm, lt, CH, H, W, L,
                   R: tl.constexpr, NCH, NSUM, NSEG, SEG_CH, SUM_STRIDE, K: tl.constexpr,
                   REV: tl.constexpr, HAS_D: tl.constexpr, MERGED: tl.constexpr,
                   COLS_T: tl.constexpr, PRE_GIVEN: tl.constexpr, SEGMENTED: tl.constexpr,
                   SUMMARY: tl.constexpr, ATOMIC_SUMS: tl.constexpr, BLOCK_C: tl.constexpr,
                   BLOCK_L: tl.constexpr):
    """Direction K of the backward over segment ``seg`` (REV, segments as in
    :func:`_fwd_direction`); chunks in the opposite order to the forward. SEGMENTED: the carry
    entering the segment comes from ``cin_ptr``; SUMMARY: only the segment's total decay and the
    carry it passes on from a zero carry are written (``sum_ptr``). dB and dC have NSUM rows per
    image and direction, channel block i writing row i % NSUM: one per block (stores), or, with
    ATOMIC_SUMS, fewer that several blocks add into (float32 atomics, in no fixed order).
    dx: each direction adds into the map of the earlier ones (float32, or float16 with the
    launch's fp16_sums); where the merged map has no transposed part, the last direction writes
    the sum into ``dxo_ptr`` instead (dx in the map's dtype: no float32 map written for a cast
    to read back)."""
    kc, A, bias, Dk, dtl_base, bs_base, cs_base, hs_base = _direction_inputs(
        dtl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, hs_ptr, b, c, cm, CH, L, R, NCH, K, HAS_D,
        PRE_GIVEN)
    dir_offset = (b * CH * L) if MERGED else ((b * 4 + K) * CH * L)
    # merged: the column directions (K odd) read / write the transposed maps
    x_base = (xt_ptr if MERGED and COLS_T and K % 2 == 1 else x_ptr) + dir_offset
    dy_base = (dyt_ptr if MERGED and COLS_T and K % 2 == 1 else dy_ptr) + dir_offset
    dx_base = (dxt_ptr if MERGED and COLS_T and K % 2 == 1 else dx_ptr) + dir_offset
    part = (b * 4 + K) * NSUM + pid_c % NSUM
    dpre_base = dpre_ptr + (b * 4 + K) * CH * L
    # carry: decay * dL/dh of the step after the chunk
    seg_row, carry = _segment_start(cin_ptr, b, seg, c, cm, CH, NSEG, K, SEGMENTED, SUMMARY,
                                    BLOCK_C)
    log_decay = tl.zeros((BLOCK_C, ), tl.float32)
    dA_acc = tl.zeros((BLOCK_C, ), tl.float32)
    dD_acc = tl.zeros((BLOCK_C, ), tl.float32)
    dbias_acc = tl.zeros((BLOCK_C, ), tl.float32)
    for i in range(SEG_CH):
        ch = seg * SEG_CH + (i if REV else SEG_CH - 1 - i)  # past NCH: all steps masked
        tm, m2, s, u, pre, bv, cv, delta, decay = _chunk_step(
            x_base, dtl_base, w_ptr, bs_base, cs_base, kc, A, bias, c, cm, lt, ch, K, H, W, L, R,
            MERGED, COLS_T, PRE_GIVEN, BLOCK_C, BLOCK_L)
        dy = tl.load(dy_base + c[:, None] * L + s[None, :], mask=m2, other=0.).to(tl.float32)
        # g_t = C_t dy_t + decay_{t+1} g_{t+1} (t+1: the next step in scan order), solved without
        # shifting the decay by one step (see _combine_grad); the carry is decay * g of the step
        # after the chunk
        one = tl.full((BLOCK_C, BLOCK_L), 1.0, tl.float32)
        g, gain, _ = tl.associative_scan((cv[None, :] * dy, one, decay), 1, _combine_grad,
                                         reverse=False if REV else True)
        g = g + gain * carry[:, None]
        # the entry end of this chunk (in scan order) is the next chunk's "step after"
        carry = tl.sum(tl.where(lt[None, :] == (BLOCK_L - 1 if REV else 0), decay * g, 0.), 1)
        if SUMMARY:
            log_decay += tl.sum(tl.where(m2, delta * A[:, None], 0.), 1)
        else:
            h0 = tl.load(hs_base + ch, mask=cm & (ch < NCH), other=0.)
            # dB / dC sums in the walked map's order, like dpre (the caller puts them back in
            # row-major order)
            du, dpre, dA_part, dbias_part, dD_part, dB_sum, dC_sum = _chunk_grads(
                g, decay, delta, u, bv, A, Dk, pre, dy, h0, m2, HAS_D, REV)
            dA_acc += dA_part
            dbias_acc += dbias_part
            if HAS_D:
                dD_acc += dD_part
            if ATOMIC_SUMS:
                tl.atomic_add(dB_ptr + part * L + s, dB_sum, mask=tm, sem='relaxed')
                tl.atomic_add(dC_ptr + part * L + s, dC_sum, mask=tm, sem='relaxed')
            else:
                tl.store(dB_ptr + part * L + s, dB_sum, mask=tm)
                tl.store(dC_ptr + part * L + s, dC_sum, mask=tm)
            dx_ptrs = dx_base + c[:, None] * L + s[None, :]
            if MERGED and (K >= 2 or (K == 1 and not COLS_T)):
                du += tl.load(dx_ptrs, mask=m2, other=0.)
            if MERGED and not COLS_T and K == 3:
                tl.store(dxo_ptr + dir_offset + c[:, None] * L + s[None, :],
                         du.to(dxo_ptr.dtype.element_ty), mask=m2)
            else:
                tl.store(dx_ptrs, du, mask=m2)
            # the dt projection's backward is two GEMMs on dpre, done by the caller; dpre is in
            # the order of the map this direction walks (column-major for transposed column
            # directions)
            tl.store(dpre_base + c[:, None] * L + s[None, :],
                     dpre.to(dpre_ptr.dtype.element_ty), mask=m2)
    if SUMMARY:
        tl.store(sum_ptr + seg_row, tl.exp(log_decay), mask=cm)
        tl.store(sum_ptr + SUM_STRIDE + seg_row, carry, mask=cm)
    else:
        # per (image, segment) partial sums, added up by the caller
        partial = (b * NSEG + seg) * 4 * CH + kc
        tl.store(dA_ptr + partial, dA_acc, mask=cm)
        tl.store(dbias_ptr + partial, dbias_acc, mask=cm)
        if HAS_D:
            tl.store(dD_ptr + partial, dD_acc, mask=cm)


@triton.jit
def _ss2d_bwd_n1_kernel(x_ptr, xt_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr,
                        hs_ptr, dy_ptr, dyt_ptr, dx_ptr, dxt_ptr, dxo_ptr, dpre_ptr, dbias_ptr,
                        dA_ptr, dB_ptr, dC_ptr, dD_ptr, cin_ptr, sum_ptr, CH, H, W, L,
                        R: tl.constexpr,
                        NCH, NSUM, NSEG, SEG_CH, SUM_STRIDE, HAS_D: tl.constexpr,
                        MERGED: tl.constexpr, COLS_T: tl.constexpr, PRE_GIVEN: tl.constexpr,
                        SEGMENTED: tl.constexpr, SUMMARY: tl.constexpr,
                        ATOMIC_SUMS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    seg = tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CH
    lt = tl.arange(0, BLOCK_L)
    # (compile-time constants are passed one by one: inside a tuple they would not stay so)
    args = (x_ptr, xt_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_ptr,
            dyt_ptr, dx_ptr, dxt_ptr, dxo_ptr, dpre_ptr, dbias_ptr, dA_ptr, dB_ptr, dC_ptr,
            dD_ptr, cin_ptr, sum_ptr, b, seg, pid_c, c, cm, lt, CH, H, W, L)
    sizes = (NCH, NSUM, NSEG, SEG_CH, SUM_STRIDE)
    # each direction may add into the dx that the previous ones wrote, from other threads
    _bwd_direction(*args, R, *sizes, 0, False, HAS_D, MERGED, COLS_T, PRE_GIVEN, SEGMENTED,
                   SUMMARY, ATOMIC_SUMS, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _bwd_direction(*args, R, *sizes, 1, False, HAS_D, MERGED, COLS_T, PRE_GIVEN, SEGMENTED,
                   SUMMARY, ATOMIC_SUMS, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _bwd_direction(*args, R, *sizes, 2, MERGED, HAS_D, MERGED, COLS_T, PRE_GIVEN, SEGMENTED,
                   SUMMARY, ATOMIC_SUMS, BLOCK_C, BLOCK_L)
    tl.debug_barrier()
    _bwd_direction(*args, R, *sizes, 3, MERGED, HAS_D, MERGED, COLS_T, PRE_GIVEN, SEGMENTED,
                   SUMMARY, ATOMIC_SUMS, BLOCK_C, BLOCK_L)


@triton.jit
def _segment_entries_kernel(sum_ptr, out_ptr, ROWS, CH, NSEG, SUM_STRIDE, MERGED: tl.constexpr,
                            BACKWARD: tl.constexpr, BLOCK: tl.constexpr):
    """What enters each segment of a segmented launch: for each (image, direction, channel) row
    of the summaries (total decay P, end value E from a zero start, per segment), walk the
    segments in the order the pass walks them (the forward: its scan order; the backward: the
    reverse) with v_next = P v + E from v = 0, writing the v that enters each."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rm = r < ROWS
    rev = ((r // CH) % 4 >= 2) if MERGED else (r < 0)  # directions 2, 3 walk 0, 1 backwards
    descending = (rev == 0) if BACKWARD else rev
    v = tl.zeros((BLOCK, ), tl.float32)
    for i in range(NSEG):
        off = r * NSEG + tl.where(descending, NSEG - 1 - i, i)
        tl.store(out_ptr + off, v, mask=rm)
        v = tl.load(sum_ptr + off, mask=rm, other=0.) * v + tl.load(
            sum_ptr + SUM_STRIDE + off, mask=rm, other=0.)


def n1_launch_config(length, block_c=None, block_l=None, num_warps=None, bwd_block_c=None,
                     bwd_num_warps=None, segments=None, bwd_segments=None, maxnreg=None,
                     bwd_maxnreg=None, bwd_atomic_sums=None, bwd_sum_rows=None,
                     fp16_sums=None):
    """(forward, backward) tiles: BLOCK_C channels x BLOCK_L steps (powers of two), warps, and
    the number of segments each direction's walk is split into (1: one program walks it all).
    ``maxnreg`` / ``bwd_maxnreg``: a cap on the registers per thread of the launch's kernel
    (Triton's launch option of that name; what does not fit spills to local memory), so that
    more programs fit on a multiprocessor; None: the compiler's choice, except the backward's
    default tile at >= 512 positions, capped at 80 (H100: stage 1 of VMamba-T 96 -> 80 registers,
    forward + backward 3.75 -> 3.40 ms with atomic sums; docs/kernels.md). ``bwd_atomic_sums``: the
    backward adds its channel sums of dB and dC into a few rows per image and direction with
    float32 atomics (in no fixed order, so not bitwise reproducible) instead of writing one row
    per channel block that a reduction then reads back; None: :func:`default_atomic_sums`
    (unless deterministic algorithms are asked for). ``bwd_sum_rows``: how many rows per image
    and direction the channel blocks add into with atomics (block i into row i % rows; the rows
    are summed after), fewer blocks adding into the same addresses; given, it asks for atomic
    sums (as ``bwd_atomic_sums=True``); None: :func:`default_sum_rows` where the sums are
    atomic. ``fp16_sums``: on a float16 map the running sums of the four directions (y in the
    forward, dx in the backward) are float16 maps, each direction adding its float32 part to the
    float16 sum of the earlier ones (as the authors' merge adds the directions' float16
    outputs), which halves the bytes of those read-modify-writes; else (and for other dtypes)
    float32, rounded once at the end. None: :func:`default_fp16_sums`.

    Defaults from the H100 sweep in docs/kernels.md, by sequence length. The backward shares
    BLOCK_L (it reads the chunk states the forward saved) and has its own channels and warps."""
    if length >= 512:
        # (forward 16 channels since fp16_sums: H100, VMamba-T fp16 forward at batch 128,
        # stage 1 0.977 -> 0.897 ms, stage 2 0.597 -> 0.538; compiled inference +1.2%)
        tiles, bwd_cap = (16, 64, 4, 2, 1), 80
    else:
        tiles, bwd_cap = (4, 32, 1, 2, 1), None
    if bwd_maxnreg is None and bwd_block_c is None and bwd_num_warps is None:
        bwd_maxnreg = bwd_cap  # (measured for the default backward tile only)
    given = (block_c, block_l, num_warps, bwd_block_c, bwd_num_warps)
    bc, bl, nw, bbc, bnw = (g if g is not None else d for g, d in zip(given, tiles))
    bl = min(bl, max(16, triton.next_power_of_2(length)))
    for name, value in (('block_c', bc), ('block_l', bl), ('bwd_block_c', bbc)):
        if value < 1 or value & (value - 1):
            raise ValueError(f'{name} must be a power of two, got {value}')
    for name, value in (('segments', segments), ('bwd_segments', bwd_segments),
                        ('bwd_sum_rows', bwd_sum_rows)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f'{name} must be a positive integer, got {value!r}')
    for name, value in (('maxnreg', maxnreg), ('bwd_maxnreg', bwd_maxnreg)):
        if value is not None and (not isinstance(value, int) or not 24 <= value <= 255):
            raise ValueError(f'{name} must be an integer from 24 to 255 (registers per thread) '
                             f'or None, got {value!r}')
    check_switch('bwd_atomic_sums', bwd_atomic_sums)
    fp16 = resolve_fp16_sums(fp16_sums)
    if bwd_sum_rows is not None:
        if bwd_atomic_sums is not None and not bwd_atomic_sums:
            raise ValueError(f'bwd_sum_rows ({bwd_sum_rows}) are rows that atomics add into: it '
                             'cannot go with bwd_atomic_sums=False')
        bwd_atomic_sums = True
    atomic = default_atomic_sums() if bwd_atomic_sums is None else bool(bwd_atomic_sums)
    return (dict(BLOCK_C=bc, BLOCK_L=bl, num_warps=nw, segments=segments or 1,
                 maxnreg=maxnreg, fp16_sums=fp16),
            dict(BLOCK_C=bbc, BLOCK_L=bl, num_warps=bnw, segments=bwd_segments or 1,
                 maxnreg=bwd_maxnreg, atomic_sums=atomic,
                 sum_rows=bwd_sum_rows or default_sum_rows(length), fp16_sums=fp16))


# whether float16 maps keep the directions' running sums in float16 by default (fp16_sums;
# H100, VMamba-T at batch 128 under fp16 autocast: compiled inference 7424 -> 7746 img/s,
# training 2553 -> 2603; docs/kernels.md)
FP16_SUMS = True
FP16_SUMS_ENV = 'VMAMBA_SCAN_FP16_SUMS'


def check_switch(name, value):
    """ValueError naming a launch switch that is not True, False (or 1, 0) or None."""
    if value not in (None, True, False, 0, 1):
        raise ValueError(f'{name} must be True, False or None, got {value!r}')


def resolve_fp16_sums(fp16_sums):
    """A launch's ``fp16_sums`` (checked; None: :func:`default_fp16_sums`) as a bool."""
    check_switch('fp16_sums', fp16_sums)
    return default_fp16_sums() if fp16_sums is None else bool(fp16_sums)


def default_fp16_sums():
    """Whether float16 maps sum the directions in float16 when no ``fp16_sums`` is given:
    ``$VMAMBA_SCAN_FP16_SUMS`` (0 or 1) where set, else :data:`FP16_SUMS`."""
    value = env_choice(FP16_SUMS_ENV, {'0': 'float32 sums', '1': 'float16 sums on float16 maps'},
                       None)
    return FP16_SUMS if value is None else value == '1'


# walks of SPREAD_SUM_ROWS_FROM_LENGTH steps up to (not including) SPREAD_SUM_ROWS_TO_LENGTH add
# their dB / dC channel sums into SPREAD_SUM_ROWS rows per image and direction by default, others
# into one (H100, VMamba-T under CUDA graphs, forward + backward: 14 x 14 1.30 ms per-block rows,
# 1.29 one row, 1.24 16 rows; 7 x 7 0.92, 0.88, 0.90; 56 x 56 and 28 x 28 fastest with one row;
# docs/kernels.md)
SPREAD_SUM_ROWS_FROM_LENGTH = 128
SPREAD_SUM_ROWS_TO_LENGTH = 512
SPREAD_SUM_ROWS = 16


def default_atomic_sums():
    """Whether the backward sums dB / dC over channel blocks by atomics by default: yes, except
    while ``torch.use_deterministic_algorithms(True)`` asks for bitwise reproducible results
    (then per-block rows, summed in a fixed order)."""
    return not torch.are_deterministic_algorithms_enabled()


def default_sum_rows(length):
    """Rows per image and direction that the channel blocks of a walk of ``length`` steps add
    into where the sums are atomic and no ``bwd_sum_rows`` is given: ``SPREAD_SUM_ROWS`` on
    maps of ``SPREAD_SUM_ROWS_FROM_LENGTH`` up to ``SPREAD_SUM_ROWS_TO_LENGTH`` positions
    (fewer blocks adding into the same addresses), else 1."""
    spread = SPREAD_SUM_ROWS_FROM_LENGTH <= length < SPREAD_SUM_ROWS_TO_LENGTH
    return SPREAD_SUM_ROWS if spread else 1


def _segment_layout(length, block_l, segments):
    """(chunks, chunks per segment, segments) of a walk of ``length`` steps split into at most
    ``segments`` runs of whole chunks (none empty)."""
    n_chunks = triton.cdiv(length, block_l)
    per_segment = triton.cdiv(n_chunks, min(segments, n_chunks))
    return n_chunks, per_segment, triton.cdiv(n_chunks, per_segment)


def _segment_entries(sums, merged, backward):
    """(batch, 4, C, segments) values entering each segment, from the pre-pass summaries."""
    entries = torch.empty(sums.shape[1:], device=sums.device, dtype=torch.float32)
    rows, block = entries[..., 0].numel(), 128
    _segment_entries_kernel[(triton.cdiv(rows, block), )](
        sums, entries, rows, entries.shape[2], entries.shape[3], entries.numel(), MERGED=merged,
        BACKWARD=backward, BLOCK=block)
    return entries


def _run_passes(launch, placeholder, summary_shape, merged, backward):
    """A launch's passes: ``launch(entries, sums, summary)`` once when its walks are not split
    (``summary_shape``, (batch, 4, C, segments), ends in 1; ``placeholder`` stands for the
    unused buffers), else the pre-pass writing the segment summaries, the entry kernel, and the
    main pass starting every segment from its entry."""
    if summary_shape[-1] == 1:
        launch(placeholder, placeholder, False)
        return
    sums = placeholder.new_empty((2, *summary_shape), dtype=torch.float32)
    launch(placeholder, sums, True)
    launch(_segment_entries(sums, merged, backward), sums, False)


def _forward_outputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width, merged,
                     cols_t, save, pre_given, block_c, block_l, num_warps, segments, maxnreg,
                     out_x_dtype=False, fp16_sums=False):
    """Empty y (float32, or x's dtype with ``out_x_dtype`` on a merged launch) and float32
    states of the forward launch (also its fake implementation, so both decide y's dtype)."""
    batch, channels, length = x.shape[0], dt_weight.shape[1], dt_low.shape[-1]
    states = x.new_empty((batch, 4, channels, triton.cdiv(length, block_l)) if save else (1, ),
                         dtype=torch.float32)
    y_dtype = x.dtype if out_x_dtype and merged else torch.float32
    return x.new_empty(x.shape, dtype=y_dtype), states


def _transposed(t):
    """``t`` (batch, C, H, W) as a contiguous (batch, C, W, H) map, copied by tiles
    (:func:`map_transpose.transposed`): what the column directions of a ``cols_t`` launch
    read."""
    return transposed(t.contiguous())


def _transposed_output(t, dtype):
    """An empty (batch, C, W, H) map of ``dtype`` for ``t`` (batch, C, H, W): what the column
    directions of a ``cols_t`` launch write, added back into the row-major output."""
    return t.new_empty((*t.shape[:2], t.shape[3], t.shape[2]), dtype=dtype)


def _sum_dtype(out, merged, fp16_sums):
    """The dtype of the running sum over the directions that a launch writing ``out`` keeps:
    float16 with ``fp16_sums`` where ``out`` (the merged y or dx) is float16, else float32."""
    return torch.float16 if fp16_sums and merged and out.dtype == torch.float16 else \
        torch.float32


@opaque_under_compile('ss2d_n1_fwd', _forward_outputs)
def _launch_forward(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                    dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                    D: Optional[torch.Tensor], height: int, width: int, merged: bool,
                    cols_t: bool, save: bool, pre_given: bool, block_c: int, block_l: int,
                    num_warps: int, segments: int, maxnreg: Optional[int],
                    out_x_dtype: bool = False, fp16_sums: bool = False
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The forward launch: returns y and the chunk start states (a placeholder unless
    ``save``), float32; with ``out_x_dtype`` (merged only) y in x's dtype, the directions summed
    in float32 and rounded once (in float16 on a float16 map with ``fp16_sums``). ``cols_t``:
    the column directions read a transposed copy of the map and write a transposed sum, added
    into y here, so y holds all four directions either way (one opaque operator: a compiled
    graph sees neither transpose nor the second sum map).
    ``pre_given``: ``dt_low`` is the projected dt (:func:`_projected_dt`) instead.
    ``segments`` > 1: each walk is split into that many runs of chunks, one program each, after
    a pre-pass that finds the state entering each. ``maxnreg``: the kernel's register cap (None:
    none). ``fp16_sums``: with a float16 y the directions add into float16 maps (see
    :func:`n1_launch_config`)."""
    channels, rank, length = dt_weight.shape[1], dt_weight.shape[2], dt_low.shape[-1]
    y, states = _forward_outputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                                 merged, cols_t, save, pre_given, block_c, block_l, num_warps,
                                 segments, maxnreg, out_x_dtype)
    # the map the directions add into (y itself where it has the sums' dtype)
    sum_dtype = _sum_dtype(y, merged, fp16_sums)
    acc = y if y.dtype == sum_dtype else torch.empty_like(y, dtype=sum_dtype)
    xt, yt = (_transposed(x), _transposed_output(x, sum_dtype)) if cols_t else (x, acc)
    n_chunks, per_segment, n_segments = _segment_layout(length, block_l, segments)
    grid = (triton.cdiv(channels, block_c), x.shape[0], n_segments)

    def launch(entries, sums, summary):
        _ss2d_fwd_n1_kernel[grid](
            x, xt, dt_low, dt_weight, dt_bias, A, Bs, Cs, D if D is not None else A, acc, yt,
            y, states, entries, sums, channels,
            height, width, length, rank, n_chunks, n_segments, per_segment,
            sums[0].numel() if n_segments > 1 else 0, HAS_D=D is not None, SAVE_STATES=save,
            MERGED=merged, COLS_T=cols_t, PRE_GIVEN=pre_given, SEGMENTED=n_segments > 1,
            SUMMARY=summary, BLOCK_C=block_c, BLOCK_L=block_l, num_warps=num_warps,
            maxnreg=maxnreg)

    _run_passes(launch, states, (x.shape[0], 4, channels, n_segments), merged, False)
    if cols_t:
        add_transposed(acc, yt, y)
    return y, states


def _sum_rows(channels, block_c, sum_rows):
    """Rows of dB / dC per image and direction: one per channel block (``sum_rows`` 0), else
    ``sum_rows`` (at most one per block) that the blocks add into."""
    blocks = triton.cdiv(channels, block_c)
    return min(sum_rows, blocks) if sum_rows > 0 else blocks


def _backward_outputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states, dy, height, width,
                      merged, cols_t, pre_given, block_c, block_l, num_warps, segments, maxnreg,
                      sum_rows, fp16_sums=False):
    """Empty dx, dpre, dbias, dA, dB, dC, dD of the backward launch (also its fake
    implementation): dx in x's dtype, dpre in the dt projection's (:func:`_projection_dtype`),
    the rest float32. dB, dC: :func:`_sum_rows` rows per image and direction."""
    batch, channels, length = x.shape[0], dt_weight.shape[1], dt_low.shape[-1]
    per_channel = (batch * _segment_layout(length, block_l, segments)[2], 4 * channels)
    partials = (batch, 4, _sum_rows(channels, block_c, sum_rows), length)
    shapes = (x.shape, (batch, 4, channels, length), per_channel, per_channel, partials,
              partials, per_channel)
    dtypes = (x.dtype, _projection_dtype(dt_low.dtype)) + (torch.float32, ) * 5
    return tuple(x.new_empty(shape, dtype=dtype) for shape, dtype in zip(shapes, dtypes))


@opaque_under_compile('ss2d_n1_bwd', _backward_outputs)
def _launch_backward(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                     dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                     D: Optional[torch.Tensor], states: torch.Tensor, dy: torch.Tensor,
                     height: int, width: int, merged: bool, cols_t: bool, pre_given: bool,
                     block_c: int, block_l: int, num_warps: int, segments: int,
                     maxnreg: Optional[int], sum_rows: int, fp16_sums: bool = False
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor, torch.Tensor, torch.Tensor]:
    """The backward launch: returns dx in x's dtype (the directions summed in float32, or in
    float16 on a float16 map with ``fp16_sums``),
    d(delta pre-activation) in walked order (in the projection's dtype), and float32 partials of
    d dt_bias, dA, dD (per image and segment) and dB, dC (rows as ``sum_rows`` says, walked
    order). ``cols_t`` as in the forward launch: the column directions read transposed copies of
    x and dy and write a transposed dx, added to the rows' here in the same pass as the cast.
    ``segments`` as in the forward launch (the carried gradient enters each segment);
    ``maxnreg`` likewise. ``sum_rows``: 0, dB and dC have a row per channel block;
    n > 0, n rows that the channel blocks add into (block i into row i % n). ``fp16_sums``:
    with a float16 dx the directions add into float16 maps (see :func:`n1_launch_config`)."""
    batch, channels, rank = x.shape[0], dt_weight.shape[1], dt_weight.shape[2]
    length = dt_low.shape[-1]
    dx, dpre, dbias, dA, dB, dC, dD = _backward_outputs(
        x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states, dy, height, width, merged, cols_t,
        pre_given, block_c, block_l, num_warps, segments, maxnreg, sum_rows, fp16_sums)
    atomic_sums = sum_rows > 0
    if atomic_sums:
        dB.zero_()
        dC.zero_()
    # the map the directions add into (dx itself where it has the sums' dtype or the directions
    # are not merged); the last one writes dx (merged, no transposed part) or add_transposed does
    sum_dtype = _sum_dtype(dx, merged, fp16_sums)
    acc = dx if dx.dtype == sum_dtype or not merged else torch.empty_like(dx, dtype=sum_dtype)
    if cols_t:
        xt, dyt, dxt = _transposed(x), _transposed(dy), _transposed_output(x, sum_dtype)
    else:
        xt, dyt, dxt = x, dy, acc
    n_cblocks = triton.cdiv(channels, block_c)
    n_chunks, per_segment, n_segments = _segment_layout(length, block_l, segments)

    def launch(entries, sums, summary):
        _ss2d_bwd_n1_kernel[(n_cblocks, batch, n_segments)](
            x, xt, dt_low, dt_weight, dt_bias, A, Bs, Cs, D if D is not None else A, states, dy,
            dyt, acc, dxt, dx, dpre, dbias, dA, dB, dC, dD, entries, sums, channels, height,
            width, length, rank, n_chunks, dB.shape[2], n_segments, per_segment,
            sums[0].numel() if n_segments > 1 else 0, HAS_D=D is not None, MERGED=merged,
            COLS_T=cols_t, PRE_GIVEN=pre_given, SEGMENTED=n_segments > 1, SUMMARY=summary,
            ATOMIC_SUMS=atomic_sums, BLOCK_C=block_c, BLOCK_L=block_l, num_warps=num_warps,
            maxnreg=maxnreg)

    _run_passes(launch, dA, (batch, 4, channels, n_segments), merged, True)
    if cols_t:
        add_transposed(acc, dxt, dx)
    return dx, dpre, dbias, dA, dB, dC, dD


class SS2DScanN1Function(torch.autograd.Function):
    """Forward and backward launches of the d_state = 1 kernels.

    merged=True: ``x`` is the (batch, C, H, W) map, dt_low, Bs, Cs (batch, 4, ., L) row-major;
    returns y (batch, C, H, W), the sum of the four directions, float32 (with ``out_x_dtype``:
    in x's dtype, rounded once from the float32 sum, or summed in float16 on a float16 map with
    the launch config's ``fp16_sums``). With ``cols_t`` the
    launches give the column directions a transposed copy of the map (and their dt_low / Bs / Cs
    rows copied column-major); without, those directions walk x with a stride.
    merged=False (the benchmark's unfused baseline): ``x`` is the (batch, 4, C, L) cross scan,
    every input in scan order; returns y per direction (batch, 4, C, L).
    """

    @staticmethod
    def forward(ctx, x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width, merged,
                cols_t, cfg, bwd_cfg, project_first=False, whole_map=None, out_x_dtype=False):
        whole_map = whole_map if merged else None
        cols_t = merged and cols_t and whole_map is None
        project_first = merged and project_first
        if whole_map is None and merged and not cols_t and max(cfg['segments'],
                                                              bwd_cfg['segments']) > 1:
            raise ValueError('segments > 1 needs the column directions on the transposed map '
                             '(transpose_columns=True): with strided column walks segments of '
                             f'different programs overlap; got segments {cfg["segments"]}, '
                             f'bwd_segments {bwd_cfg["segments"]}')
        save = any(ctx.needs_input_grad)
        _, dt_src, bs, cs = _kernel_rows(dt_low, dt_weight, Bs, Cs, height, width, cols_t,
                                         project_first)
        if whole_map is not None:
            y = launch_forward_map(x, dt_src, dt_weight, dt_bias, A, bs, cs, D, project_first,
                                   *whole_map)
            y = y.to(x.dtype) if out_x_dtype else y
            states = None
        else:
            y, states = _launch_forward(
                x, dt_src, dt_weight, dt_bias, A, bs, cs, D, height, width, merged, cols_t,
                save, project_first, cfg['BLOCK_C'], cfg['BLOCK_L'], cfg['num_warps'],
                cfg['segments'], cfg['maxnreg'], out_x_dtype, cfg['fp16_sums'])
        del dt_src, bs, cs
        if save:
            # the transposed map is not kept: the backward launch transposes x again (cheaper
            # than holding both)
            ctx.save_for_backward(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states)
            ctx.meta = (height, width, merged, cols_t, project_first, bwd_cfg, whole_map)
        return y

    @staticmethod
    def backward(ctx, dy):
        # the GEMMs below in the projection's dtype, as in eager, also when a compiled backward
        # is traced under the forward's autocast (torch._functorch.config.backward_pass_autocast)
        with torch.autocast(dy.device.type, enabled=False):
            return SS2DScanN1Function._backward(ctx, dy)

    @staticmethod
    def _backward(ctx, dy):
        saved = ctx.saved_tensors
        x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, states = saved
        height, width, merged, cols_t, project_first, cfg, whole_map = ctx.meta
        dy = dy.contiguous()
        if whole_map is not None:
            return SS2DScanN1Function._backward_map(ctx, saved, dy)
        # the forward's kernel inputs again (recomputed rather than held); dt_in_order is in the
        # order d(pre-activation) comes back in
        dt_in_order, dt_src, bs, cs = _kernel_rows(dt_low, dt_weight, Bs, Cs, height, width,
                                                   cols_t, project_first)
        dx, dpre, dbias, dA, dB, dC, dD = _launch_backward(
            x, dt_src, dt_weight, dt_bias, A, bs, cs, D, states, dy, height, width,
            merged, cols_t, project_first, cfg['BLOCK_C'], cfg['BLOCK_L'], cfg['num_warps'],
            cfg['segments'], cfg['maxnreg'], cfg['sum_rows'] if cfg['atomic_sums'] else 0,
            cfg['fp16_sums'])
        del dt_src, bs, cs
        ddtl, dw = _projection_grads(dt_weight, dt_in_order, dpre)
        if dB.shape[2] > 1:
            dB, dC = dB.sum(2, keepdim=True), dC.sum(2, keepdim=True)
        if cols_t:  # back to row-major
            ddtl, dB, dC = (_odd_directions_by_column(t, width, height) for t in (ddtl, dB, dC))
        return (dx, ) + _parameter_grads(saved, ddtl, dw, dbias, dA, dB, dC, dD)

    @staticmethod
    def _backward_map(ctx, saved, dy):
        x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, _ = saved
        height, width, _, _, project_first, _, whole_map = ctx.meta
        dt_in_order, dt_src, bs, cs = _kernel_rows(dt_low, dt_weight, Bs, Cs, height, width,
                                                   False, project_first)
        dx, dpre, dbias, dA, dB, dC, dD = launch_backward_map(
            x, dt_src, dt_weight, dt_bias, A, bs, cs, D, dy, project_first, *whole_map,
            _projection_dtype(dt_low.dtype))
        del dt_src, bs, cs
        ddtl, dw = _projection_grads(dt_weight, dt_in_order, dpre)
        return (dx.to(x.dtype), ) + _parameter_grads(
            saved, ddtl, dw, dbias, dA, dB.sum(2, keepdim=True), dC.sum(2, keepdim=True), dD)


def _projection_grads(dt_weight, dt_in_order, dpre):
    """The rank-R dt projection's gradients as two batched GEMMs on d(pre-activation), in the
    projection's dtype: d dt_low[b, k] = w[k]^T dpre[b, k]; d w[k] = sum_b dpre[b, k]
    dt_low[b, k]^T (the sum over the batch in float32)."""
    ddtl = torch.matmul(dt_weight.to(dpre.dtype).transpose(1, 2), dpre)
    dw = torch.matmul(dpre, dt_in_order.to(dpre.dtype).transpose(2, 3)).sum(0, dtype=torch.float32)
    return ddtl, dw


def _parameter_grads(saved, ddtl, dw, dbias, dA, dB, dC, dD):
    """The gradients after x's, in the dtypes of the ``saved`` inputs, the per-batch
    partials summed."""
    _, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, _ = saved
    return (ddtl.to(dt_low.dtype), dw.to(dt_weight.dtype),
            dbias.sum(0).view(4, dt_weight.shape[1]).to(dt_bias.dtype),
            dA.sum(0)[:, None].to(A.dtype), dB.to(Bs.dtype), dC.to(Cs.dtype),
            dD.sum(0).to(D.dtype) if D is not None else None) + (None, ) * 9


def _rows_in_walk_order(rows, height, width, cols_t):
    """(batch, 4, ., L) rows (dt_low, Bs, Cs) in the order of the map each direction reads:
    row-major, but the column directions' rows column-major when they read the transposed map
    (``cols_t``). A copy of a few rows: the kernels then read every row contiguously, where
    column walks of the row-major rows touched one 32-byte sector per element (at 56 x 56 the
    forward was bound by L1 traffic, ncu: 86% of L1 throughput)."""
    return _odd_directions_by_column(rows, height, width) if cols_t else rows


def _kernel_rows(dt_low, dt_weight, Bs, Cs, height, width, cols_t, project_first):
    """What the forward and the backward launch read besides the map: dt_low in walk order
    (:func:`_rows_in_walk_order`), the kernels' dt source (the projected pre-activation,
    :func:`_projected_dt`, when ``project_first``; else that same dt_low), Bs and Cs in walk
    order."""
    dt_in_order = _rows_in_walk_order(dt_low, height, width, cols_t)
    dt_src = _projected_dt(dt_weight, dt_in_order) if project_first else dt_in_order
    return (dt_in_order, dt_src, _rows_in_walk_order(Bs, height, width, cols_t),
            _rows_in_walk_order(Cs, height, width, cols_t))


def _projection_dtype(dt_low_dtype):
    """The dtype of the dt projection's GEMMs, of delta's pre-activation when projected first and
    of its gradient: float16 when dt_low is float16 (fp16 autocast, where the authors' model runs
    this projection as an fp16 einsum), else float32. float16 halves what the GEMMs write and the
    kernels read (VMamba-B stage 3: 411 -> 206 MB per tensor) and runs on the tensor cores
    (float32 GEMMs are FFMA without TF32); bf16's 8-bit mantissa in the pre-activation put the
    gradients of dt_low, Bs and Cs past the kernels' 1e-2 bound for bf16 inputs (up to 1.3e-2
    over 20 random CPU draws; float16: ~1e-3), so bf16 inputs keep float32."""
    return torch.float16 if dt_low_dtype == torch.float16 else torch.float32


def _projected_dt(dt_weight, dt_in_order, channels_last=False):
    """delta's pre-activation without its bias, w[k] dt_low[b, k]: (batch, 4, C, L) in the
    order of the map each direction reads (``dt_in_order`` from :func:`_rows_in_walk_order`, so
    the kernel loads it like x), or with ``channels_last`` (batch, 4, L, C) for the kernels of
    ``ss2d_n1_cl.py``. One batched GEMM in :func:`_projection_dtype` (float32 accumulation),
    outside autocast."""
    dtype = _projection_dtype(dt_in_order.dtype)
    weight, rows = dt_weight.to(dtype), dt_in_order.to(dtype)
    with torch.autocast(dt_in_order.device.type, enabled=False):
        if channels_last:
            return torch.matmul(rows.transpose(2, 3), weight.transpose(1, 2))
        return torch.matmul(weight, rows)


def _odd_directions_by_column(t, height, width):
    """(batch, 4, rows, H*W): directions 1 and 3 transposed from (H, W) row-major order to
    column-major order (with height and width swapped: back again)."""
    batch, _, rows, length = t.shape
    grid = t.view(batch, 4, rows, height, width)
    cols = grid[:, 1::2].transpose(3, 4).reshape(batch, 2, rows, length)
    return torch.stack((t[:, 0], cols[:, 0], t[:, 2], cols[:, 1]), 1)


# from this many positions on, the column directions read a transposed copy of the map
TRANSPOSE_FROM_LENGTH = 512

# programs a launch should have before its walks are split into segments (0: never split)
SEGMENT_PROGRAMS = 0
SEGMENT_PROGRAMS_ENV = 'VMAMBA_SCAN_SEGMENT_PROGRAMS'


def auto_segments(programs, n_chunks):
    """Segments per walk for a launch of ``programs`` programs (images x channel blocks) over
    ``n_chunks`` chunks: enough to reach ``$VMAMBA_SCAN_SEGMENT_PROGRAMS`` (else
    ``SEGMENT_PROGRAMS``) programs, at most one per chunk; 1 when the launch has that many.
    For large maps at small batches (detection, segmentation), where a few programs would each
    walk thousands of chunks one after another."""
    target = env_int(SEGMENT_PROGRAMS_ENV, SEGMENT_PROGRAMS, 'programs')
    if programs >= target:
        return 1
    return max(1, min(triton.cdiv(target, programs), n_chunks))


# from this dt rank on, the dt projection is a GEMM before the kernels instead of R rank-1
# updates per chunk inside them
PROJECT_FROM_RANK = 16


def ss2d_scan_n1(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D=None, transpose_columns=None,
                 project_first=None, whole_map=None, map_block_c=None, map_num_warps=None,
                 out_dtype=None, channels_last=None, **tiles):
    """Fused SS2D core for d_state = 1 (inputs as :func:`vmamba_kernels.ss2d_scan`, already
    checked; ``tiles`` as :func:`n1_launch_config`).

    On large maps (``transpose_columns`` None: H * W >= ``TRANSPOSE_FROM_LENGTH``) the column
    directions (1, 3) read a transposed copy of the map and write a transposed output, so every
    access to the map is contiguous (their few dt_low / Bs / Cs rows are copied column-major);
    the transposes (the map, the column sum; in the backward the map, dy and the column
    gradient) happen inside the launches, so a compiled graph holds one float32 output per scan.
    On the H100 at 56 x 56 this halves the forward (docs/kernels.md); on small maps the strided
    walk stays in cache and the copies would cost more than they save.

    ``out_dtype``: y's dtype, float32 (None) or x's (checked by the caller): the directions are
    summed in float32 (on a float16 map in float16 unless ``fp16_sums`` is off: see
    :func:`n1_launch_config`) and the last of them (with transposed columns: the pass adding
    the column part) writes the sum in x's dtype, so no float32 map is left for a cast to
    read.

    With a large dt rank (``project_first`` None: rank >= ``PROJECT_FROM_RANK``) delta's
    pre-activation w dt_low is one GEMM before each launch, (batch, 4, C, L), which the kernels
    read like x; with a small rank they compute it from dt_low in registers, which costs them
    2 R loads and R multiply-adds per element (at rank 32: most of their instructions) but saves
    writing and reading 4 copies of the map. Either way the backward writes d(pre-activation)
    and the projection's gradients are GEMMs on it, all in float16 for float16 dt_low and in
    float32 otherwise (:func:`_projection_dtype`).

    ``whole_map`` True runs the kernels of ``ss2d_n1_map.py`` instead, which hold whole (small)
    maps per program (``map_block_c`` channels, ``map_num_warps`` warps; ``transpose_columns``
    does not apply); None: when the padded map has at most ``$VMAMBA_WHOLE_MAP_POSITIONS``
    positions (default: 64 when no gradient is wanted, else 0, never; see
    ``ss2d_n1_map.map_fits``) and no tile of the chunked kernels nor ``transpose_columns`` is
    given.

    ``segments`` / ``bwd_segments`` (in ``tiles``; transposed column walks only) split each
    direction's walk into that many runs of chunks, walked by different programs from the state
    (forward) or carried gradient (backward) a pre-pass finds entering each: for launches with
    too few programs to fill the GPU (large maps, small batches). None: :func:`auto_segments`
    (off unless ``$VMAMBA_SCAN_SEGMENT_PROGRAMS`` is set).

    ``channels_last`` True runs the kernels of ``ss2d_n1_cl.py`` on the map stored
    channels-last (``tiles``: theirs, :func:`ss2d_n1_cl.cl_launch_config`) and returns y stored
    channels-last; None: as ``$VMAMBA_SCAN_CHANNELS_LAST`` says for this map and whether a
    gradient is wanted (:func:`ss2d_n1_cl.channels_last_scan`: by default maps below 512
    positions when none is) when no option of the other kernels is given (the tiles both
    families take, ``ss2d_n1_cl.CL_TILES``, go to the kernels chosen; any other keeps the
    chunked kernels). The other kernels read x channel-first (a channels-last x is copied).
    """
    height, width = x.shape[2], x.shape[3]
    length = height * width
    out_x = out_dtype is not None and out_dtype != torch.float32  # (checked: x's dtype)
    inference = not wants_grad(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    if channels_last is None:
        others = (transpose_columns, project_first, whole_map, map_block_c, map_num_warps,
                  *(v for k, v in tiles.items() if k not in CL_TILES))
        channels_last = all(v is None for v in others) and channels_last_scan(height, width,
                                                                              inference)
    if channels_last:
        return ss2d_scan_n1_channels_last(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, out_x,
                                          inference, **tiles)
    x = x.contiguous()
    cfg, bwd_cfg = n1_launch_config(length, **tiles)
    if project_first is None:
        project_first = dt_weight.shape[2] >= PROJECT_FROM_RANK
    if whole_map is None:
        # tiles or a column layout asked for are the chunked kernels'
        chunked = transpose_columns is not None or any(v is not None for v in tiles.values())
        whole_map = not chunked and map_fits(height, width, inference)
    if whole_map:
        map_cfg = map_launch_config(height, width, map_block_c, map_num_warps,
                                    forward_only=inference)
        return SS2DScanN1Function.apply(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height,
                                        width, True, False, cfg, bwd_cfg, project_first,
                                        map_cfg, out_x)
    if transpose_columns is None:
        transpose_columns = length >= TRANSPOSE_FROM_LENGTH
    if not transpose_columns:
        return SS2DScanN1Function.apply(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height,
                                        width, True, False, cfg, bwd_cfg, project_first, None,
                                        out_x)
    for name, launch in (('segments', cfg), ('bwd_segments', bwd_cfg)):
        if tiles.get(name) is None:  # split long walks only where asked to (auto_segments)
            launch['segments'] = auto_segments(
                x.shape[0] * triton.cdiv(x.shape[1], launch['BLOCK_C']),
                triton.cdiv(length, launch['BLOCK_L']))
    return SS2DScanN1Function.apply(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                                    True, True, cfg, bwd_cfg, project_first, None, out_x)


def ss2d_scan_n1_unfused(xs, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                         config=None):
    """The d_state 1 kernel over inputs already cross-scanned into (batch, 4, ., L) scan order
    (the benchmark's unfused baseline); returns per-direction (batch, 4, C, L)."""
    cfg, bwd_cfg = n1_launch_config(height * width, **(config or {}))
    return SS2DScanN1Function.apply(xs, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height,
                                    width, False, False, cfg, bwd_cfg)
