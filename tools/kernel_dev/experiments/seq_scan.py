"""Experiment: a d_state 1 forward where each thread walks its channel step by step.

Question: is the chunked ``tl.associative_scan`` design (kernels/ss2d_n1.py) what keeps the
stage-1 scan at ~20x its byte floor? Here the map is channels-last (batch, L, C), one thread
owns one channel of one direction and walks the L steps in sequence (T steps unrolled per loop
iteration, so their loads issue together); every access to the map is a contiguous row of
channels, in the row and the column directions alike. DIRS directions per program (4: one
output, 2: rows / columns into two planes, 1: four planes), the planes summed afterwards.

    python tools/kernel_dev/experiments/seq_scan.py [--check-only]

times the (T, BLOCK_C) tile variant (``tile_forward``, results in docs/results/seq_scan_tiles.txt);
``seq_forward``, one step at a time, was timed first (docs/results/seq_scan_per_step.txt).
"""
import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import benchmark_scan as bs  # noqa: E402

vk = bs.vk
from vmamba_kernels.triton_math import _combine, _softplus  # noqa: E402


@triton.jit
def _direction(dtl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, b, K, c, cm, CH, L,
               R: tl.constexpr):
    """Direction K's per-channel parameters, the bases of its rows, whether it walks columns
    and whether backwards."""
    kc = K * CH + c
    A = tl.load(A_ptr + kc, mask=cm, other=0.).to(tl.float32)
    bias = tl.load(bias_ptr + kc, mask=cm, other=0.).to(tl.float32)
    Dk = tl.load(D_ptr + kc, mask=cm, other=0.).to(tl.float32)
    return (kc, A, bias, Dk, dtl_ptr + (b * 4 + K) * R * L, B_ptr + (b * 4 + K) * L,
            C_ptr + (b * 4 + K) * L, K % 2 == 1, K >= 2)


@triton.jit
def _seq_fwd_kernel(x_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr,
                    CH, H, W, L, NB, R: tl.constexpr, DIRS: tl.constexpr,
                    BLOCK_C: tl.constexpr, T: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    z = tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CH
    x_base = x_ptr + b * L * CH + c
    y_base = y_ptr + (z * NB + b) * L * CH + c
    for kk in tl.static_range(DIRS):
        kc, A, bias, Dk, dtl, bsp, csp, col, rev = _direction(
            dtl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, b, z + kk * (4 // DIRS), c, cm, CH, L,
            R)
        h = tl.zeros((BLOCK_C, ), tl.float32)
        for i0 in range(0, L, T):
            for j in tl.static_range(T):
                i = i0 + j
                valid = i < L
                t = tl.where(rev, L - 1 - i, i)
                s = tl.where(col, (t % H) * W + t // H, t)
                s = tl.where(valid, s, 0)
                u = tl.load(x_base + s * CH, mask=cm, other=0.).to(tl.float32)
                pre = bias
                for r in tl.static_range(R):
                    wr = tl.load(w_ptr + kc * R + r, mask=cm, other=0.).to(tl.float32)
                    pre += wr * tl.load(dtl + r * L + s).to(tl.float32)
                bv = tl.load(bsp + s).to(tl.float32)
                cv = tl.load(csp + s).to(tl.float32)
                delta = _softplus(pre)
                h = tl.where(valid, tl.exp(delta * A) * h + delta * u * bv, h)
                yv = h * cv + Dk * u
                yp = y_base + s * CH
                if kk > 0:
                    yv += tl.load(yp, mask=cm & valid, other=0.)
                tl.store(yp, yv, mask=cm & valid)


@triton.jit
def _load_chunk(x_base, dtl, w_ptr, bsp, csp, kc, bias, c, cm, lt, i0, CH, H, W, L, col, rev,
                R: tl.constexpr, BLOCK_C: tl.constexpr, T: tl.constexpr):
    i = i0 + lt
    valid = i < L
    t = tl.where(rev, L - 1 - i, i)
    s = tl.where(col, (t % H) * W + t // H, t)
    s = tl.where(valid, s, 0)
    m2 = valid[:, None] & cm[None, :]
    u = tl.load(x_base + s[:, None] * CH + c[None, :], mask=m2, other=0.).to(tl.float32)
    pre = tl.zeros((T, BLOCK_C), tl.float32) + bias[None, :]
    for r in tl.static_range(R):
        wr = tl.load(w_ptr + kc * R + r, mask=cm, other=0.).to(tl.float32)
        pre += tl.load(dtl + r * L + s, mask=valid, other=0.).to(tl.float32)[:, None] * wr[None, :]
    bv = tl.load(bsp + s, mask=valid, other=0.).to(tl.float32)
    cv = tl.load(csp + s, mask=valid, other=0.).to(tl.float32)
    return u, pre, bv, cv, s, valid


@triton.jit
def _tile_fwd_kernel(x_ptr, dtl_ptr, w_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr,
                     CH, H, W, L, NB, R: tl.constexpr, DIRS: tl.constexpr,
                     BLOCK_C: tl.constexpr, T: tl.constexpr, PREFETCH: tl.constexpr):
    """(T, BLOCK_C) tiles, scanned along axis 0; PREFETCH: the next chunk's loads are issued
    before this chunk's scan and store."""
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    z = tl.program_id(2)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < CH
    lt = tl.arange(0, T)
    x_base = x_ptr + b * L * CH
    y_base = y_ptr + (z * NB + b) * L * CH
    for kk in tl.static_range(DIRS):
        kc, A, bias, Dk, dtl, bsp, csp, col, rev = _direction(
            dtl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, b, z + kk * (4 // DIRS), c, cm, CH, L,
            R)
        h = tl.zeros((BLOCK_C, ), tl.float32)
        u, pre, bv, cv, s, valid = _load_chunk(x_base, dtl, w_ptr, bsp, csp, kc, bias, c, cm, lt,
                                               0, CH, H, W, L, col, rev, R, BLOCK_C, T)
        for i0 in range(0, L, T):
            if PREFETCH:
                nu, npre, nbv, ncv, ns, nvalid = _load_chunk(
                    x_base, dtl, w_ptr, bsp, csp, kc, bias, c, cm, lt, i0 + T, CH, H, W, L, col,
                    rev, R, BLOCK_C, T)
            else:
                u, pre, bv, cv, s, valid = _load_chunk(
                    x_base, dtl, w_ptr, bsp, csp, kc, bias, c, cm, lt, i0, CH, H, W, L, col,
                    rev, R, BLOCK_C, T)
            m2 = valid[:, None] & cm[None, :]
            delta = _softplus(pre)
            decay = tl.where(valid[:, None], tl.exp(delta * A[None, :]), 1.0)
            inp = delta * u * bv[:, None]
            prod, states = tl.associative_scan((decay, inp), 0, _combine)
            states += prod * h[None, :]
            h = tl.sum(tl.where(lt[:, None] == T - 1, states, 0.), 0)
            yv = states * cv[:, None] + Dk[None, :] * u
            yp = y_base + s[:, None] * CH + c[None, :]
            if kk > 0:
                yv += tl.load(yp, mask=m2, other=0.)
            tl.store(yp, yv, mask=m2)
            if PREFETCH:
                u, pre, bv, cv, s, valid = nu, npre, nbv, ncv, ns, nvalid
        tl.debug_barrier()


def tile_forward(inp, dirs=4, block_c=32, t=16, num_warps=1, prefetch=True):
    x = inp['x']
    batch, ch, hh, ww = x.shape
    L = hh * ww
    rank = inp['dt_weight'].shape[2]
    planes = 4 // dirs
    y = torch.empty(planes, batch, L, ch, device=x.device, dtype=torch.float32)
    _tile_fwd_kernel[(triton.cdiv(ch, block_c), batch, planes)](
        inp['x_cl'], inp['dt_low'], inp['dt_weight'], inp['dt_bias'], inp['A'], inp['Bs'],
        inp['Cs'], inp['D'], y, ch, hh, ww, L, batch, R=rank, DIRS=dirs, BLOCK_C=block_c, T=t,
        PREFETCH=prefetch, num_warps=num_warps)
    return y.sum(0) if planes > 1 else y[0]


def seq_forward(inp, dirs=4, block_c=32, t=16, num_warps=1):
    x = inp['x']
    batch, ch, hh, ww = x.shape
    L = hh * ww
    xl = inp['x_cl']  # (batch, L, C)
    rank = inp['dt_weight'].shape[2]
    planes = 4 // dirs
    y = torch.empty(planes, batch, L, ch, device=x.device, dtype=torch.float32)
    _seq_fwd_kernel[(triton.cdiv(ch, block_c), batch, planes)](
        xl, inp['dt_low'], inp['dt_weight'], inp['dt_bias'], inp['A'], inp['Bs'], inp['Cs'],
        inp['D'], y, ch, hh, ww, L, batch, R=rank, DIRS=dirs, BLOCK_C=block_c, T=t,
        num_warps=num_warps)
    return y.sum(0) if planes > 1 else y[0]


def to_cf(y, size):
    return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], size, size)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--check-only', action='store_true')
    parser.add_argument('--batch', type=int, default=128)
    args = parser.parse_args()
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    shapes = [(5, 7, 3)] if args.check_only else [(56, 96, 6), (28, 192, 12), (14, 384, 24),
                                                  (14, 1024, 32)]
    configs = [(4, 32, 16, 1, True), (2, 32, 16, 1, False), (1, 32, 8, 1, True)]
    if not args.check_only:
        configs = [(d, bc, t, nw, pf) for (d, bc, t, nw) in (
            (4, 32, 32, 1), (4, 32, 64, 2), (4, 64, 32, 2), (4, 128, 32, 4), (2, 32, 32, 1),
            (2, 64, 32, 2), (1, 32, 32, 1), (4, 32, 16, 1)) for pf in (True, False)]
    for size, ch, rank in shapes:
        batch = 2 if args.check_only else args.batch
        inp = bs.make_inputs(batch, size, ch, rank, 1, torch.bfloat16, dev, seed=0)
        x_cl = inp['x'].flatten(2).transpose(1, 2).contiguous()
        with torch.no_grad():
            ref = vk.ss2d_scan_torch(**{k: v[:2].double() if k in ('x', 'dt_low', 'Bs', 'Cs')
                                        else v.double() for k, v in inp.items()})
        for dirs, bc, t, nw, pf in configs:
            y = to_cf(tile_forward(dict(inp, x_cl=x_cl), dirs, bc, t, nw, pf), size)
            err = bs.rel_err(y[:2], ref)
            line = (f'{size}x{size} C{ch} R{rank} dirs {dirs} C{bc} T{t} w{nw} prefetch {pf}: '
                    f'err {err:.1e}')
            if dev == 'cuda':
                from triton.testing import do_bench
                ms = do_bench(lambda: tile_forward(dict(inp, x_cl=x_cl), dirs, bc, t, nw, pf),
                              return_mode='median')
                line += f' fwd {ms:.3f} ms'
            print(line, flush=True)
        if dev == 'cuda':
            for v in inp.values():
                v.requires_grad_(False)
            from triton.testing import do_bench
            with torch.no_grad():
                ms = do_bench(lambda: vk.ss2d_scan(**inp), return_mode='median')
            print(f'{size}x{size} C{ch} R{rank} current fused fwd {ms:.3f} ms', flush=True)


if __name__ == '__main__':
    main()
