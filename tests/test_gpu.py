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


def _check_on_cuda_against_float64(fn, shape, seed, reference, channels_last_x=False):
    """``fn`` on the GPU (x stored channels-last with ``channels_last_x``) against
    ``reference`` in float64, on ``make_inputs(*shape, seed)``: the output within 1e-5, every
    gradient within 1e-4. Returns the GPU inputs and the reference output."""
    from .kernels.test_ss2d_scan import forward_and_grads, make_inputs, rel_err
    inputs = make_inputs(*shape, seed=seed)
    grad = torch.randn(inputs['x'].shape, dtype=torch.float64)
    y_ref, g_ref = forward_and_grads(reference, {k: v.double() for k, v in inputs.items()},
                                     grad)
    cuda = {k: v.cuda() for k, v in inputs.items()}
    if channels_last_x:
        cuda['x'] = cuda['x'].contiguous(memory_format=torch.channels_last)
    y, g = forward_and_grads(fn, cuda, grad.cuda())
    assert y.is_cuda and rel_err(y.cpu(), y_ref) < 1e-5
    for name, ref in g_ref.items():
        assert rel_err(g[name].cpu(), ref) < 1e-4, name
    return cuda, y_ref


@pytest.mark.parametrize('shape', [(2, 24, 9, 11, 3, 1), (1, 96, 56, 56, 6, 1),
                                   (2, 20, 7, 5, 4, 4), (2, 384, 14, 14, 24, 1)])
def test_triton_scan_on_cuda_matches_float64(shape):
    from .kernels.naive import naive_ss2d
    import vmamba_kernels as vk
    # the step-by-step reference is too slow above 1000 positions
    reference = vk.ss2d_scan_chunked if shape[2] * shape[3] > 1000 else naive_ss2d
    _check_on_cuda_against_float64(lambda **kw: vk.ss2d_scan(**kw, backend='triton'), shape, 1,
                                   reference)


def _check_chunked_n1_on_cuda(shape, seed, **options):
    """``ss2d_scan_n1`` with ``options`` on the GPU against the float64 chunked reference."""
    import vmamba_kernels as vk
    from vmamba_kernels.ss2d_n1 import ss2d_scan_n1
    _check_on_cuda_against_float64(lambda **kw: ss2d_scan_n1(**kw, **options), shape, seed,
                                   vk.ss2d_scan_chunked)


@pytest.mark.parametrize('shape,segments', [((1, 96, 100, 167, 6, 1), 16),
                                            ((2, 24, 9, 111, 3, 1), 5)])
def test_segmented_scan_on_cuda_matches_float64(shape, segments):
    # long walks split into segments (compiled kernels; stage 1 of Mask R-CNN at half its
    # 800 x 1333 size, and an uneven split) against float64
    _check_chunked_n1_on_cuda(shape, 3, transpose_columns=True, segments=segments,
                              bwd_segments=segments)


@pytest.mark.parametrize('shape,caps', [((1, 96, 56, 56, 6, 1), dict(maxnreg=32, bwd_maxnreg=72)),
                                         ((2, 384, 14, 14, 24, 1), dict(bwd_maxnreg=56))])
def test_register_capped_scan_on_cuda_matches_float64(shape, caps):
    # kernels compiled under a register cap low enough to spill (sm_90: the stage-1 backward
    # keeps 64 bytes per thread in local memory at 72 registers) against float64
    _check_chunked_n1_on_cuda(shape, 4, **caps)


@pytest.mark.parametrize('shape,options', [((2, 96, 56, 56, 6, 1), {}),
                                           ((2, 384, 14, 14, 24, 1), {}),
                                           ((2, 384, 14, 14, 24, 1), dict(bwd_sum_rows=6)),
                                           ((1, 96, 100, 167, 6, 1), dict(bwd_segments=7))])
def test_atomic_channel_sums_on_cuda_match_float64(shape, options):
    # dB / dC summed over channel blocks by float32 atomics (compiled kernels: REDG) against
    # float64, at stage-1 and stage-3 shapes (into one row and into six), segmented walks
    _check_chunked_n1_on_cuda(shape, 5, bwd_atomic_sums=True, **options)


def test_scan_backward_bitwise_deterministic_on_cuda_when_asked():
    # the default backward sums dB / dC with atomics; under torch.use_deterministic_algorithms
    # (mmengine's randomness=dict(deterministic=True)) it keeps per-block rows: two runs equal
    import vmamba_kernels as vk
    from .kernels.test_ss2d_scan import PARAMS, forward_and_grads, make_inputs
    inputs = {k: v.cuda() for k, v in make_inputs(4, 96, 56, 56, 6, 1, seed=6).items()}
    grad = torch.randn(inputs['x'].shape, device='cuda')
    fn = lambda **kw: vk.ss2d_scan(**kw, backend='triton')  # noqa: E731
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        runs = [forward_and_grads(fn, inputs, grad) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(before)
    for y, g in runs[1:]:
        assert torch.equal(y, runs[0][0])
        for name in PARAMS:
            assert torch.equal(g[name], runs[0][1][name]), name


@pytest.mark.parametrize('shape', [(2, 384, 14, 14, 24, 1), (2, 768, 7, 7, 48, 1),
                                   (1, 192, 28, 28, 12, 1), (2, 24, 9, 11, 3, 1)])
def test_whole_map_scan_on_cuda_matches_float64(shape):
    # the opt-in whole-map kernels (compiled, real VMamba stage shapes) against float64
    from .kernels.naive import naive_ss2d
    from vmamba_kernels.ss2d_n1 import ss2d_scan_n1
    _check_on_cuda_against_float64(lambda **kw: ss2d_scan_n1(**kw, whole_map=True), shape, 2,
                                   naive_ss2d)


@pytest.mark.parametrize('shape', [(2, 384, 14, 14, 24, 1), (2, 768, 7, 7, 48, 1),
                                   (1, 40, 9, 23, 3, 1)])
def test_channels_last_scan_on_cuda_matches_float64(shape):
    # the channels-last kernels (compiled; VMamba-T stages 3 and 4, a map walked by columns with
    # a part-filled channel block), x stored channels-last as SS2D hands it over: forward and
    # backward at the training tile (opt-in), the forward alone at the inference tile (default)
    from .kernels.naive import naive_ss2d
    from .kernels.test_ss2d_scan import rel_err
    from vmamba_kernels.ss2d_n1 import ss2d_scan_n1
    fn = lambda **kw: ss2d_scan_n1(**kw, channels_last=True)  # noqa: E731
    cuda, y_ref = _check_on_cuda_against_float64(fn, shape, 7, naive_ss2d, channels_last_x=True)
    with torch.no_grad():
        y_inference = fn(**{k: v.detach() for k, v in cuda.items()})
    assert rel_err(y_inference.cpu(), y_ref) < 1e-5


@pytest.mark.parametrize('out_dtype', [None, torch.float16])
def test_layer_norm_2d_from_output_on_cuda(out_dtype):
    # memory_efficient_norm's kernel: gradients from the output as from the input
    import vmamba_kernels as vk
    x = torch.randn(3, 200, 13, 17, device='cuda').contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(200, device='cuda') * 0.5 + 1, torch.randn(200, device='cuda')
    grad = torch.randn(x.shape, device='cuda')
    grads = []
    for save_output in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (x, w, b)]
        y = vk.layer_norm_2d(*leaves, backend='triton', out_dtype=out_dtype,
                             channels_last_out=True, save_output=save_output)
        y.backward(grad.to(y.dtype))
        grads.append([t.grad for t in leaves])
    tol = 1e-5 if out_dtype is None else 1e-2
    for a, c in zip(*grads):
        assert ((a - c).abs().max() / c.abs().max()).item() < tol


def test_layer_norm_2d_on_cuda_matches_float64():
    import vmamba_kernels as vk
    x = torch.randn(3, 200, 13, 17)
    w, b = torch.randn(200), torch.randn(200)
    ref = torch.nn.functional.layer_norm(x.double().permute(0, 2, 3, 1), (200, ), w.double(),
                                         b.double()).permute(0, 3, 1, 2)
    out = vk.layer_norm_2d(x.cuda(), w.cuda(), b.cuda(), backend='triton')
    assert (out.cpu().double() - ref).abs().max() < 1e-4


def _compiled_norm_grads_vs_float64(device, layout, in_dtype, conv_first):
    """Largest relative difference (max abs / max abs of the reference) between the gradients of
    a compiled LayerNorm2d (optionally after a 3x3 stride-2 convolution, as in the model's stem
    and downsampling) under fp16 autocast and a float64 eager copy on the same input, for the
    input and the norm's weight and bias."""
    import copy
    from mmvmamba.models.utils.layers import LayerNorm2d
    torch.manual_seed(0)
    channels = 64
    model = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, 2, 1),
                                LayerNorm2d(channels)).to(device)
    if not conv_first:
        model = model[1:]
    norm = model[-1]
    with torch.no_grad():
        norm.weight.add_(torch.randn(channels, device=device) * 0.3)
        norm.bias.add_(torch.randn(channels, device=device) * 0.3)
    # float64 runs the torch path, on the CPU (the Triton kernels take float32 and half only)
    reference = copy.deepcopy(model).double().cpu()
    x = torch.randn(2, channels, 32, 32, device=device).to(in_dtype)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last)
    side = 16 if conv_first else 32
    probe = torch.randn(2, channels, side, side, device=device, dtype=torch.float64)

    def grads(fn, module, inp, amp, probe):
        inp = inp.detach().requires_grad_(True)
        with torch.autocast(inp.device.type, dtype=torch.float16, enabled=amp):
            out = fn(inp)
        (out.double() * probe).sum().mul(1024.).backward()
        return [t.grad.double() / 1024. for t in (inp, module[-1].weight, module[-1].bias)]

    ref = grads(reference, reference, x.double().cpu(), False, probe.cpu())
    got = grads(torch.compile(model), model, x, True, probe)
    return [((g.cpu() - r).abs().max() / r.abs().max()).item() for g, r in zip(got, ref)]


@pytest.mark.parametrize('conv_first', [False, True])
@pytest.mark.parametrize('in_dtype', [torch.float16, torch.float32])
@pytest.mark.parametrize('layout', ['contiguous', 'channels_last'])
def test_compiled_layer_norm_2d_gradients_under_fp16_autocast(layout, in_dtype, conv_first):
    # the norms as the compiled model runs them (kernels/layernorm_recompute.py inside
    # torch.compile), with the half-precision input a convolution gives them under autocast
    # (first suspected when the compiled backbone's fp16 gradients went wrong; the cause was
    # inductor's layout optimisation, mmvmamba/models/utils/compile.py)
    errors = _compiled_norm_grads_vs_float64('cuda', layout, in_dtype, conv_first)
    assert max(errors) < 1e-2, errors


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
    row, = ds.measure(path, data, amp='fp16', warmup=1, repeats=2, profile_steps=1)
    assert row['losses'] and all(math.isfinite(v) for v in row['losses'].values()), row
    assert row['peak_gib'] > 0 and row['infer_img_s'] > 0
    profile = row['profile']
    # the profile sees the step's kernels, our scan among them, within the step's wall time
    assert 0 < profile['kernel_ms'] <= profile['wall_ms'] and profile['launches'] > 100
    assert any('_ss2d_' in name for name in profile['totals']), sorted(profile['totals'])[:20]


def test_host_time_separates_launching_from_running():
    # a few large matrix products: the host returns long before the GPU finishes them
    from mmvmamba.analysis import measure_throughput
    model = torch.nn.Sequential(torch.nn.Flatten(), *[torch.nn.Linear(3 * 64 * 64, 3 * 64 * 64,
                                                                       bias=False)] * 8)
    r = measure_throughput(model, 4096, (64, 64), 'cuda', amp='fp16', warmup=2, repeats=5)
    assert r['host_s'] < 0.2 * r['median_s'], r


def test_backbone_with_cuda_graphs_trains_like_eager():
    # what `--cfg-options model.backbone.compile.mode=reduce-overhead` gives a task config:
    # inductor and CUDA graphs; over a few AdamW steps under fp16 autocast the losses follow the
    # eager model's, and the first gradients are as near the float32 ones as eager fp16's are
    # (both round differently: comparing the two fp16 runs directly measures rounding noise,
    # 6% at the patch embedding's bias). With inductor's layout optimisation on, the graphed
    # gradients were 10-22% away (mmvmamba/models/utils/compile.py)
    from mmvmamba.models import VMamba
    torch.manual_seed(0)
    arch = dict(dims=32, depths=(1, 1, 2, 1))
    eager = VMamba(arch, out_indices=(0, 1, 2, 3), drop_path_rate=0.0).cuda()
    graphed = VMamba(arch, out_indices=(0, 1, 2, 3), drop_path_rate=0.0,
                     compile=dict(mode='reduce-overhead')).cuda()
    graphed.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 128, 128, device='cuda')
    # fixed random read-outs: a sum of squares of normalised outputs would be constant, and its
    # gradients before the output norms rounding noise
    probes = [torch.randn(o.shape, device='cuda') for o in eager(x)]

    def read_out(model):
        return sum((o.float() * p).mean() for o, p in zip(model(x), probes))

    eager.zero_grad()
    read_out(eager).backward()
    reference = [p.grad.clone() for p in eager.parameters()]  # float32, same weights
    losses, grads = {}, {}
    for name, model in (('eager', eager), ('graphed', graphed)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler('cuda')
        losses[name] = []
        for step in range(4):
            opt.zero_grad()
            with torch.autocast('cuda', dtype=torch.float16):
                loss = read_out(model)
            losses[name].append(loss.item())
            scaler.scale(loss).backward()
            if step == 0:
                grads[name] = [p.grad.float() / scaler.get_scale() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
    torch.testing.assert_close(torch.tensor(losses['graphed']), torch.tensor(losses['eager']),
                               rtol=2e-2, atol=1e-3)
    names = [n for n, _ in eager.named_parameters()]
    for name, ref, a, b in zip(names, reference, grads['eager'], grads['graphed']):
        scale = ref.norm().clamp_min(1e-12)
        err_eager = ((a - ref).norm() / scale).item()
        err_graphed = ((b - ref).norm() / scale).item()
        assert err_graphed < max(3 * err_eager, 2e-2), (name, err_graphed, err_eager)
