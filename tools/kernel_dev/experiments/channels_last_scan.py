"""Experiment: the d_state 1 forward on a channels-last map at small maps (stages 3-4).

Question: at 14 x 14 the chunked kernel (``kernels/ss2d_n1.py``) walks the channel-first map
with one channel per row of its (BLOCK_C, BLOCK_L) tile, so every column step reads one 2-byte
element per 32-byte sector (ncu: the stage-3 forward at ~80% of L2 throughput), and its reversed
directions pay for ``reverse=True`` scans. On a (batch, L, C) map every step of every direction
is one contiguous row of channels: the column and reversed walks only change which rows a chunk
gathers. Here a program takes BLOCK_C channels of one image, tiles of (BLOCK_C channels, T
steps) scanned along the steps, and delta's pre-activation comes from one GEMM before the
launch as (batch, 4, L, C) in map order (as the chunked kernel's ``project_first`` path, but
transposed), so nothing is reordered for the column directions. A stage-1 version of this idea
(``seq_scan.py``, projection inside, 2026-11-25) had too few programs at 56 x 56 to fill the
GPU; stages 3-4 have 12-16x more programs per step walked.

DIRS directions per program: 4 (one program adds the four into one float32 map, the last
writing the float16 output) or 1 (four times the programs, float32 atomic adds into y).

    python tools/kernel_dev/experiments/channels_last_scan.py            # GPU: check and time
    python tools/kernel_dev/experiments/channels_last_scan.py --check-only   # CPU interpreter

prints, per shape and variant, the error against float64 and the forward's median ms (CUDA
graph replays) next to the chunked kernel's (``ss2d_scan`` with the output in the map's dtype,
its dt GEMM included; the channels-last variants include theirs).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from _kernels import import_kernels  # noqa: E402

vk = import_kernels(interpret_without_cuda=True)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import benchmark_scan as bs  # noqa: E402
from vmamba_kernels.triton_math import _combine, _combine_grad, _softplus  # noqa: E402


@triton.jit
def _channels(pid_c, CS, BLOCK_C: tl.constexpr):
    """This program's channels, times CS (1 at run time, not specialised): the compiler then
    cannot prove the channels contiguous, so it does not give each thread a vector of 8
    channels with the steps across lanes and warps (the scans along the steps then cross
    threads and warps) but lays the (channels, steps) tile out along its first axis."""
    return (pid_c * BLOCK_C + tl.arange(0, BLOCK_C)) * CS


@triton.jit
def _cl_chunk(x_base, pre_base, bs_base, cs_base, A, bias, j, K, c, cm, lt, CH, H, W, L,
              T: tl.constexpr):
    """Chunk j of direction K's walk as a (channels, T steps) tile in walk order: the step
    mask, map offsets s, u, delta's pre-activation (with bias), B, C rows, delta, decay."""
    i = j * T + lt
    valid = i < L
    t = tl.where(K >= 2, L - 1 - i, i)
    s = tl.where(K % 2 == 1, (t % H) * W + t // H, t)
    s = tl.where(valid, s, 0)
    m2 = cm[:, None] & valid[None, :]
    offs = c[:, None] + s[None, :] * CH  # c: see _channels
    u = tl.load(x_base + offs, mask=m2, other=0.).to(tl.float32)
    pre = tl.load(pre_base + offs, mask=m2, other=0.).to(tl.float32) + bias[:, None]
    bv = tl.load(bs_base + s, mask=valid, other=0.).to(tl.float32)
    cv = tl.load(cs_base + s, mask=valid, other=0.).to(tl.float32)
    delta = _softplus(pre)
    decay = tl.where(valid[None, :], tl.exp(delta * A[:, None]), 1.0)
    return valid, s, m2, offs, u, pre, bv, cv, delta, decay


@triton.jit
def _cl_direction(x_base, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_base, yo_base, hs_ptr,
                  b, K, c, cm, lt, CH, H, W, L, FIRST: tl.constexpr, LAST: tl.constexpr,
                  ATOMIC: tl.constexpr, SAVE: tl.constexpr, BLOCK_C: tl.constexpr,
                  T: tl.constexpr):
    """Direction K (0, 1: rows, columns; 2, 3: the same backwards) over BLOCK_C channels of
    image b, chunks of T steps; FIRST stores, later ones add to y (ATOMIC: atomically); LAST
    writes the sum to yo (the output's dtype). SAVE: each chunk's start state into hs
    (batch, 4, chunks, C), for the backward."""
    kc = K * CH + c
    A = tl.load(A_ptr + kc, mask=cm, other=0.).to(tl.float32)
    bias = tl.load(bias_ptr + kc, mask=cm, other=0.).to(tl.float32)
    Dk = tl.load(D_ptr + kc, mask=cm, other=0.).to(tl.float32)
    pre_base = pre_ptr + (b * 4 + K) * L * CH
    bs_base = B_ptr + (b * 4 + K) * L
    cs_base = C_ptr + (b * 4 + K) * L
    n_chunks = tl.cdiv(L, T)
    hs_base = hs_ptr + (b * 4 + K) * n_chunks * CH + c
    h = tl.zeros((BLOCK_C, ), tl.float32)
    for j in range(0, n_chunks):
        valid, s, m2, offs, u, pre, bv, cv, delta, decay = _cl_chunk(
            x_base, pre_base, bs_base, cs_base, A, bias, j, K, c, cm, lt, CH, H, W, L, T)
        if SAVE:
            tl.store(hs_base + j * CH, h, mask=cm)
        prod, states = tl.associative_scan((decay, delta * u * bv[None, :]), 1, _combine)
        states += prod * h[:, None]
        h = tl.sum(tl.where(lt[None, :] == T - 1, states, 0.), 1)
        yv = states * cv[None, :] + Dk[:, None] * u
        if ATOMIC:
            tl.atomic_add(y_base + offs, yv, mask=m2, sem='relaxed')
        else:
            if not FIRST:
                yv += tl.load(y_base + offs, mask=m2, other=0.)
            if LAST:
                tl.store(yo_base + offs, yv.to(yo_base.dtype.element_ty), mask=m2)
            else:
                tl.store(y_base + offs, yv, mask=m2)


@triton.jit(do_not_specialize=['CS'])
def _cl_fwd_kernel(x_ptr, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr, yo_ptr, hs_ptr,
                   CH, H, W, L, CS, DIRS: tl.constexpr, SAVE: tl.constexpr, BLOCK_C: tl.constexpr,
                   T: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = _channels(pid_c, CS, BLOCK_C)
    cm = c < CH
    lt = tl.arange(0, T)
    x_base = x_ptr + b * L * CH
    y_base = y_ptr + b * L * CH
    yo_base = yo_ptr + b * L * CH
    args = (x_base, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_base, yo_base, hs_ptr, b)
    if DIRS == 4:
        _cl_direction(*args, 0, c, cm, lt, CH, H, W, L, True, False, False, SAVE, BLOCK_C, T)
        tl.debug_barrier()
        _cl_direction(*args, 1, c, cm, lt, CH, H, W, L, False, False, False, SAVE, BLOCK_C, T)
        tl.debug_barrier()
        _cl_direction(*args, 2, c, cm, lt, CH, H, W, L, False, False, False, SAVE, BLOCK_C, T)
        tl.debug_barrier()
        _cl_direction(*args, 3, c, cm, lt, CH, H, W, L, False, True, False, SAVE, BLOCK_C, T)
    else:
        _cl_direction(*args, tl.program_id(2), c, cm, lt, CH, H, W, L, False, False, True, SAVE,
                      BLOCK_C, T)


@triton.jit
def _cl_bwd_direction(x_base, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_base,
                      dx_base, dxo_base, dpre_ptr, dA_ptr, dbias_ptr, dD_ptr, dB_ptr, dC_ptr, b,
                      K, c, cm, lt, CH, H, W, L, FIRST: tl.constexpr, LAST: tl.constexpr,
                      BLOCK_C: tl.constexpr, T: tl.constexpr):
    """Direction K of the backward, chunks last to first in walk order (the chunked kernel's
    recurrences, :func:`kernels.ss2d_n1._bwd_direction`, on channels-last maps): dx added
    over the directions (LAST writes it in dxo's dtype), d(pre-activation) per direction, dB /
    dC summed over channels with float32 atomics, dA / d bias / dD per image."""
    kc = K * CH + c
    A = tl.load(A_ptr + kc, mask=cm, other=0.).to(tl.float32)
    bias = tl.load(bias_ptr + kc, mask=cm, other=0.).to(tl.float32)
    Dk = tl.load(D_ptr + kc, mask=cm, other=0.).to(tl.float32)
    pre_base = pre_ptr + (b * 4 + K) * L * CH
    dpre_base = dpre_ptr + (b * 4 + K) * L * CH
    bs_base = B_ptr + (b * 4 + K) * L
    cs_base = C_ptr + (b * 4 + K) * L
    n_chunks = tl.cdiv(L, T)
    hs_base = hs_ptr + (b * 4 + K) * n_chunks * CH + c
    carry = tl.zeros((BLOCK_C, ), tl.float32)  # decay * dL/dh of the step after the chunk
    dA_acc = tl.zeros((BLOCK_C, ), tl.float32)
    dD_acc = tl.zeros((BLOCK_C, ), tl.float32)
    dbias_acc = tl.zeros((BLOCK_C, ), tl.float32)
    for jj in range(0, n_chunks):
        j = n_chunks - 1 - jj
        valid, s, m2, offs, u, pre, bv, cv, delta, decay = _cl_chunk(
            x_base, pre_base, bs_base, cs_base, A, bias, j, K, c, cm, lt, CH, H, W, L, T)
        dy = tl.load(dy_base + offs, mask=m2, other=0.).to(tl.float32)
        one = tl.full((BLOCK_C, T), 1.0, tl.float32)
        g, gain, _ = tl.associative_scan((cv[None, :] * dy, one, decay), 1, _combine_grad,
                                         reverse=True)
        g = g + gain * carry[:, None]
        carry = tl.sum(tl.where(lt[None, :] == 0, decay * g, 0.), 1)
        du_in = delta * u
        inp = du_in * bv[None, :]
        h0 = tl.load(hs_base + j * CH, mask=cm, other=0.)
        prod, states = tl.associative_scan((decay, inp), 1, _combine)
        states = states + prod * h0[:, None]
        carried = states - inp  # decay_t * h_{t-1}
        gb = g * bv[None, :]
        du = gb * delta + Dk[:, None] * dy
        dD_acc += tl.sum(dy * u, 1)
        ddelta = g * A[:, None] * carried + gb * u
        dpre = tl.where(m2, ddelta / (1.0 + tl.exp(-pre)), 0.)
        dA_acc += tl.sum(g * delta * carried, 1)
        dbias_acc += tl.sum(dpre, 1)
        row = (b * 4 + K) * L + s
        tl.atomic_add(dB_ptr + row, tl.sum(g * du_in, 0), mask=valid, sem='relaxed')
        tl.atomic_add(dC_ptr + row, tl.sum(states * dy, 0), mask=valid, sem='relaxed')
        if not FIRST:
            du += tl.load(dx_base + offs, mask=m2, other=0.)
        if LAST:
            tl.store(dxo_base + offs, du.to(dxo_base.dtype.element_ty), mask=m2)
        else:
            tl.store(dx_base + offs, du, mask=m2)
        tl.store(dpre_base + offs, dpre.to(dpre_ptr.dtype.element_ty), mask=m2)
    part = b * 4 * CH + kc
    tl.store(dA_ptr + part, dA_acc, mask=cm)
    tl.store(dbias_ptr + part, dbias_acc, mask=cm)
    tl.store(dD_ptr + part, dD_acc, mask=cm)


@triton.jit(do_not_specialize=['CS'])
def _cl_bwd_kernel(x_ptr, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_ptr, dx_ptr,
                   dxo_ptr, dpre_ptr, dA_ptr, dbias_ptr, dD_ptr, dB_ptr, dC_ptr, CH, H, W, L, CS,
                   BLOCK_C: tl.constexpr, T: tl.constexpr):
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    c = _channels(pid_c, CS, BLOCK_C)
    cm = c < CH
    lt = tl.arange(0, T)
    base = b * L * CH
    args = (x_ptr + base, pre_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, hs_ptr, dy_ptr + base,
            dx_ptr + base, dxo_ptr + base, dpre_ptr, dA_ptr, dbias_ptr, dD_ptr, dB_ptr, dC_ptr, b)
    _cl_bwd_direction(*args, 0, c, cm, lt, CH, H, W, L, True, False, BLOCK_C, T)
    tl.debug_barrier()
    _cl_bwd_direction(*args, 1, c, cm, lt, CH, H, W, L, False, False, BLOCK_C, T)
    tl.debug_barrier()
    _cl_bwd_direction(*args, 2, c, cm, lt, CH, H, W, L, False, False, BLOCK_C, T)
    tl.debug_barrier()
    _cl_bwd_direction(*args, 3, c, cm, lt, CH, H, W, L, False, True, BLOCK_C, T)


def projected_pre(inp):
    """delta's pre-activation without bias, (batch, 4, L, C) in map order: one batched GEMM
    (float16 for float16 dt_low, as the chunked kernel's ``project_first``)."""
    dtype = torch.float16 if inp['dt_low'].dtype == torch.float16 else torch.float32
    return torch.matmul(inp['dt_low'].to(dtype).transpose(2, 3),
                        inp['dt_weight'].to(dtype).transpose(1, 2))


def cl_forward(inp, x_cl, size, dirs, block_c, t, num_warps, save=False):
    """y (batch, L, C) in x's dtype (DIRS 4) or float32 (DIRS 1, atomics); with ``save``
    (y, pre-activation, chunk start states)."""
    batch, length, ch = x_cl.shape
    pre = projected_pre(inp)
    states = torch.empty(batch, 4, triton.cdiv(length, t), ch, device=x_cl.device,
                         dtype=torch.float32) if save else pre
    if dirs == 4:
        acc = torch.empty(batch, length, ch, device=x_cl.device, dtype=torch.float32)
        out = torch.empty_like(x_cl)
    else:
        acc = out = torch.zeros(batch, length, ch, device=x_cl.device, dtype=torch.float32)
    grid = (triton.cdiv(ch, block_c), batch, 4 // dirs)
    _cl_fwd_kernel[grid](x_cl, pre, inp['dt_bias'], inp['A'], inp['Bs'], inp['Cs'], inp['D'], acc,
                         out, states, ch, size, size, length, 1, DIRS=dirs, SAVE=save,
                         BLOCK_C=block_c, T=t, num_warps=num_warps)
    return (out, pre, states) if save else out


def cl_forward_backward(inp, x_cl, dy_cl, size, block_c, t, num_warps):
    """Forward (saving states) and backward on the channels-last map: dx (batch, L, C) in x's
    dtype and the gradients of dt_low, dt_weight, dt_bias, A, Bs, Cs, D (the dt projection's as
    two GEMMs on d(pre-activation), as the chunked kernel's caller does)."""
    batch, length, ch = x_cl.shape
    _, pre, states = cl_forward(inp, x_cl, size, 4, block_c, t, num_warps, save=True)
    f32 = dict(device=x_cl.device, dtype=torch.float32)
    acc = torch.empty(batch, length, ch, **f32)
    dx = torch.empty_like(x_cl)
    dpre = torch.empty_like(pre)
    dA, dbias, dD = (torch.empty(batch, 4 * ch, **f32) for _ in range(3))
    dB, dC = (torch.zeros(batch, 4, length, **f32) for _ in range(2))
    _cl_bwd_kernel[(triton.cdiv(ch, block_c), batch)](
        x_cl, pre, inp['dt_bias'], inp['A'], inp['Bs'], inp['Cs'], inp['D'], states, dy_cl, acc,
        dx, dpre, dA, dbias, dD, dB, dC, ch, size, size, length, 1, BLOCK_C=block_c, T=t,
        num_warps=num_warps)
    w = inp['dt_weight'].to(dpre.dtype)  # (4, C, R)
    ddtl = torch.matmul(dpre, w).transpose(2, 3)  # (batch, 4, R, L)
    dw = torch.matmul(dpre.transpose(2, 3), inp['dt_low'].to(dpre.dtype).transpose(2, 3)).sum(
        0, dtype=torch.float32)
    return dict(x=dx, dt_low=ddtl, dt_weight=dw, dt_bias=dbias.sum(0).view(4, ch),
                A=dA.sum(0)[:, None], Bs=dB[:, :, None], Cs=dC[:, :, None], D=dD.sum(0))


def check_backward(size, ch, rank, dev, block_c, t, num_warps):
    """Largest relative error of each gradient against float64 autograd on two images."""
    inp = bs.make_inputs(2, size, ch, rank, 1, torch.float16, dev, seed=1)
    dy = torch.randn(2, ch, size, size, generator=torch.Generator().manual_seed(2)).to(dev)
    x_cl, dy_cl = (v.permute(0, 2, 3, 1).reshape(2, size * size, ch).contiguous().half()
                   for v in (inp['x'], dy))
    with torch.no_grad():
        grads = cl_forward_backward(inp, x_cl, dy_cl, size, block_c, t, num_warps)
    grads['x'] = grads['x'].view(2, size, size, ch).permute(0, 3, 1, 2)
    ref_in = {k: v.double().requires_grad_(True) for k, v in inp.items()}
    vk.ss2d_scan_torch(**ref_in).backward(dy.double())
    return {k: bs.rel_err(grads[k], ref_in[k].grad) for k in grads}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--check-only', action='store_true')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--shapes', nargs='+', default=['14x384x24', '7x768x48', '14x512x32'],
                        help='SIZExCHANNELSxRANK (VMamba-T stages 3, 4, B stage 3)')
    parser.add_argument('--configs', nargs='+',
                        default=['4x32x4x1', '4x32x8x1', '4x32x16x1', '4x64x8x2', '4x128x4x4',
                                 '4x128x8x4', '4x128x16x4', '1x32x8x1', '1x128x8x4'],
                        help='forward: DIRSxBLOCK_CxTxWARPS')
    parser.add_argument('--bwd-configs', nargs='+',
                        default=['32x4x1', '32x8x1', '32x16x1', '64x8x2', '128x4x4', '128x8x4'],
                        help='forward + backward: BLOCK_CxTxWARPS')
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    shapes = [tuple(int(v) for v in s.split('x')) for s in args.shapes]
    configs = [tuple(int(v) for v in s.split('x')) for s in args.configs]
    bwd_configs = [tuple(int(v) for v in s.split('x')) for s in args.bwd_configs]
    if args.check_only:
        shapes, configs = [(5, 12, 3), (4, 20, 2)], [(4, 8, 8, 1), (1, 16, 4, 1), (4, 16, 16, 1)]
        bwd_configs = [(8, 8, 1), (16, 4, 1), (16, 16, 1)]
    dev = 'cuda' if cuda else 'cpu'
    for size, ch, rank in shapes:
        batch = 2 if args.check_only else args.batch
        inp = bs.make_inputs(batch, size, ch, rank, 1, torch.float16, dev, seed=0)
        x_cl = inp['x'].permute(0, 2, 3, 1).reshape(batch, size * size, ch).contiguous()
        with torch.no_grad():
            ref = vk.ss2d_scan_torch(**{k: v[:2].double() if k in ('x', 'dt_low', 'Bs', 'Cs')
                                        else v.double() for k, v in inp.items()})
        ref_cl = ref.permute(0, 2, 3, 1).reshape(2, size * size, ch)
        name = f'{size}x{size} C{ch} R{rank}'
        if cuda:
            ms = bs.bench(lambda i: bs.fused(i, out_dtype=i['x'].dtype), inp, False, 10,
                          graphs=True)
            ms_b = bs.bench(lambda i: bs.fused(i, out_dtype=i['x'].dtype), inp, True, 10,
                            graphs=True)
            print(f'{name} chunked kernel (main): fwd {ms:.3f} ms, fwd+bwd {ms_b:.3f} ms',
                  flush=True)
        for dirs, bc, t, nw in configs:
            y = cl_forward(inp, x_cl, size, dirs, bc, t, nw)
            line = f'{name} channels-last dirs {dirs} C{bc} T{t} w{nw}: err ' \
                   f'{bs.rel_err(y[:2], ref_cl):.1e}'
            if cuda:
                ms = bs.bench(lambda i: cl_forward(i, x_cl, size, dirs, bc, t, nw), inp, False,
                              10, graphs=True)
                line += f' fwd {ms:.3f} ms'
            print(line, flush=True)
        dy_cl = torch.randn_like(x_cl)
        for bc, t, nw in bwd_configs:
            errs = check_backward(size, ch, rank, dev, bc, t, nw)
            line = f'{name} channels-last fwd+bwd C{bc} T{t} w{nw}: errors ' + ' '.join(
                f'{k} {v:.1e}' for k, v in errs.items())
            if cuda:
                ms = bs.bench(lambda i: cl_forward_backward(i, x_cl, dy_cl, size, bc, t, nw), inp,
                              False, 10, graphs=True)
                line += f' fwd+bwd {ms:.3f} ms'
            print(line, flush=True)


if __name__ == '__main__':
    main()
