"""Build a small ADE20K-format semantic segmentation dataset from scikit-learn's bundled digits
(no download): 1-4 upscaled digits pasted on black canvases without overlapping, every pixel
labelled.

ADE20K's reduce-zero-label convention: annotation value 0 is "ignore", value 1 is 'background',
value d + 2 is digit d; with ``reduce_zero_label=True`` mmseg maps them to 255 (ignored), 0 and
d + 1. A digit's label covers its ink grown by ``--fill`` (a fraction of the digit's side; the
strokes and the gaps between them, as an object mask would) and a one-pixel ring around that is
ignored. With ``--fill 0`` only the ink is labelled and its soft edge (neither clearly ink nor
background) is ignored: thin strokes, about 5% of the pixels, on which the digits' identity was
not learned in 800 iterations (README, segmentation).

    python tools/dataset_converters/digits_to_ade.py OUT [--train 300] [--val 60] [--size 96]
        [--digit-side 0.333 0.5] [--fill 0.1]

Writes OUT/images/{training,validation}/*.png and OUT/annotations/{training,validation}/*.png.
"""
import argparse
import os
import os.path as osp

import cv2
import numpy as np

try:  # imported as tools' dataset_converters package (tests) or run as a script
    from .digits_to_coco import pick_digit
except ImportError:
    from digits_to_coco import pick_digit

CLASSES = ('background', ) + tuple(str(i) for i in range(10))
PALETTE = [[0, 0, 0]] + [[int(c) for c in cv2.applyColorMap(np.uint8([[25 * i + 20]]),
                                                          cv2.COLORMAP_JET)[0, 0][::-1]]
                         for i in range(10)]
INK, EDGE = 100, 30  # pixel values: >= INK is the digit, (EDGE, INK) is ignored


def label_digit(label, digit, y, x, value, fill):
    """Write digit ``value`` into ``label`` (background 1 elsewhere) for a digit image pasted at
    (y, x): its ink grown by ``fill`` x its side, then an ignored ring; only over background, so
    neighbouring digits keep their own labels. ``fill`` 0: the ink, its soft edge ignored."""
    side = digit.shape[0]
    if fill == 0:
        patch = label[y:y + side, x:x + side]
        patch[(digit > EDGE) & (digit < INK)] = 0
        patch[digit >= INK] = value
        return
    ink = np.zeros(label.shape, np.uint8)
    ink[y:y + side, x:x + side] = digit >= INK
    radius = max(1, int(round(side * fill)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    region = cv2.dilate(ink, disk).astype(bool)
    ring = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~region
    label[region & (label == 1)] = value
    label[ring & (label == 1)] = 0


def make_split(images, labels, num_images, size, rng, out_dir, split, sides, fill):
    img_dir = osp.join(out_dir, 'images', split)
    ann_dir = osp.join(out_dir, 'annotations', split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    for idx in range(num_images):
        canvas = np.zeros((size, size), np.uint8)
        label = np.ones((size, size), np.uint8)  # 1 = background
        occupied = np.zeros((size, size), bool)
        for _ in range(rng.randint(1, 5)):
            # digits never overlap: an overlap shows two digits' ink under one digit's label
            picked = pick_digit(images, occupied, sides, rng)
            if picked is None:
                continue
            k, digit, y, x = picked
            side = digit.shape[0]
            occupied[y:y + side, x:x + side] = True
            label_digit(label, digit, y, x, labels[k] + 2, fill)
            canvas[y:y + side, x:x + side] = np.maximum(canvas[y:y + side, x:x + side], digit)
        cv2.imwrite(osp.join(img_dir, f'{idx:05d}.png'), cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
        cv2.imwrite(osp.join(ann_dir, f'{idx:05d}.png'), label)


def write_digits_ade(out_dir, num_train=300, num_val=60, size=96, seed=0,
                     digit_side=(1 / 3, 1 / 2), fill=0.1):
    """``digit_side``: the range of a digit's side as fractions of the canvas side; ``fill``:
    how far a digit's label extends around its ink, as a fraction of its side (0: the ink)."""
    lo, hi = digit_side
    if not 0 < lo <= hi <= 0.5:
        raise ValueError(f'digit_side must be fractions 0 < lo <= hi <= 0.5, got {digit_side}')
    if not 0 <= fill <= 0.5:
        raise ValueError(f'fill must be a fraction of the digit side in [0, 0.5], got {fill}')
    sides = (max(8, int(size * lo)), max(8, int(size * hi)))
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(digits.images))
    cut = int(len(order) * 0.8)  # disjoint digit images for training and validation
    for split, idx, num in (('training', order[:cut], num_train),
                            ('validation', order[cut:], num_val)):
        make_split(digits.images[idx], digits.target[idx], num, size, rng, out_dir, split, sides,
                   fill)
    return dict(training=num_train, validation=num_val)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir')
    parser.add_argument('--train', type=int, default=300)
    parser.add_argument('--val', type=int, default=60)
    parser.add_argument('--size', type=int, default=96)
    parser.add_argument('--digit-side', type=float, nargs=2, default=(1 / 3, 1 / 2),
                        metavar=('LO', 'HI'), help='digit side range, fractions of --size')
    parser.add_argument('--fill', type=float, default=0.1,
                        help="a digit's label around its ink, fraction of its side (0: ink only)")
    args = parser.parse_args()
    if args.size < 32:
        parser.error(f'--size must be at least 32, got {args.size}')
    print(write_digits_ade(args.out_dir, args.train, args.val, args.size,
                           digit_side=tuple(args.digit_side), fill=args.fill))


if __name__ == '__main__':
    main()
