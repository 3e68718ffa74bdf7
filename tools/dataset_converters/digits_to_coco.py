"""Build a small COCO-format instance-segmentation dataset from scikit-learn's bundled digits
(no download): 1-3 upscaled digits pasted on each black canvas; each instance's box is the tight
box of its pixels and its mask is the polygon outline of those pixels; 10 categories '0'..'9'.

    python tools/dataset_converters/digits_to_coco.py OUT [--train 300] [--val 100] [--size 96]

Writes OUT/{train,val}/*.png and OUT/annotations/instances_{train,val}.json.
"""
import argparse
import json
import os
import os.path as osp

import cv2
import numpy as np

CLASSES = tuple(str(i) for i in range(10))


def _place(canvas_mask, h, w, rng, tries=50):
    size = canvas_mask.shape[0]
    for _ in range(tries):
        y, x = rng.randint(0, size - h + 1), rng.randint(0, size - w + 1)
        if not canvas_mask[max(0, y - 2):y + h + 2, max(0, x - 2):x + w + 2].any():
            return y, x
    return None


def pick_digit(images, occupied, sides, rng):
    """Draw a digit image and a side length in ``sides`` (inclusive range), upscale the digit to
    0-255 and find it a free spot on ``occupied`` (not marked). Returns (index, digit, y, x) or
    None when no spot was found. Both dataset converters use it, so their random draws come in
    the same order."""
    k = rng.randint(len(images))
    side = rng.randint(sides[0], sides[1] + 1)
    digit = cv2.resize((images[k] * 255 / 16).astype(np.uint8), (side, side),
                       interpolation=cv2.INTER_CUBIC)
    spot = _place(occupied, side, side, rng)
    return None if spot is None else (k, digit) + spot


def make_split(images, labels, num_images, size, rng, out_dir, split, start_id):
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    coco = dict(images=[], annotations=[],
                categories=[dict(id=i, name=name) for i, name in enumerate(CLASSES)])
    ann_id = start_id
    for img_id in range(num_images):
        canvas = np.zeros((size, size), np.uint8)
        occupied = np.zeros((size, size), bool)
        for _ in range(rng.randint(1, 4)):
            picked = pick_digit(images, occupied, (size // 5, size // 3), rng)
            if picked is None:
                continue
            k, digit, y, x = picked
            side = digit.shape[0]
            mask = np.zeros((size, size), np.uint8)
            mask[y:y + side, x:x + side] = digit > 80
            if mask.sum() < 8:
                continue
            canvas[y:y + side, x:x + side] = np.maximum(canvas[y:y + side, x:x + side], digit)
            occupied[y:y + side, x:x + side] = True
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
            ys, xs = np.nonzero(mask)
            x0, y0 = float(xs.min()), float(ys.min())
            coco['annotations'].append(dict(
                id=ann_id, image_id=img_id, category_id=int(labels[k]), segmentation=polygons,
                area=float(mask.sum()), bbox=[x0, y0, float(xs.max()) + 1 - x0,
                                              float(ys.max()) + 1 - y0], iscrowd=0))
            ann_id += 1
        name = f'{split}/{img_id:05d}.png'
        cv2.imwrite(osp.join(out_dir, name), cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
        coco['images'].append(dict(id=img_id, file_name=name, height=size, width=size))
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    with open(osp.join(out_dir, 'annotations', f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f)
    return len(coco['images']), len(coco['annotations'])


def write_digits_coco(out_dir, num_train=300, num_val=100, size=96, seed=0):
    from sklearn.datasets import load_digits
    digits = load_digits()
    rng = np.random.RandomState(seed)
    order = rng.permutation(len(digits.images))
    cut = int(len(order) * 0.8)  # train and val canvases use disjoint digit images
    counts = {}
    for split, idx, num in (('train', order[:cut], num_train), ('val', order[cut:], num_val)):
        counts[split] = make_split(digits.images[idx], digits.target[idx], num, size, rng,
                                   out_dir, split, start_id=1)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dir')
    parser.add_argument('--train', type=int, default=300)
    parser.add_argument('--val', type=int, default=100)
    parser.add_argument('--size', type=int, default=96)
    args = parser.parse_args()
    if args.size < 32:
        parser.error(f'--size must be at least 32, got {args.size}')
    for split, (n_img, n_ann) in write_digits_coco(args.out_dir, args.train, args.val,
                                                   args.size).items():
        print(f'{split}: {n_img} images, {n_ann} instances')


if __name__ == '__main__':
    main()
