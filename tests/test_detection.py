"""Detection pipeline: configs build, small config trains and evaluates with the real CocoMetric
(pycocotools) and mmcv ops, predictions drawn, VMamba outputs feed FPN at odd sizes."""
import glob
import os.path as osp
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
DET_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs/mask_rcnn/*_coco.py')))
DIGITS = osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_vmamba-nano_fpn_digits.py')


def test_there_are_1x_and_3x_configs_for_every_arch():
    names = {osp.basename(p) for p in DET_CONFIGS}
    for arch in ('tiny', 'small', 'base', 'v0-tiny'):
        for sched in ('1x', 'ms-3x'):
            assert f'mask-rcnn_vmamba-{arch}_fpn_{sched}_coco.py' in names


@pytest.mark.parametrize('path', DET_CONFIGS, ids=osp.basename)
def test_config_parses_and_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmdet'
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.train_cfg.max_epochs == (36 if 'ms-3x' in path else 12)
    from mmdet.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
    assert list(model.neck.in_channels) == model.backbone.dims


@pytest.mark.parametrize('size', [(100, 150), (77, 45)])
def test_backbone_feeds_fpn_at_sizes_not_multiple_of_32(size):
    from mmdet.registry import MODELS
    from mmvmamba.models import VMamba
    backbone = VMamba(dict(dims=16, depths=(1, 1, 1, 1)), out_indices=(0, 1, 2, 3)).eval()
    with DefaultScope.overwrite_default_scope('mmdet'):
        fpn = MODELS.build(dict(type='FPN', in_channels=[16, 32, 64, 128], out_channels=8,
                                num_outs=5)).eval()
    with torch.no_grad():
        outs = fpn(backbone(torch.randn(1, 3, *size)))
    h, w = size
    for out in outs:
        h, w = (h + 3) // 4 if out is outs[0] else (h + 1) // 2, (w + 3) // 4 if out is outs[
            0] else (w + 1) // 2
        assert out.shape[-2:] == (h, w) and torch.isfinite(out).all()


def test_roi_features_of_the_backbone_are_read_correctly_by_mmcv_roi_align():
    # mmcv's RoIAlign reads its input as contiguous NCHW whatever its strides; a channels-last
    # map (a permuted LayerNorm's output) gave garbage RoI features and a head that never learned
    from mmcv.ops import roi_align
    from mmvmamba.models import VMamba
    backbone = VMamba(dict(dims=8, depths=(1, 1, 1, 1)), out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 48))
    rois = torch.tensor([[0., 4., 6., 40., 30.]])
    for feat in feats:
        assert feat.is_contiguous()
        direct = roi_align(feat, rois, (3, 3), 0.25, 2, 'avg', True)
        reference = roi_align(feat.clone(memory_format=torch.contiguous_format), rois, (3, 3),
                              0.25, 2, 'avg', True)
        assert torch.equal(direct, reference)


def test_small_config_trains_and_evaluates_with_coco_metric(tmp_path):
    import test as test_tool
    import train as train_tool
    from dataset_converters.digits_to_coco import write_digits_coco
    data = tmp_path / 'digits_coco'
    counts = write_digits_coco(str(data), num_train=8, num_val=4, size=64)
    assert counts['train'][0] == 8 and counts['val'][0] == 4
    work = tmp_path / 'work'
    opts = ['--work-dir', str(work), '--cfg-options', f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}', f'test_dataloader.dataset.data_root={data}',
            f'val_evaluator.ann_file={data}/annotations/instances_val.json',
            f'test_evaluator.ann_file={data}/annotations/instances_val.json',
            'model.backbone.init_cfg=None',  # no digits classifier checkpoint in CI
            'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False']
    train_tool.main([DIGITS] + opts + ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                                       'default_hooks.checkpoint.interval=1'])
    ckpt = work / 'epoch_1.pth'
    assert ckpt.exists()
    metrics = test_tool.main([DIGITS, str(ckpt), '--out', str(tmp_path / 'dets.pkl'),
                              '--show-dir', 'vis'] + opts)
    assert 'coco/bbox_mAP' in metrics and 'coco/segm_mAP' in metrics
    assert (tmp_path / 'dets.pkl').exists()
    drawn = glob.glob(str(work / '*' / 'vis' / '*.png'))
    assert len(drawn) == 4
