"""The column walks' map transposes on a CUDA GPU: ATen's ``t.transpose(2, 3).contiguous()``
against ``vmamba_kernels.map_transpose.transposed`` with each square tile (side, warps) given,
and ``add_transposed`` (float16 maps, as under fp16 autocast with the float16 sums) likewise, at
the maps of VMamba-T / S stages 1-2 (batch 128; ``--maps`` others, as CxHxW). Prints median
microseconds and TB/s per variant; every variant's output is checked against torch's first.

    python tools/kernel_dev/experiments/map_transpose_tiles.py [--batch 128]
        [--tiles 32x4 64x4 64x8 32x2] [--maps 96x56x56 96x200x333]
"""
import argparse
import os
import sys

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from _kernels import import_kernels  # noqa: E402

import_kernels()
from vmamba_kernels import map_transpose as mt  # noqa: E402

MAPS = ['96x56x56', '192x28x28', '192x56x56', '384x28x28']  # T and S, stages 1-2


def timed(fn):
    return do_bench(fn, warmup=50, rep=300, return_mode='median') * 1e3  # microseconds


def tiled(kernel, args, shape, side, warps):
    """A call of ``kernel`` over ``shape`` with square tiles of ``side`` on ``warps`` warps."""
    return lambda: mt.launch_by_tiles(kernel, args, shape, (side, side, warps))


def report(label, shape, bytes_moved, results):
    cells = ' '.join(f'{name} {us:.1f} us ({bytes_moved / us / 1e6:.2f} TB/s)'
                     for name, us in results)
    print(f'{label} {shape}: {cells}', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--tiles', nargs='+', default=['32x4', '64x4', '64x8', '32x2'],
                        help='square tiles as SIDExWARPS')
    parser.add_argument('--maps', nargs='+', default=MAPS, help='maps as CxHxW')
    args = parser.parse_args()
    tiles = [tuple(int(v) for v in text.split('x')) for text in args.tiles]
    maps = [tuple(int(v) for v in text.split('x')) for text in args.maps]
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}')
    for channels, height, width in maps:
        shape = (args.batch, channels, height, width)
        print(f'default tile of {height} x {width} (sides, warps): {mt._tile(height, width)}')
        t = torch.randn(shape, device='cuda', dtype=torch.float16)
        want = t.transpose(2, 3).contiguous()
        assert torch.equal(mt.transposed(t), want)
        results = [('aten', timed(lambda: t.transpose(2, 3).contiguous())),
                   ('default', timed(lambda: mt.transposed(t)))]
        for tile_side, warps in tiles:
            out = torch.empty_like(want)
            fn = tiled(mt._transpose_kernel, (t, out), shape, tile_side, warps)
            fn()
            assert torch.equal(out, want), (tile_side, warps)
            results.append((f'{tile_side}x{warps}', timed(fn)))
        report('transpose fp16', shape, 2 * t.numel() * 2, results)

        # add_transposed(a, u, out): a (batch, C, H, W) plus u (batch, C, W, H) transposed
        a, u = torch.randn_like(t), torch.randn_like(want)
        want = mt.add_transposed_reference(a, u, torch.float16)
        # (every variant writes into an output made beforehand, the default's checked too)
        out = torch.empty_like(a)
        assert torch.equal(mt.add_transposed(a, u, out), want)
        results = [('default', timed(lambda: mt.add_transposed(a, u, out)))]
        for tile_side, warps in tiles:
            out = torch.empty_like(a)
            fn = tiled(mt._add_transposed_kernel, (a, u, out), shape, tile_side, warps)
            fn()
            assert torch.equal(out, want), (tile_side, warps)
            results.append((f'{tile_side}x{warps}', timed(fn)))
        report('add_transposed fp16', shape, 3 * a.numel() * 2, results)


if __name__ == '__main__':
    main()
