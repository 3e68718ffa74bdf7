"""Tests that need a CUDA GPU (marker ``gpu``; skipped where there is none, run by
``make test-gpu``): the Triton scan and LayerNorm against float64 references, and detection /
segmentation training steps that go through mmcv's CUDA ops under fp16 autocast."""
import math
import os
import os.path as osp
import sys

import pytest
import torch

pytestmark = pytest.mark.gpu

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))


def _interpreted():
    return os.environ.get('TRITON_INTERPRET') == '1'


@pytest.fixture(autouse=True)
def compiled_triton():
    if _interpreted():
        pytest.skip('TRITON_INTERPRET=1 runs Triton on the CPU; run the gpu tests with '
                    'TRITON_INTERPRET=0 (make test-gpu)')


@pytest.mark.parametrize('shape', [(2, 24, 9, 11, 3, 1), (1, 96, 56, 56, 6, 1),
                                   (2, 20, 7, 5, 4, 4), (2, 384, 14, 14, 24, 1)])
def test_triton_scan_on_cuda_matches_float64(shape):
    from .kernels.naive import naive_ss2d
    from .kernels.test_ss2d_scan import forward_and_grads, make_inputs, rel_err
    import vmamba_kernels as vk
    inputs = make_inputs(*shape, seed=1)
    grad = torch.randn(inputs['x'].shape, dtype=torch.float64)
    if shape[2] * shape[3] > 1000:  # the step-by-step reference is too slow there
        ref_fn = lambda **kw: vk.ss2d_scan_chunked(**kw)  # noqa: E731
    else:
        ref_fn = naive_ss2d
    y_ref, g_ref = forward_and_grads(ref_fn, {k: v.double() for k, v in inputs.items()}, grad)
    cuda = {k: v.cuda() for k, v in inputs.items()}
    y, g = forward_and_grads(lambda **kw: vk.ss2d_scan(**kw, backend='triton'), cuda,
                             grad.cuda())
    assert y.is_cuda and rel_err(y.cpu(), y_ref) < 1e-5
    for name, ref in g_ref.items():
        assert rel_err(g[name].cpu(), ref) < 1e-4, name


def test_layer_norm_2d_on_cuda_matches_float64():
    import vmamba_kernels as vk
    x = torch.randn(3, 200, 13, 17)
    w, b = torch.randn(200), torch.randn(200)
    ref = torch.nn.functional.layer_norm(x.double().permute(0, 2, 3, 1), (200, ), w.double(),
                                         b.double()).permute(0, 3, 1, 2)
    out = vk.layer_norm_2d(x.cuda(), w.cuda(), b.cuda(), backend='triton')
    assert (out.cpu().double() - ref).abs().max() < 1e-4


def test_mmcv_ops_run_on_cuda():
    from mmcv.ops import nms, roi_align
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]]).cuda()
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]).cuda(), 0.5)
    assert keep.is_cuda and keep.tolist() == [0, 2]
    feat = torch.randn(1, 4, 16, 16)
    rois = torch.tensor([[0., 2., 3., 12., 10.]])
    on_gpu = roi_align(feat.cuda(), rois.cuda(), (3, 3), 1.0, 2, 'avg', True)
    on_cpu = roi_align(feat, rois, (3, 3), 1.0, 2, 'avg', True)
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5)


@pytest.mark.parametrize('task', ['det', 'seg'])
def test_downstream_training_steps_under_fp16_autocast(task):
    import downstream_steps as ds
    if task == 'det':
        data, path = ds.detection_batch(2, 320, 480), ds.DET_CONFIGS[0]
    else:
        data, path = ds.segmentation_batch(2, 256, 256), ds.SEG_CONFIGS[0]
    row = ds.measure(path, data, amp='fp16', warmup=1, repeats=2)
    assert row['losses'] and all(math.isfinite(v) for v in row['losses'].values()), row
    assert row['peak_gib'] > 0 and row['infer_img_s'] > 0
