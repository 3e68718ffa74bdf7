"""Write scikit-learn's bundled handwritten digits (1797 8x8 images, no download) as an
ImageNet-style folder dataset: ``OUT/{train,val}/<digit>/<index>.png``, upscaled to SIZE x SIZE
RGB, with a fixed stratified train/val split.

    python tools/dataset_converters/digits_to_folder.py OUT [--size 32] [--val-fraction 0.2]
                                                          [--limit N]
"""
import argparse
import os
import os.path as osp

import numpy as np
from PIL import Image


def write_digits_folder(out_dir, size=32, val_fraction=0.2, limit=None, seed=0):
    from sklearn.datasets import load_digits
    digits = load_digits()
    images, labels = digits.images, digits.target
    rng = np.random.RandomState(seed)
    counts = {'train': 0, 'val': 0}
    for label in range(10):
        index = np.flatnonzero(labels == label)
        rng.shuffle(index)
        n_val = int(round(len(index) * val_fraction))
        splits = {'val': index[:n_val], 'train': index[n_val:]}
        for split, idx in splits.items():
            if limit is not None:
                idx = idx[:limit]
            folder = osp.join(out_dir, split, str(label))
            os.makedirs(folder, exist_ok=True)
            for i in idx:
                pixels = (images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
                img = Image.fromarray(pixels, mode='L').resize((size, size), Image.BICUBIC)
                img.convert('RGB').save(osp.join(folder, f'{i:04d}.png'))
            counts[split] += len(idx)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir')
    parser.add_argument('--size', type=int, default=32)
    parser.add_argument('--val-fraction', type=float, default=0.2)
    parser.add_argument('--limit', type=int, help='at most this many images per class and split')
    args = parser.parse_args()
    if not 0 < args.val_fraction < 1:
        parser.error(f'--val-fraction must be in (0, 1), got {args.val_fraction}')
    counts = write_digits_folder(args.out_dir, args.size, args.val_fraction, args.limit)
    print(f"wrote {counts['train']} train and {counts['val']} val images to {args.out_dir}")


if __name__ == '__main__':
    main()
