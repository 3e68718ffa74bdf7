"""The install itself: the real OpenMMLab stack imports, its registries are reachable from
mmvmamba, and mmcv's compiled ops run on CPU and agree with a direct computation."""
import importlib

import pytest
import torch


@pytest.mark.parametrize('name,version', [('mmcv', '2.1.0'), ('mmdet', '3.3.0'),
                                          ('mmseg', '1.2.2'), ('mmpretrain', '1.2.0')])
def test_openmmlab_libraries_import(name, version):
    module = importlib.import_module(name)
    assert module.__version__ == version
    importlib.import_module(f'{name}.models' if name != 'mmcv' else 'mmcv.ops')


def test_mmcv_is_the_full_build_with_compiled_ops():
    from mmcv.utils import ext_loader
    ext = ext_loader.load_ext('_ext', ['nms', 'roi_align_forward'])
    assert hasattr(ext, 'nms')


def test_registries_are_children_of_the_root_mmvmamba_registers_in():
    from mmdet.registry import MODELS as DET
    from mmpretrain.registry import MODELS as CLS
    from mmseg.registry import MODELS as SEG

    from mmvmamba.registry import MODELS
    for child in (DET, SEG, CLS):
        assert child.parent is MODELS
    # each library builds its own modules through its scope
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmdet'):
        fpn = DET.build(dict(type='FPN', in_channels=[8, 16], out_channels=4, num_outs=2))
    with DefaultScope.overwrite_default_scope('mmseg'):
        head = SEG.build(dict(type='FCNHead', in_channels=8, channels=4, num_classes=3))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        neck = CLS.build(dict(type='GlobalAveragePooling'))
    assert fpn.__class__.__name__ == 'FPN' and head.num_classes == 3
    assert neck(torch.ones(2, 3, 4, 4)).shape == (2, 3)


def _greedy_nms(boxes, scores, thr):
    order = scores.argsort(descending=True).tolist()
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            lt = torch.max(boxes[i, :2], boxes[j, :2])
            rb = torch.min(boxes[i, 2:], boxes[j, 2:])
            inter = (rb - lt).clamp(min=0).prod()
            area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
            if inter / (area(boxes[i]) + area(boxes[j]) - inter) <= thr:
                rest.append(j)
        order = rest
    return keep


def test_mmcv_nms_on_cpu_matches_greedy_nms():
    from mmcv.ops import nms
    xy = torch.rand(60, 2) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2) * 20], 1)
    scores = torch.rand(60)
    dets, keep = nms(boxes, scores, 0.4)
    assert keep.tolist() == _greedy_nms(boxes, scores, 0.4)
    assert torch.equal(dets[:, 4], scores[keep])


def _bilinear(feat, y, x):
    h, w = feat.shape[-2:]
    y0, x0 = int(y // 1), int(x // 1)
    ly, lx = y - y0, x - x0
    v = lambda yy, xx: feat[:, min(yy, h - 1), min(xx, w - 1)]  # noqa: E731
    return ((1 - ly) * (1 - lx) * v(y0, x0) + (1 - ly) * lx * v(y0, x0 + 1) +
            ly * (1 - lx) * v(y0 + 1, x0) + ly * lx * v(y0 + 1, x0 + 1))


def test_mmcv_roi_align_on_cpu_matches_direct_bilinear_sampling():
    from mmcv.ops import RoIAlign
    feat = torch.rand(1, 3, 20, 24, dtype=torch.float64)
    rois = torch.tensor([[0, 8.0, 6.0, 30.0, 28.0], [0, 12.0, 4.0, 40.0, 20.0]],
                        dtype=torch.float64)
    out = RoIAlign((3, 4), spatial_scale=0.5, sampling_ratio=1, aligned=True)(feat, rois)
    for r, roi in enumerate(rois):
        x1, y1, x2, y2 = (roi[1:] * 0.5 - 0.5).tolist()
        bh, bw = (y2 - y1) / 3, (x2 - x1) / 4
        for i in range(3):
            for j in range(4):
                expected = _bilinear(feat[0], y1 + (i + 0.5) * bh, x1 + (j + 0.5) * bw)
                assert torch.allclose(out[r, :, i, j], expected, atol=1e-12)


def test_torchvision_glue_only_provides_what_mmpretrain_imports():
    import torchvision
    from torchvision.ops import boxes

    from mmvmamba.compat import TORCHVISION_SHIM
    if torchvision.__version__ != TORCHVISION_SHIM:
        pytest.skip('a real torchvision is installed; the glue is not in use')
    b = torch.tensor([[0., 0., 2., 2.], [1., 1., 3., 3.]])
    assert torch.allclose(boxes.box_iou(b, b)[0, 1], torch.tensor(1 / 7))
    assert torch.allclose(boxes.generalized_box_iou(b, b)[0, 1], torch.tensor(1 / 7 - 2 / 9))
    with pytest.raises(NotImplementedError, match='torchvision'):
        torchvision.transforms.functional.resized_crop(None, 0, 0, 1, 1, 1)


def test_mmengine_deterministic_randomness_keeps_the_scan_reproducible():
    # the README: randomness=dict(deterministic=True) switches the scan backward's atomic dB / dC
    # sums off (mmengine calls torch.use_deterministic_algorithms)
    from mmengine.runner import set_random_seed
    from vmamba_kernels.ss2d_n1 import n1_launch_config
    before = torch.are_deterministic_algorithms_enabled()
    try:
        set_random_seed(0, deterministic=False)
        torch.use_deterministic_algorithms(False)
        assert n1_launch_config(3136)[1]['atomic_sums'] is True
        set_random_seed(0, deterministic=True)
        assert n1_launch_config(3136)[1]['atomic_sums'] is False
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.deterministic = False
