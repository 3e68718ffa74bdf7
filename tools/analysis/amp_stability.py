"""fp16 mixed precision over a long run: an mmpretrain ImageClassifier with a VMamba backbone
trained through mmengine's AmpOptimWrapper (dynamic loss scale) on learnable data, counting the
steps the loss scaler skipped (gradient overflow) and any non-finite loss.

    python tools/analysis/amp_stability.py configs/vmamba/vmamba-tiny_8xb128_in1k.py \\
        --iters 2000 --batch 64 --size 112

The data are scikit-learn's handwritten digits (1797 images of 8 x 8, 10 classes, bundled with
scikit-learn) resized to ``--size``: small enough to generate in memory, hard enough that the
loss falls over thousands of steps. The config's backbone is trained from scratch with a
10-class head, AdamW (lr ``--lr``, weight decay 0.05) and gradient clipping at 5, as the
ImageNet recipe clips. Prints the loss every ``--log-every`` steps and a summary; ``--json``
writes it.
"""
import argparse
import json
import math
import os.path as osp
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _common  # noqa: E402


def digits_tensors(size):
    """(images (N, 3, size, size) float in [0, 255], labels (N,))."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] * (255 / 16)
    images = F.interpolate(images, size=(size, size), mode='bilinear', align_corners=False)
    return images.expand(-1, 3, -1, -1).contiguous(), torch.tensor(digits.target)


def build_classifier(config):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    cfg = _common.load_config(config)
    init_default_scope('mmpretrain')
    model_cfg = dict(
        type='ImageClassifier', backbone=dict(cfg.model.backbone, out_indices=(3, ),
                                              init_cfg=None),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=10, in_channels=None,
                  loss=dict(type='CrossEntropyLoss')),
        data_preprocessor=dict(type='ClsDataPreprocessor', num_classes=10, mean=[127.5] * 3,
                               std=[127.5] * 3))
    backbone = MODELS.build(model_cfg['backbone'])
    model_cfg['head']['in_channels'] = backbone.num_features[-1]
    return MODELS.build(model_cfg)


def run(config, iters=2000, batch=64, size=112, lr=1e-3, dtype='float16', seed=0,
        log_every=100, device=None):
    from mmengine.optim import AmpOptimWrapper
    from mmpretrain.structures import DataSample
    torch.manual_seed(seed)
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model = build_classifier(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    wrapper = AmpOptimWrapper(loss_scale='dynamic', dtype=dtype, optimizer=optimizer,
                              clip_grad=dict(max_norm=5.0))
    images, labels = digits_tensors(size)
    g = torch.Generator().manual_seed(seed)
    losses, skipped, non_finite, scales = [], [], 0, []
    for it in range(iters):
        idx = torch.randint(0, len(labels), (batch, ), generator=g)
        data = dict(inputs=list(images[idx].to(torch.uint8)),
                    data_samples=[DataSample().set_gt_label(int(y)) for y in labels[idx]])
        scale_before = wrapper.loss_scaler.get_scale() if it else None
        log = model.train_step(data, wrapper)
        loss = float(log['loss'].detach())
        scale_after = wrapper.loss_scaler.get_scale()
        if scale_before is not None and scale_after < scale_before:
            skipped.append(it)  # GradScaler lowers its scale exactly when it skips a step
        if not math.isfinite(loss):
            non_finite += 1
        losses.append(loss)
        scales.append(scale_after)
        if log_every and (it + 1) % log_every == 0:
            recent = losses[-log_every:]
            print(f'iter {it + 1}/{iters}: loss {sum(recent) / len(recent):.4f}, '
                  f'scale {scale_after:.0f}, skipped so far {len(skipped)}', flush=True)
    window = max(1, min(100, iters // 10))
    return dict(config=config, iters=iters, batch=batch, size=size, dtype=dtype,
                device=str(device), skipped_steps=len(skipped), skipped_at=skipped[:50],
                non_finite_losses=non_finite, first_loss=sum(losses[:window]) / window,
                last_loss=sum(losses[-window:]) / window, final_scale=scales[-1],
                min_scale=min(scales), max_scale=max(scales))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--iters', type=int, default=2000)
    parser.add_argument('--batch', type=int, default=64)
    parser.add_argument('--size', type=int, default=112)
    parser.add_argument('--lr', type=float, default=1e-3)
    parser.add_argument('--dtype', default='float16', choices=['float16', 'bfloat16'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--log-every', type=int, default=100)
    parser.add_argument('--device')
    parser.add_argument('--json')
    args = parser.parse_args(argv)
    result = run(args.config, args.iters, args.batch, args.size, args.lr, args.dtype, args.seed,
                 args.log_every, args.device)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == '__main__':
    main()
