"""FLOPs and measured forward time of VMamba vs a ViT-style global-attention backbone of similar
size as the input resolution grows: a table and a PNG plot. VMamba's cost is linear in the
number of pixels; global attention's is quadratic in the number of tokens.

    python tools/analysis/resolution_scaling.py [--config CONFIG] [--sizes 224 384 512 768 1024]
        [--device cpu] [--no-time] [--out scaling.png]
"""
import argparse
import statistics
import time

import _common
import torch
import torch.nn as nn

from mmvmamba.analysis import count_flops

DEFAULT_CONFIG = 'configs/vmamba/vmamba-tiny_8xb128_in1k.py'


class Attention(nn.Module):

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads)**-0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class ViTBlock(nn.Module):

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBackbone(nn.Module):
    """Plain ViT (patch 16, global attention in every block); dim 432 x 12 blocks is 27M
    parameters, the size class of VMamba-T (30M)."""

    def __init__(self, dim=432, depth=12, heads=6, patch=16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.norm(self.blocks(x))


def time_forward(model, size, device, repeats=3):
    x = torch.randn(1, 3, size, size, device=device)
    model.eval().to(device)
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def scaling_table(vmamba, vit, sizes, device='cpu', measure_time=True):
    rows = []
    for size in sizes:
        fv, ft = count_flops(vmamba, (size, size)), count_flops(vit, (size, size))
        row = dict(size=size, vmamba_flops=fv['total'], vmamba_scan=fv['scan'],
                   vit_flops=ft['total'])
        if measure_time:
            row.update(vmamba_ms=1e3 * time_forward(vmamba, size, device),
                       vit_ms=1e3 * time_forward(vit, size, device))
        rows.append(row)
        print(f'{size}x{size} done', flush=True)
    return rows


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    pixels = [r['size']**2 / 1e6 for r in rows]
    panels = [('FLOPs (G)', 'flops', 1e-9)] + ([('forward ms', 'ms', 1)] if 'vit_ms' in rows[0]
                                               else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (label, key, scale) in zip(axes[0], panels):
        for name in ('vmamba', 'vit'):
            ax.plot(pixels, [r[f'{name}_{key}'] * scale for r in rows], 'o-',
                    label='VMamba' if name == 'vmamba' else 'ViT (global attention)')
        ax.set_xlabel('megapixels')
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 384, 512, 768, 1024])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--no-time', action='store_true', help='FLOPs only')
    parser.add_argument('--vit-dim', type=int, default=432)
    parser.add_argument('--out', default='resolution_scaling.png')
    args = parser.parse_args(argv)
    vmamba = _common.build_backbone(_common.load_config(args.config))
    vit = ViTBackbone(dim=args.vit_dim)
    rows = scaling_table(vmamba, vit, args.sizes, args.device, not args.no_time)
    base = rows[0]
    print(f'\nVMamba {sum(p.numel() for p in vmamba.parameters()) / 1e6:.1f}M params vs ViT '
          f'{sum(p.numel() for p in vit.parameters()) / 1e6:.1f}M, device {args.device}')
    head = '| size | pixels x | VMamba GFLOPs (x) | ViT GFLOPs (x) |'
    head += ' VMamba ms | ViT ms |' if not args.no_time else ''
    print(head + '\n' + '|---' * (head.count('|') - 1) + '|')
    for r in rows:
        line = (f"| {r['size']} | {(r['size'] / base['size'])**2:.2f} | "
                f"{r['vmamba_flops'] / 1e9:.2f} ({r['vmamba_flops'] / base['vmamba_flops']:.2f}) | "
                f"{r['vit_flops'] / 1e9:.2f} ({r['vit_flops'] / base['vit_flops']:.2f}) |")
        if not args.no_time:
            line += f" {r['vmamba_ms']:.1f} | {r['vit_ms']:.1f} |"
        print(line)
    plot(rows, args.out)
    print(f'wrote {args.out}')
    return rows


if __name__ == '__main__':
    main()
