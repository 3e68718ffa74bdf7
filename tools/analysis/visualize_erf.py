"""Effective receptive field of a config's backbone (last stage by default): the mean over images
of |d centre output / d input| (RepLKNet, the VMamba paper), saved as a PNG heat map of the input
size (log scale, like the paper's figures).

    python tools/analysis/visualize_erf.py CONFIG [CHECKPOINT] [--images-dir DIR] [--num 20]
        [--shape 224 224] [--stage 3] [--out erf.png]

Without --images-dir the inputs are Gaussian noise images (enough to compare architectures;
use real images to reproduce the paper's figure).
"""
import argparse
import glob
import os.path as osp

import _common
import numpy as np
import torch
from PIL import Image

from mmvmamba.analysis import effective_receptive_field


def load_images(directory, num, shape):
    paths = sorted(p for ext in ('jpg', 'jpeg', 'png', 'JPEG') for p in glob.glob(
        osp.join(directory, '**', f'*.{ext}'), recursive=True))[:num]
    if not paths:
        raise FileNotFoundError(f'no .jpg/.png images under {directory!r}')
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    arrays = [(np.asarray(Image.open(p).convert('RGB').resize(shape[::-1], Image.BICUBIC),
                          np.float32) - mean) / std for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


def heatmap_png(erf, path):
    import matplotlib
    matplotlib.use('Agg')
    values = np.log10(erf.numpy() + 1e-12)
    values = (values - values.min()) / max(values.max() - values.min(), 1e-12)
    rgb = (matplotlib.colormaps['RdYlGn'](values)[..., :3] * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?')
    parser.add_argument('--images-dir')
    parser.add_argument('--num', type=int, default=20)
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--stage', type=int, default=3)
    parser.add_argument('--out', default='erf.png')
    args = parser.parse_args(argv)
    cfg = _common.load_config(args.config)
    backbone = _common.build_backbone(cfg, out_indices=(args.stage, ))
    if args.checkpoint:
        _common.load_weights(backbone, args.checkpoint)
    shape = tuple(args.shape)
    images = (load_images(args.images_dir, args.num, shape) if args.images_dir else
              torch.randn(args.num, 3, *shape, generator=torch.Generator().manual_seed(0)))
    erf = effective_receptive_field(backbone, images, progress=_common.progress_printer('ERF'))
    heatmap_png(erf, args.out)
    centre = erf[shape[0] // 2 - shape[0] // 8:shape[0] // 2 + shape[0] // 8,
                 shape[1] // 2 - shape[1] // 8:shape[1] // 2 + shape[1] // 8].sum() / erf.sum()
    print(f'wrote {args.out} ({shape[1]}x{shape[0]}); share of the ERF in the central quarter '
          f'(by side): {centre:.1%}')
    return erf


if __name__ == '__main__':
    main()
