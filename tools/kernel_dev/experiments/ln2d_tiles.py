"""LayerNorm2d backward at VMamba-B's training shapes: the earlier kernel (one tile of all
channels per program, reading x and dy once) at its own and other tiles, and the current one
(``vmamba_kernels.layernorm2d``: two passes looping over channel blocks, fewer registers per
program, more programs in flight) at several tiles. Prints ms per call including the partial
sums (triton.testing.do_bench median) and each variant's largest difference from the earlier
kernel at its own tiles.

    python tools/kernel_dev/experiments/ln2d_tiles.py
"""
import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from vmamba_kernels import layernorm2d as ln


@triton.jit
def _ln2d_bwd_whole_tile(x_ptr, w_ptr, dy_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_ptr, db_ptr, C, P,
                         NPB, sxc, sxp, syc, syp, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The backward before commit bc14fc8: one (all channels, BLOCK_P) tile per
    program, x and dy read once."""
    pid_p, b, c, p, cm, pm, m2 = ln._tile(C, P, BLOCK_C, BLOCK_P)
    base = b * C * P
    x_offs = base + c[:, None] * sxc + p[None, :] * sxp
    x = tl.load(x_ptr + x_offs, mask=m2, other=0.).to(tl.float32)
    dy = tl.load(dy_ptr + base + c[:, None] * syc + p[None, :] * syp, mask=m2,
                 other=0.).to(tl.float32)
    mean = tl.load(mean_ptr + b * P + p, mask=pm, other=0.)
    rstd = tl.load(rstd_ptr + b * P + p, mask=pm, other=0.)
    w = tl.load(w_ptr + c, mask=cm, other=0.).to(tl.float32)
    xhat = tl.where(m2, (x - mean[None, :]) * rstd[None, :], 0.)
    wdy = dy * w[:, None]
    c1 = tl.sum(xhat * wdy, 0) / C
    c2 = tl.sum(wdy, 0) / C
    dx = (wdy - xhat * c1[None, :] - c2[None, :]) * rstd[None, :]
    tl.store(dx_ptr + x_offs, dx.to(dx_ptr.dtype.element_ty), mask=m2)
    row = (b * NPB + pid_p) * C + c
    tl.store(dw_ptr + row, tl.sum(dy * xhat, 1), mask=cm)
    tl.store(db_ptr + row, tl.sum(dy, 1), mask=cm)


def outputs(x, block_p):
    """Empty dx, d weight and d bias partial rows, and the number of position blocks."""
    n_blocks = triton.cdiv(x.shape[2] * x.shape[3], block_p)
    dw = x.new_empty((x.shape[0] * n_blocks, x.shape[1]), dtype=torch.float32)
    return torch.empty_like(x), dw, torch.empty_like(dw), n_blocks


def launch(kernel, x, weight, stats, dy, block_c, block_p, warps):
    """dx, d weight, d bias from ``kernel`` at the given tile (partial rows summed)."""
    dx, dw, db, n_blocks = outputs(x, block_p)
    kernel[(n_blocks, x.shape[0])](x, weight, dy, stats[0], stats[1], dx, dw, db, x.shape[1],
                                   x.shape[2] * x.shape[3], n_blocks, *ln._layout_strides(x),
                                   *ln._layout_strides(dy), BLOCK_C=block_c, BLOCK_P=block_p,
                                   num_warps=warps)
    return dx, dw.sum(0), db.sum(0)


def whole_tile(x, weight, stats, dy, block_p, warps):
    return launch(_ln2d_bwd_whole_tile, x, weight, stats, dy,
                  triton.next_power_of_2(x.shape[1]), block_p, warps)


def looped(x, weight, stats, dy, block_c, block_p, warps):
    """The shipped kernel (its x-hat from x, as a norm that keeps its input) at the given tile."""
    dx, dw, db, n_blocks = outputs(x, block_p)
    ln._ln2d_bwd_kernel[(n_blocks, x.shape[0])](
        x, weight, weight, dy, stats[0], stats[1], dx, dw, db, x.shape[1],
        x.shape[2] * x.shape[3], n_blocks,
        *ln._layout_strides(x), *ln._layout_strides(dy), *ln._layout_strides(dx),
        FROM_OUTPUT=False, BLOCK_C=block_c, BLOCK_P=block_p, num_warps=warps)
    return dx, dw.sum(0), db.sum(0)


def main():
    torch.manual_seed(0)
    # (channels, size, x layout): out_norm reads the scan's channel-first float32 output, the
    # block norms the channels-last float32 residual stream; dy is fp16 channels-last
    cases = [(1024, 14, 'cf'), (512, 14, 'cl'), (256, 56, 'cf'), (128, 56, 'cl'), (512, 28, 'cf'),
             (256, 28, 'cl'), (2048, 7, 'cf'), (1024, 7, 'cl')]
    for channels, size, layout in cases:
        fmt = torch.channels_last if layout == 'cl' else torch.contiguous_format
        x = torch.randn(128, channels, size, size, device='cuda').to(memory_format=fmt)
        weight = torch.randn(channels, device='cuda')
        bias = torch.randn(channels, device='cuda')
        y, stats = ln._forward(x, weight, bias, 1e-5, torch.float16, True)
        dy = torch.randn_like(y)
        own = ln._tiles(channels)[1:]
        ref = whole_tile(x, weight, stats, dy, *own)
        gb = (x.numel() * 4 * 2 + dy.numel() * 2) / 1e9
        t_fwd = do_bench(lambda: ln._forward(x, weight, bias, 1e-5, torch.float16, True))
        t_old = do_bench(lambda: whole_tile(x, weight, stats, dy, *own))
        print(f'C {channels} {size}x{size} x {layout}: fwd {t_fwd:.3f} ms, earlier bwd '
              f'{t_old:.3f} ms (whole tile, BLOCK_P and warps {own}), bytes floor '
              f'{gb / 3.0:.3f} ms', flush=True)
        variants = []
        for bp, nw in ((8, 8), (16, 8), (32, 16), (32, 8), (64, 16)):
            variants.append((f'whole tile BLOCK_P {bp} warps {nw}',
                             lambda bp=bp, nw=nw: whole_tile(x, weight, stats, dy, bp, nw)))
        for bc, bp, nw in ((32, 64, 4), (64, 32, 4), (64, 64, 4), (64, 64, 8), (128, 32, 4),
                           (128, 64, 8), (32, 128, 4), (16, 128, 4)):
            if bc > channels:
                continue
            variants.append((f'looped BLOCK_C {bc} BLOCK_P {bp} warps {nw}',
                             lambda bc=bc, bp=bp, nw=nw: looped(x, weight, stats, dy, bc, bp,
                                                                nw)))
        for name, fn in variants:
            try:
                out = fn()
                err = max((a.float() - r.float()).abs().max().item() for a, r in zip(out, ref))
                t = do_bench(fn)
                print(f'    {name}: {t:.3f} ms (incl. partial sums), max diff {err:.2e}',
                      flush=True)
            except Exception as exc:  # a tile that does not compile (shared memory)
                print(f'    {name}: failed {type(exc).__name__}: {str(exc)[:100]}', flush=True)


if __name__ == '__main__':
    main()
