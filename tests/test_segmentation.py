"""Segmentation pipeline: configs build, small config trains and evaluates with IoUMetric,
TTA and coloured predictions, sliding-window and whole-image inference at odd sizes."""
import glob
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
SEG_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs/upernet/*_ade20k-512x512.py')))
DIGITS = osp.join(ROOT, 'configs/upernet/upernet_vmamba-nano_digits-96x96.py')


def test_configs_for_every_arch():
    names = {osp.basename(p) for p in SEG_CONFIGS}
    for arch in ('tiny', 'small', 'base', 'v0-tiny'):
        assert f'upernet_vmamba-{arch}_8xb2-160k_ade20k-512x512.py' in names


@pytest.mark.parametrize('path', SEG_CONFIGS, ids=osp.basename)
def test_config_parses_and_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmseg'
    assert cfg.optim_wrapper.optimizer.lr == 6e-5
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.01
    assert cfg.train_cfg.max_iters == 160000 and cfg.param_scheduler[0].end == 1500
    assert cfg.train_dataloader.batch_size * 8 == 16 and cfg.crop_size == (512, 512)
    assert 'tta_model' in cfg and 'tta_pipeline' in cfg
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
    dims = model.backbone.dims
    assert list(model.decode_head.in_channels) == dims
    assert model.auxiliary_head.in_channels == dims[2]


@pytest.mark.parametrize('mode', ['whole', 'slide'])
@pytest.mark.parametrize('size', [(70, 90), (45, 33)])
def test_whole_and_sliding_window_inference_at_odd_sizes(mode, size):
    cfg = Config.fromfile(DIGITS)
    from mmseg.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model).eval()
    from mmengine.config import ConfigDict
    model.test_cfg = ConfigDict(mode='whole') if mode == 'whole' else ConfigDict(
        mode='slide', crop_size=(40, 40), stride=(24, 24))
    metas = [dict(img_shape=size, ori_shape=size, pad_shape=size)]
    with torch.no_grad():
        logits = model.inference(torch.randn(1, 3, *size), metas)
    assert logits.shape == (1, 11, *size) and torch.isfinite(logits).all()


def test_small_config_trains_and_evaluates_with_iou_metric(tmp_path):
    import test as test_tool
    import train as train_tool
    from dataset_converters.digits_to_ade import write_digits_ade
    data = tmp_path / 'digits_ade'
    write_digits_ade(str(data), num_train=4, num_val=3, size=64)
    work = tmp_path / 'work'
    opts = ['--work-dir', str(work), '--cfg-options', f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}', f'test_dataloader.dataset.data_root={data}',
            'model.backbone.init_cfg=None',  # no digits classifier checkpoint in CI
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
            'train_dataloader.batch_size=2']
    train_tool.main([DIGITS] + opts + ['train_cfg.max_iters=2', 'train_cfg.val_interval=2',
                                       'default_hooks.checkpoint.interval=2'])
    ckpt = work / 'iter_2.pth'
    assert ckpt.exists()
    # train and test share this process: a fresh visualizer name, as a separate CLI run has
    metrics = test_tool.main([DIGITS, str(ckpt), '--show-dir', 'vis'] + opts +
                             ['visualizer.name=show_dir_run'])
    assert {'aAcc', 'mIoU'} <= set(metrics) and 0 <= metrics['mIoU'] <= 100
    drawn = glob.glob(str(work / 'vis' / '**' / '*.png'), recursive=True)
    assert len(drawn) == 3
    tta = test_tool.main([DIGITS, str(ckpt), '--tta'] + opts)
    assert 0 <= tta['mIoU'] <= 100


@pytest.mark.parametrize('fill', [0.0, 0.1])
def test_digit_labels_cover_the_ink_grown_by_fill(fill):
    import cv2
    import numpy as np
    from dataset_converters.digits_to_ade import EDGE, INK, label_digit
    rng = np.random.RandomState(3)
    digit = (rng.rand(30, 30) * 255).astype(np.uint8)
    digit[:, :4] = 0  # a blank margin, as the upscaled 8x8 digits have
    label = np.ones((60, 60), np.uint8)
    label[0, 0] = 5  # another digit's pixel, far from this one: kept
    label_digit(label, digit, 10, 20, 7, fill)
    box = label[10:40, 20:50]
    assert (box[digit >= INK] == 7).all() and label[0, 0] == 5
    if fill == 0:
        assert (box[(digit > EDGE) & (digit < INK)] == 0).all()
        assert (label == 7).sum() == (digit >= INK).sum()
    else:  # the ink grown by round(0.1 * 30) = 3 pixels, then a one-pixel ignored ring
        ink = np.zeros((60, 60), np.uint8)
        ink[10:40, 20:50] = digit >= INK
        grown = cv2.dilate(ink, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
        assert ((label == 7) == grown).all()
        assert (label[0:60, 10:18] == 1).all()  # background beyond the ring
        assert (label == 0).any()


def test_converter_rejects_bad_fill(tmp_path):
    from dataset_converters.digits_to_ade import write_digits_ade
    with pytest.raises(ValueError, match='fill'):
        write_digits_ade(str(tmp_path), num_train=1, num_val=1, size=64, fill=0.7)
