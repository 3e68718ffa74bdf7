"""d_state 1 SS2D kernels for small maps: each program holds whole maps.

The chunked kernels of ``ss2d_n1.py`` walk each direction in chunks of BLOCK_L steps, carry the
state from chunk to chunk, and merge the four directions through the output in global memory
(three read-add-writes of the float32 map, with a barrier between directions). On the small maps
of VMamba's stages 3-4 (14 x 14 and 7 x 7) a block of channels of the whole map fits in
registers, so here one program (batch b, block of channels):

* loads the map once in row order and once in column order (the second load comes from L1),
  each padded to (HP, WP) = powers of two, padding masked out: a padded step has decay 1 and
  input 0, the identity of the recurrence, so scans run straight through it;
* solves each direction with a single ``tl.associative_scan`` over the whole padded walk, no
  chunk carries and no saved chunk states (the backward recomputes the states the same way);
* sums the four directions in registers, the column walks brought to row order by a
  reshape-permute, and writes the output (forward: y; backward: dx) once.

The interface is that of the chunked kernels with the column directions walking the row-major
map (``cols_t`` False): the same inputs, the same outputs (d(pre-activation), dB and dC in
row-major order), so ``SS2DScanN1Function`` picks either launch.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .checks import env_int
from .compile_ops import opaque_under_compile
from .triton_math import _channel_params, _combine, _combine_grad, _softplus

__all__ = ['map_fits', 'map_launch_config', 'padded_map', 'launch_forward_map',
           'launch_backward_map']


@triton.jit
def _walk(H, W, COLS: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
    """Offsets in the row-major map of the padded walk (row order, or column order: t = j HP + i)
    and the mask of real positions."""
    t = tl.arange(0, HP * WP)
    if COLS:
        i = t % HP
        j = t // HP
    else:
        i = t // WP
        j = t % WP
    return i * W + j, (i < H) & (j < W)


@triton.jit
def _to_row_order(v, BLOCK_C: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
    """A (BLOCK_C, HP * WP) tile in column walk order, put in row walk order."""
    return tl.reshape(tl.permute(tl.reshape(v, (BLOCK_C, WP, HP)), (0, 2, 1)),
                      (BLOCK_C, HP * WP))


@triton.jit
def _direction(dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, b, c, cm, s, valid, CH, L,
               K: tl.constexpr, R: tl.constexpr, PRE_GIVEN: tl.constexpr,
               HAS_D: tl.constexpr, BLOCK_C: tl.constexpr, LP: tl.constexpr):
    """Direction K's inputs on the walk (offsets s): per-channel A and D, delta's pre-activation
    (projected in registers from dt_low, or PRE_GIVEN: read), delta, decay and the B, C rows."""
    kc = K * CH + c
    A, bias, Dk = _channel_params(A_ptr, bias_ptr, D_ptr, kc, cm, HAS_D)
    m2 = cm[:, None] & valid[None, :]
    if PRE_GIVEN:
        pre = tl.load(dtl_ptr + ((b * 4 + K) * CH + c[:, None]) * L + s[None, :], mask=m2,
                      other=0.).to(tl.float32) + bias[:, None]
    else:
        pre = tl.zeros((BLOCK_C, LP), tl.float32) + bias[:, None]
        for r in tl.static_range(R):
            w_r = tl.load(w_ptr + kc * R + r, mask=cm, other=0.).to(tl.float32)
            dt_r = tl.load(dtl_ptr + ((b * 4 + K) * R + r) * L + s, mask=valid,
                           other=0.).to(tl.float32)
            pre += w_r[:, None] * dt_r[None, :]
    bv = tl.load(B_ptr + (b * 4 + K) * L + s, mask=valid, other=0.).to(tl.float32)
    cv = tl.load(C_ptr + (b * 4 + K) * L + s, mask=valid, other=0.).to(tl.float32)
    delta = _softplus(pre)
    decay = tl.where(valid[None, :], tl.exp(delta * A[:, None]), 1.0)
    return kc, A, Dk, pre, delta, decay, bv, cv


@triton.jit
def _fwd_direction(dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, b, c, cm, u, s, valid,
                   CH, L, K: tl.constexpr, R: tl.constexpr, PRE_GIVEN: tl.constexpr,
                   HAS_D: tl.constexpr, BLOCK_C: tl.constexpr, LP: tl.constexpr):
    """Direction K's output on its walk (directions 2, 3: the walks of 0, 1 scanned in reverse)."""
    _, _, Dk, _, delta, decay, bv, cv = _direction(
        dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, b, c, cm, s, valid, CH, L, K, R,
        PRE_GIVEN, HAS_D, BLOCK_C, LP)
    _, states = tl.associative_scan((decay, delta * u * bv[None, :]), 1, _combine,
                                    reverse=K >= 2)
    return states * cv[None, :] + Dk[:, None] * u


@triton.jit
def _fwd_walk(args, x_base, cm, H, W, CH, L, COLS: tl.constexpr, R: tl.constexpr,
              PRE_GIVEN: tl.constexpr, HAS_D: tl.constexpr, BLOCK_C: tl.constexpr,
              HP: tl.constexpr, WP: tl.constexpr):
    """The two directions of one walk (rows: 0 and 2; columns: 1 and 3), summed on the walk."""
    s, valid = _walk(H, W, COLS, HP, WP)
    u = tl.load(x_base + s[None, :], mask=cm[:, None] & valid[None, :], other=0.).to(tl.float32)
    y = _fwd_direction(*args, u, s, valid, CH, L, COLS, R, PRE_GIVEN, HAS_D, BLOCK_C, HP * WP)
    y += _fwd_direction(*args, u, s, valid, CH, L, 2 + COLS, R, PRE_GIVEN, HAS_D, BLOCK_C,
                        HP * WP)
    return y


@triton.jit
def _ss2d_fwd_map_kernel(x_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, CH,
                         H, W, L, R: tl.constexpr, HAS_D: tl.constexpr, PRE_GIVEN: tl.constexpr,
                         BLOCK_C: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CH
    x_base = x_ptr + (b * CH + c[:, None]) * L
    walk = ((dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, b, c, cm), x_base, cm, H, W,
            CH, L)
    y = _fwd_walk(*walk, 0, R, PRE_GIVEN, HAS_D, BLOCK_C, HP, WP)
    y += _to_row_order(_fwd_walk(*walk, 1, R, PRE_GIVEN, HAS_D, BLOCK_C, HP, WP), BLOCK_C, HP,
                       WP)
    s_row, v_row = _walk(H, W, False, HP, WP)
    tl.store(y_ptr + (b * CH + c[:, None]) * L + s_row[None, :], y,
             mask=cm[:, None] & v_row[None, :])


@triton.jit
def _bwd_direction(dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dpre_ptr, dB_ptr, dC_ptr,
                   b, c, cm, u, dy, s, valid, part, CH, L, K: tl.constexpr, R: tl.constexpr,
                   PRE_GIVEN: tl.constexpr, HAS_D: tl.constexpr, BLOCK_C: tl.constexpr,
                   LP: tl.constexpr):
    """Direction K's backward on its walk: stores d(pre-activation) and this channel block's
    partial dB, dC (row-major positions); returns du on the walk and the per-channel sums of
    dA, d bias, dD."""
    kc, A, Dk, pre, delta, decay, bv, cv = _direction(
        dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, b, c, cm, s, valid, CH, L, K, R,
        PRE_GIVEN, HAS_D, BLOCK_C, LP)
    du_in = delta * u
    inp = du_in * bv[None, :]
    _, states = tl.associative_scan((decay, inp), 1, _combine, reverse=K >= 2)
    # g_t = C_t dy_t + decay_{t+1} g_{t+1}, t+1 the next step of the walk (_combine_grad)
    one = tl.full((BLOCK_C, LP), 1.0, tl.float32)
    g, _, _ = tl.associative_scan((cv[None, :] * dy, one, decay), 1, _combine_grad,
                                  reverse=K < 2)
    carried = states - inp  # decay_t * h_{t-1}
    gb = g * bv[None, :]
    du = gb * delta + Dk[:, None] * dy
    m2 = cm[:, None] & valid[None, :]
    dpre = tl.where(m2, (g * A[:, None] * carried + gb * u) / (1.0 + tl.exp(-pre)), 0.)
    tl.store(dpre_ptr + ((b * 4 + K) * CH + c[:, None]) * L + s[None, :],
             dpre.to(dpre_ptr.dtype.element_ty), mask=m2)
    tl.store(dB_ptr + part * L + s, tl.sum(g * du_in, 0), mask=valid)
    tl.store(dC_ptr + part * L + s, tl.sum(states * dy, 0), mask=valid)
    # (a padded step passes the state and g through: its terms are masked out)
    dA = tl.sum(tl.where(m2, g * delta * carried, 0.), 1)
    return du, kc, dA, tl.sum(dpre, 1), tl.sum(dy * u, 1)


@triton.jit
def _bwd_walk(args, x_base, dy_base, dA_ptr, dbias_ptr, dD_ptr, b, pid_c, c, cm, H, W, CH, L, NCB,
              COLS: tl.constexpr, R: tl.constexpr, PRE_GIVEN: tl.constexpr, HAS_D: tl.constexpr,
              BLOCK_C: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
    """The two directions of one walk (rows: 0 and 2; columns: 1 and 3): their per-channel
    sums stored, their du summed on the walk."""
    s, valid = _walk(H, W, COLS, HP, WP)
    m2 = cm[:, None] & valid[None, :]
    u = tl.load(x_base + s[None, :], mask=m2, other=0.).to(tl.float32)
    dy = tl.load(dy_base + s[None, :], mask=m2, other=0.).to(tl.float32)
    du = tl.zeros((BLOCK_C, HP * WP), tl.float32)
    for K in tl.static_range(COLS, 4, 2):
        du_k, kc, dA, dbias, dD = _bwd_direction(*args, u, dy, s, valid,
                                                 (b * 4 + K) * NCB + pid_c, CH, L, K, R,
                                                 PRE_GIVEN, HAS_D, BLOCK_C, HP * WP)
        du += du_k
        tl.store(dA_ptr + b * 4 * CH + kc, dA, mask=cm)
        tl.store(dbias_ptr + b * 4 * CH + kc, dbias, mask=cm)
        if HAS_D:
            tl.store(dD_ptr + b * 4 * CH + kc, dD, mask=cm)
    return du


@triton.jit
def _ss2d_bwd_map_kernel(x_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dy_ptr,
                         dx_ptr, dpre_ptr, dbias_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, CH, H, W, L,
                         NCB, R: tl.constexpr, HAS_D: tl.constexpr, PRE_GIVEN: tl.constexpr,
                         BLOCK_C: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CH
    x_base = x_ptr + (b * CH + c[:, None]) * L
    dy_base = dy_ptr + (b * CH + c[:, None]) * L
    args = (dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dpre_ptr, dB_ptr, dC_ptr, b, c,
            cm)
    walk = (args, x_base, dy_base, dA_ptr, dbias_ptr, dD_ptr, b, pid_c, c, cm, H, W, CH, L, NCB)
    dx = _bwd_walk(*walk, 0, R, PRE_GIVEN, HAS_D, BLOCK_C, HP, WP)
    dx += _to_row_order(_bwd_walk(*walk, 1, R, PRE_GIVEN, HAS_D, BLOCK_C, HP, WP), BLOCK_C,
                        HP, WP)
    s_row, v_row = _walk(H, W, False, HP, WP)
    tl.store(dx_ptr + (b * CH + c[:, None]) * L + s_row[None, :], dx,
             mask=cm[:, None] & v_row[None, :])


# Maps padded to at most this many positions run the whole-map kernels when ``ss2d_scan_n1`` is
# left to choose (``whole_map`` None) and a gradient is wanted: 0, never (their backward is no
# faster than the chunked one anywhere: docs/kernels.md). Without gradients (inference), the
# forward alone runs: maps padded to at most INFERENCE_MAP_POSITIONS positions take it (7 x 7,
# stage 4 at 224 x 224: 0.23 against 0.38 ms per call on the H200). The environment variable
# overrides both for a whole run. The channels-last kernels come first where they are switched
# on: by default (``ss2d_n1_cl.DEFAULT_CHANNELS_LAST``) every map below 512 positions without
# gradients, so this limit applies with ``$VMAMBA_SCAN_CHANNELS_LAST=0``.
MAX_MAP_POSITIONS = 0
INFERENCE_MAP_POSITIONS = 64
MAX_MAP_POSITIONS_ENV = 'VMAMBA_WHOLE_MAP_POSITIONS'
# a program holds at most this many elements per tensor
MAX_TILE = 4096


def padded_map(height, width):
    """(HP, WP): the map's sides padded to powers of two."""
    return triton.next_power_of_2(height), triton.next_power_of_2(width)


def map_fits(height, width, inference=False):
    """Whether a (height, width) map runs the whole-map kernels by default: padded, at most
    ``$VMAMBA_WHOLE_MAP_POSITIONS`` positions (else ``INFERENCE_MAP_POSITIONS`` when no
    gradient is wanted, ``MAX_MAP_POSITIONS`` otherwise), and never more than one tile holds
    (``MAX_TILE``)."""
    default = INFERENCE_MAP_POSITIONS if inference else MAX_MAP_POSITIONS
    limit = env_int(MAX_MAP_POSITIONS_ENV, default, 'positions')
    hp, wp = padded_map(height, width)
    return hp * wp <= min(limit, MAX_TILE)


def map_launch_config(height, width, block_c=None, num_warps=None, forward_only=False):
    """(BLOCK_C, num_warps) of the whole-map kernels. By default, for launches whose backward
    may follow, tiles of 1024 elements (at most 8 channels), a warp per 256 elements (from the
    sm_90 builds in docs/kernels.md: at 16 x 16, 4 channels and 4 warps take 127 / 216 registers
    in the forward / backward, 8 and 8 take 241 / 255, so four programs fit on a multiprocessor
    instead of one); ``forward_only`` (inference): tiles of 512 elements, a warp per 128, the
    fastest forward tiles of the H200 sweep (16 x 16: 2 channels, 4 warps, 0.324 ms at VMamba-T's
    stage 3 against 0.352 with the tile above; 8 x 8: 8 channels, 4 warps)."""
    hp, wp = padded_map(height, width)
    positions = hp * wp
    tile, per_warp = (512, 128) if forward_only else (1024, 256)
    if block_c is None:
        block_c = max(1, min(8, tile // positions))
    if block_c < 1 or block_c & (block_c - 1):
        raise ValueError(f'block_c must be a power of two, got {block_c}')
    if block_c * positions > MAX_TILE:
        raise ValueError(f'block_c {block_c} x a {hp} x {wp} padded map exceeds {MAX_TILE} '
                         'elements per tile')
    if num_warps is None:
        num_warps = max(1, min(8, block_c * positions // per_warp))
    return block_c, num_warps


def _forward_outputs_map(x, dt_src, dt_weight, dt_bias, A, Bs, Cs, D, pre_given, block_c,
                         num_warps):
    return x.new_empty(x.shape, dtype=torch.float32)


@opaque_under_compile('ss2d_n1_map_fwd', _forward_outputs_map)
def launch_forward_map(x: torch.Tensor, dt_src: torch.Tensor, dt_weight: torch.Tensor,
                       dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                       D: Optional[torch.Tensor], pre_given: bool, block_c: int,
                       num_warps: int) -> torch.Tensor:
    """Forward of the whole-map kernel: float32 y (batch, C, H, W), the four directions summed.
    ``dt_src``: dt_low (batch, 4, R, L), or with ``pre_given`` the projected pre-activation
    (batch, 4, C, L); both row-major, as Bs and Cs."""
    batch, channels, height, width = x.shape
    rank = dt_weight.shape[2]
    hp, wp = padded_map(height, width)
    y = _forward_outputs_map(x, dt_src, dt_weight, dt_bias, A, Bs, Cs, D, pre_given, block_c,
                             num_warps)
    _ss2d_fwd_map_kernel[(triton.cdiv(channels, block_c), batch)](
        x, dt_src, dt_weight, dt_bias, A, Bs, Cs, D if D is not None else A, y, channels, height,
        width, height * width, rank, HAS_D=D is not None, PRE_GIVEN=pre_given, BLOCK_C=block_c,
        HP=hp, WP=wp, num_warps=num_warps)
    return y


def _backward_outputs_map(x, dt_src, dt_weight, dt_bias, A, Bs, Cs, D, dy, pre_given, block_c,
                          num_warps, dpre_dtype):
    batch, channels, height, width = x.shape
    length = height * width
    per_channel = (batch, 4 * channels)
    partials = (batch, 4, triton.cdiv(channels, block_c), length)
    shapes = (x.shape, (batch, 4, channels, length), per_channel, per_channel, partials,
              partials, per_channel)
    return tuple(x.new_empty(shape, dtype=dpre_dtype if i == 1 else torch.float32)
                 for i, shape in enumerate(shapes))


@opaque_under_compile('ss2d_n1_map_bwd', _backward_outputs_map)
def launch_backward_map(x: torch.Tensor, dt_src: torch.Tensor, dt_weight: torch.Tensor,
                        dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor,
                        Cs: torch.Tensor, D: Optional[torch.Tensor], dy: torch.Tensor,
                        pre_given: bool, block_c: int, num_warps: int, dpre_dtype: torch.dtype
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                   torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the whole-map kernel (the states recomputed): float32 dx, d(pre-activation)
    (batch, 4, C, L) in ``dpre_dtype``, float32 per-batch d dt_bias, dA, per-channel-block dB, dC
    partials (batch, 4, blocks, L), dD; all row-major."""
    batch, channels, height, width = x.shape
    rank = dt_weight.shape[2]
    hp, wp = padded_map(height, width)
    dx, dpre, dbias, dA, dB, dC, dD = _backward_outputs_map(
        x, dt_src, dt_weight, dt_bias, A, Bs, Cs, D, dy, pre_given, block_c, num_warps,
        dpre_dtype)
    n_cblocks = dB.shape[2]
    _ss2d_bwd_map_kernel[(n_cblocks, batch)](
        x, dt_src, dt_weight, dt_bias, A, Bs, Cs, D if D is not None else A, dy, dx, dpre, dbias,
        dA, dB, dC, dD, channels, height, width, height * width, n_cblocks, rank,
        HAS_D=D is not None, PRE_GIVEN=pre_given, BLOCK_C=block_c, HP=hp, WP=wp,
        num_warps=num_warps)
    return dx, dpre, dbias, dA, dB, dC, dD
