import math

import pytest
import torch
from mmengine.registry import DefaultScope

from mmvmamba.models import VMamba
from mmvmamba.models.utils.layers import LayerNorm2d, Linear2d, channel_first

SMALL = dict(dims=8, depths=(1, 1, 2, 1))


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize('arch,expected_m', [('tiny', 30.25), ('small', 50.15), ('base', 88.56),
                                             ('v0-tiny', 22.89), ('v0-small', 44.42),
                                             ('v0-base', 76.25)])
def test_parameter_counts_with_1000_class_head(arch, expected_m):
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(dict(
            type='ImageClassifier', backbone=dict(type='VMamba', arch=arch),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=1000,
                      in_channels=VMamba.arch_settings[arch]['dims'] * 8)))
    assert abs(count(model) / 1e6 - expected_m) < 0.005


def test_tiny_matches_the_released_parameter_total_exactly():
    assert count(VMamba('tiny')) + 768 * 1000 + 1000 == 30_249_064


@pytest.mark.parametrize('size', [(64, 64), (67, 45), (33, 100), (7, 9)])
@pytest.mark.parametrize('arch', ['tiny', 'v0-tiny'])
def test_output_strides_for_any_input_size(size, arch):
    cfg = dict(SMALL, **({} if arch == 'tiny' else {k: v for k, v in VMamba.arch_settings[
        'v0-tiny'].items() if k not in ('dims', 'depths')}))
    model = VMamba(cfg, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    h, w = size
    for i, out in enumerate(outs):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        if i == 0:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        assert out.shape == (2, 8 * 2**i, h, w)


def test_out_indices_select_stages():
    model = VMamba(SMALL, out_indices=(1, 3)).eval()
    outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [16, 64]
    assert hasattr(model, 'outnorm1') and not hasattr(model, 'outnorm0')
    with pytest.raises(ValueError, match='out_indices entry 5'):
        VMamba(SMALL, out_indices=(5, ))


@pytest.mark.parametrize('scope,registry', [('mmpretrain', 'mmpretrain.registry'),
                                            ('mmdet', 'mmdet.registry'),
                                            ('mmseg', 'mmseg.registry')])
def test_builds_under_each_scope(scope, registry):
    import importlib
    MODELS = importlib.import_module(registry).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(dict(type='VMamba', arch=SMALL, out_indices=(0, 1, 2, 3)))
    assert isinstance(model, VMamba)


def test_forward_backward_on_cpu():
    model = VMamba(SMALL, out_indices=(0, 1, 2, 3), drop_path_rate=0.1).train()
    outs = model(torch.randn(2, 3, 40, 36))
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.layers[0].blocks[0].op.A_logs.grad.abs().sum() > 0


@pytest.mark.parametrize('arch', [dict(dims=16, depths=(1, 1, 2, 1)),
                                  dict(dims=16, depths=(1, 1, 1, 1), d_state=4, ssm_ratio=2.0,
                                       mlp_ratio=0.0, conv_bias=True, gate=True,
                                       stem='patchify', downsample='merging')])
def test_cpu_inference_paths_match_the_float64_model(arch):
    # inference on CPU takes the compiled C scan (float32), the float64 model the torch scan
    # along rows and columns; the differentiable path gives the third opinion
    from vmamba_kernels import cpu_scan
    model = VMamba(arch, out_indices=(0, 1, 2, 3)).eval()
    x = torch.randn(2, 3, 72, 56)
    with torch.no_grad():
        fast = model(x)
        exact = model.double()(x.double())
    model.float()
    with torch.enable_grad():
        differentiable = model(x.requires_grad_(True))
    assert cpu_scan.cpu_kernel_available()
    for f, e, d in zip(fast, exact, differentiable):
        scale = e.abs().max()
        assert (f.double() - e).abs().max() / scale < 1e-4
        assert (d.detach().double() - e).abs().max() / scale < 1e-4


def test_torch_and_triton_paths_give_the_same_model_output_and_gradients():
    # the scan and every LayerNorm2d switch together (Triton in the interpreter here)
    torch.manual_seed(0)
    model = VMamba(dict(dims=4, depths=(1, 1, 1, 1)), out_indices=(0, 1, 2, 3),
                   scan_backend='torch').eval()
    assert {m.backend for m in model.modules() if isinstance(m, LayerNorm2d)} == {'torch'}
    x = torch.randn(1, 3, 24, 20)
    results = []
    for backend in ('torch', 'triton'):
        for m in model.modules():
            if hasattr(m, 'scan_backend'):
                m.scan_backend = backend
            if isinstance(m, LayerNorm2d):
                m.backend = backend
        model.zero_grad()
        out = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in out).backward()
        results.append(([o.detach() for o in out],
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref, ref_grads), (out, grads) = results
    for a, b in zip(out, ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    for name, g in grads.items():
        ref_g = ref_grads[name]
        assert (g - ref_g).norm() <= 1e-5 * ref_g.norm() + 1e-8, name


def test_bf16_autocast_stays_finite_and_close():
    torch.manual_seed(0)
    model = VMamba(SMALL, out_indices=(3, )).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)[0]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)[0]
        out.float().square().mean().backward()
    assert torch.isfinite(out.float()).all()
    assert ((out.float() - ref).norm() / ref.norm()).item() < 0.05
    for p in model.parameters():
        assert torch.isfinite(p.grad).all()


def test_ss2d_output_norm_takes_the_scan_output_in_the_maps_dtype():
    # the scan returns its float32 sum of the four directions rounded once to the map's dtype
    # (under autocast half precision, as the authors' kernel returns it): the norm gets that
    # dtype, with and without autocast (the rounding itself: tests/kernels/test_ss2d_scan.py)
    from mmvmamba.models.ss2d import SS2D
    torch.manual_seed(0)
    seen = []
    for model_dtype, amp in ((torch.float32, True), (torch.bfloat16, False)):
        op = SS2D(16).to(model_dtype)
        op.out_norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
        x = torch.randn(1, 16, 6, 6, dtype=model_dtype)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            op(x)
    assert seen == [torch.bfloat16, torch.bfloat16]


def _record_scan_inputs(monkeypatch):
    """SS2D's ``ss2d_scan`` wrapped for the test: returns the list that gets the (x, dt_low)
    of every call."""
    import mmvmamba.models.ss2d as ss2d_module
    calls, real_scan = [], ss2d_module.ss2d_scan

    def scan(x, dt_low, *args, **kwargs):
        calls.append((x, dt_low))
        return real_scan(x, dt_low, *args, **kwargs)

    monkeypatch.setattr(ss2d_module, 'ss2d_scan', scan)
    return calls


def test_ss2d_x_projection_keeps_the_map_the_scan_gets(monkeypatch):
    # the x projection's weight gradient needs the scan's input map: autograd keeps that map
    # itself, not a permuted copy (one map of d_inner channels fewer per block); the projection
    # equals the per-direction product x_proj_weight[k] @ x
    import mmvmamba.models.ss2d as ss2d_module
    torch.manual_seed(0)
    op = ss2d_module.SS2D(8, ssm_ratio=2.0)  # d_inner 16: maps of d_inner channels stand out
    x = torch.randn(2, 8, 5, 6)
    scan_inputs, saved = _record_scan_inputs(monkeypatch), []

    def pack(t):
        if not scan_inputs:  # kept before the scan ran: the projection and what precedes it
            saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast('cpu', dtype=torch.bfloat16):
        op(x)
    scanned, dt_low = scan_inputs[0]
    maps = {t.untyped_storage().data_ptr() for t in saved
            if t.numel() == scanned.numel() and t.dtype == scanned.dtype}
    # the depthwise conv's input, SiLU's input, and the scan's input (kept by the projection)
    assert len(maps) == 3 and scanned.untyped_storage().data_ptr() in maps
    expected = torch.einsum('kjc,bcl->bkjl', op.x_proj_weight.double(),
                            scanned.double().flatten(2))[:, :, :op.dt_rank]
    assert torch.allclose(dt_low.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_ss2d_hands_the_cpu_inference_scan_the_map_as_the_convolution_left_it(backend,
                                                                           monkeypatch):
    # inference on the torch path (the CPU's C scan reads channels-last rows) and, on a map below
    # 512 positions, for the Triton kernels (their channels-last inference kernels, on by
    # default): the scan gets the SiLU output as it is, channels-last, no copy; with gradients
    # a contiguous channel-first map; the outputs are the same
    import mmvmamba.models.ss2d as ss2d_module
    torch.manual_seed(0)
    op = ss2d_module.SS2D(8, scan_backend=backend).eval()
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    monkeypatch.delenv('VMAMBA_SCAN_CHANNELS_LAST', raising=False)
    scanned = _record_scan_inputs(monkeypatch)
    with torch.no_grad():
        y_inference = op(x)
    y_train = op(x)
    (inference, _), (train, _) = scanned
    assert train.is_contiguous()
    assert inference.is_contiguous(memory_format=torch.channels_last)
    assert not inference.is_contiguous()
    assert torch.allclose(y_inference, y_train, rtol=1e-5, atol=1e-6)


def test_ss2d_hands_the_channels_last_kernels_the_map_as_it_is(monkeypatch):
    # with the channels-last kernels switched on, the Triton scan gets the SiLU output as the
    # convolution left it (channels-last, no copy) and returns y channels-last; the block's
    # output and gradients equal those with the chunked kernels
    import mmvmamba.models.ss2d as ss2d_module
    torch.manual_seed(0)
    op = ss2d_module.SS2D(8, scan_backend='triton')
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    results = {}
    for mode in ('0', 'small'):
        monkeypatch.setenv('VMAMBA_SCAN_CHANNELS_LAST', mode)
        scanned = _record_scan_inputs(monkeypatch)
        leaf = x.clone().requires_grad_(True)
        y = op(leaf)
        y.backward(torch.ones_like(y))
        results[mode] = (y.detach(), leaf.grad, [p.grad.clone() for p in op.parameters()])
        op.zero_grad()
        (map_in, _), = scanned
        monkeypatch.undo()
        assert map_in.is_contiguous(memory_format=torch.channels_last) == (mode == 'small')
        assert map_in.is_contiguous() == (mode == '0')
    (y0, dx0, grads0), (y1, dx1, grads1) = results['0'], results['small']
    assert torch.allclose(y1, y0, rtol=1e-5, atol=1e-6)
    assert torch.allclose(dx1, dx0, rtol=1e-5, atol=1e-6)
    for g1, g0 in zip(grads1, grads0):
        assert torch.allclose(g1, g0, rtol=1e-4, atol=1e-6)


def test_ss2d_hands_the_map_channels_last_only_without_gradients_when_asked(monkeypatch):
    # $VMAMBA_SCAN_CHANNELS_LAST=inference (the default): the forward without gradients gets the
    # map as the convolution left it, a training forward gets it channel-first; both outputs
    # equal the chunked kernels'
    import mmvmamba.models.ss2d as ss2d_module
    torch.manual_seed(0)
    op = ss2d_module.SS2D(8, scan_backend='triton')
    x = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    monkeypatch.setenv('VMAMBA_SCAN_CHANNELS_LAST', '0')
    with torch.no_grad():
        y_chunked = op(x)
    for mode, grad in ((None, False), (None, True), ('inference', False), ('inference', True)):
        if mode is None:
            monkeypatch.delenv('VMAMBA_SCAN_CHANNELS_LAST', raising=False)
        else:
            monkeypatch.setenv('VMAMBA_SCAN_CHANNELS_LAST', mode)
        scanned = _record_scan_inputs(monkeypatch)
        with torch.set_grad_enabled(grad):
            y = op(x)
        (map_in, _), = scanned
        assert map_in.is_contiguous(memory_format=torch.channels_last) != grad
        assert torch.allclose(y.detach(), y_chunked, rtol=1e-5, atol=1e-6)


def test_frozen_stages_get_no_gradients():
    model = VMamba(SMALL, out_indices=(0, 1, 2, 3), frozen_stages=2).train()
    sum(o.mean() for o in model(torch.randn(1, 3, 32, 32))).backward()
    for name, p in model.named_parameters():
        frozen = name.startswith(('patch_embed.', 'layers.0.', 'layers.1.', 'outnorm0.',
                                  'outnorm1.'))
        assert (p.grad is None) == frozen, name
    assert not model.layers[1].training and model.layers[2].training


def plain_and_variant(common=None, arch=SMALL, **variant):
    """Two models of ``arch`` in training mode with the same weights (both built with
    ``common``'s arguments, the second also with ``variant``'s), and an input."""
    torch.manual_seed(0)
    plain = VMamba(arch, out_indices=(0, 3), **(common or {})).train()
    other = VMamba(arch, out_indices=(0, 3), **(common or {}), **variant).train()
    other.load_state_dict(plain.state_dict())
    return plain, other, torch.randn(2, 3, 32, 32)


def step_holding(model, x):
    """A training step of ``model`` on ``x`` (the same drop-path masks every call): its outputs
    and the bytes autograd held for the backward, each storage once (parameters included)."""
    held = []
    torch.manual_seed(1)
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: held.append(t.untyped_storage()) or t, lambda t: t):
        out = model(x)
    saved = sum({s.data_ptr(): s.nbytes() for s in held}.values())
    sum(o.square().mean() for o in out).backward()
    return [o.detach() for o in out], saved


def test_with_cp_gives_the_same_gradients():
    plain, ckpt, x = plain_and_variant(with_cp=True)
    for model in (plain, ckpt):
        torch.manual_seed(1)  # the same drop-path masks in both runs
        sum(o.square().mean() for o in model(x)).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_recompute_mlp_act_gives_the_same_gradients_and_holds_less():
    # the gradients compared in float64: in float32 the stem's gradients of this small model carry
    # a few percent of rounding (3.7% from float64's), which the two paths' different GEMM calls
    # round differently on some CPUs
    plain, lean, x = (t.double() for t in plain_and_variant(recompute_mlp_act=True))
    outputs = [step_holding(model, x)[0] for model in (plain, lean)]
    for a, b in zip(*outputs):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-14), name
    plain, lean, x = plain_and_variant(recompute_mlp_act=True)
    saved = [step_holding(model, x)[1] for model in (plain, lean)]
    # every block's MLP stops holding its GELU output: 4 * C channels per pixel, float32
    hidden = sum(4 * c * (32 // 2**(i + 2))**2 * depth for i, (c, depth) in
                 enumerate(zip(plain.dims, plain.depths)))
    assert saved[0] - saved[1] == 2 * hidden * 4


def test_recompute_stem_gives_the_same_gradients_and_holds_less():
    plain, lean, x = (t.double() for t in plain_and_variant(recompute_stem=True))
    outputs = [step_holding(model, x)[0] for model in (plain, lean)]
    for a, b in zip(*outputs):
        assert torch.equal(a, b)
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-15), name
    plain, lean, x = plain_and_variant(recompute_stem=True)
    saved = [step_holding(model, x)[1] for model in (plain, lean)]
    # the stem no longer holds the image (its first conv's input: the checkpoint keeps it by
    # reference) nor its half-resolution map of C / 2 channels
    half_map = x.shape[0] * plain.dims[0] // 2 * (x.shape[2] // 2) * (x.shape[3] // 2) * 4
    assert saved[0] - saved[1] >= x.numel() * 4 + half_map


def test_recompute_stem_only_where_the_stem_trains(monkeypatch):
    # a frozen stem (frozen_stages >= 0) or no gradient: the stem runs as is, no checkpoint
    from mmvmamba.models.utils import recompute
    calls = []
    checkpoint = recompute.cp.checkpoint
    monkeypatch.setattr(recompute.cp, 'checkpoint',
                        lambda *a, **k: calls.append(a[0]) or checkpoint(*a, **k))
    arch = dict(dims=8, depths=(1, 1, 1, 1))
    x = torch.randn(1, 3, 32, 32)
    lean = VMamba(arch, recompute_stem=True).train()
    lean(x)
    assert calls == [lean.patch_embed]
    calls.clear()
    with torch.no_grad():
        lean(x)
    VMamba(arch, recompute_stem=True, frozen_stages=0).train()(x)
    assert not calls


ALL_MEMORY_OPTIONS = dict(with_cp=True, memory_efficient_norm=True, recompute_stem=True,
                          recompute_ssm_input=True, recompute_mlp_act=True)


@pytest.mark.parametrize('options', [
    dict(recompute_stem=True), dict(recompute_ssm_input=True), dict(recompute_mlp_act=True),
    ALL_MEMORY_OPTIONS],  # the three checkpointed regions nested in with_cp's
    ids=['recompute_stem', 'recompute_ssm_input', 'recompute_mlp_act', 'all'])
def test_recompute_option_under_torch_compile_matches_eager(options):
    torch.manual_seed(0)
    arch = dict(dims=8, depths=(1, 1, 1, 1), ssm_ratio=2.0)
    eager = VMamba(arch, drop_path_rate=0.0).train()
    compiled = VMamba(arch, drop_path_rate=0.0, compile=dict(backend='aot_eager'),
                      **options).train()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (eager, compiled):
        model(x)[0].square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-7)


def test_recompute_ssm_input_gives_the_same_gradients_and_holds_less():
    for arch in (SMALL, dict(SMALL, ssm_ratio=2.0, d_state=2, gate=True, mlp_ratio=0)):
        plain, lean, x = (t.double() for t in plain_and_variant(arch=arch,
                                                                recompute_ssm_input=True))
        outputs = [step_holding(model, x)[0] for model in (plain, lean)]
        for a, b in zip(*outputs):
            assert torch.equal(a, b)
        for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
            assert torch.allclose(a.grad, b.grad, rtol=1e-12, atol=1e-15), (arch, name)
    plain, lean, x = plain_and_variant(arch=dict(SMALL, ssm_ratio=2.0), recompute_ssm_input=True)
    saved = [step_holding(model, x)[1] for model in (plain, lean)]
    # every block no longer holds its depthwise conv's input and output (d_inner channels each)
    maps = sum(depth * 2 * x.shape[0] * 2 * dim * (32 // 4 // 2**i)**2 * 4
               for i, (dim, depth) in enumerate(zip(plain.dims, plain.depths)))
    assert saved[0] - saved[1] >= maps


def test_recompute_ssm_input_only_with_gradients(monkeypatch):
    from mmvmamba.models.utils import recompute
    calls = []
    checkpoint = recompute.cp.checkpoint
    monkeypatch.setattr(recompute.cp, 'checkpoint',
                        lambda *a, **k: calls.append(a[0]) or checkpoint(*a, **k))
    lean = VMamba(dict(dims=8, depths=(1, 1, 1, 1)), recompute_ssm_input=True).train()
    x = torch.randn(1, 3, 32, 32)
    lean(x)
    assert len(calls) == 4  # one per block
    calls.clear()
    with torch.no_grad():
        lean(x)
    frozen = VMamba(dict(dims=8, depths=(1, 1, 1, 1)), recompute_ssm_input=True,
                    frozen_stages=4).train()
    frozen(x)  # nothing wants a gradient
    assert not calls


def test_recompute_mlp_act_under_autocast_matches_float64():
    from mmvmamba.models.utils.layers import Mlp
    torch.manual_seed(0)
    lean = Mlp(8, 32, recompute_act=True)
    reference = Mlp(8, 32).double()
    reference.load_state_dict(lean.state_dict())
    x = torch.randn(2, 8, 5, 6)
    grads = []
    for model, inp, ctx in ((lean, x, torch.autocast('cpu', dtype=torch.bfloat16)),
                            (reference, x.double(), torch.autocast('cpu', enabled=False))):
        inp = inp.clone().requires_grad_(True)
        with ctx:
            out = model(inp)
        out.float().square().sum().backward()
        grads.append([out.detach().double(), inp.grad.double()]
                     + [p.grad.double() for p in model.parameters()])
    for a, b in zip(*grads):
        assert (a - b).norm() <= 2e-2 * b.norm()  # bf16 rounding


def authors_tiny_state_dict():
    """The released VMamba-T layout, written from the reference key list."""
    sd = {'patch_embed.0.weight': [48, 3, 3, 3], 'patch_embed.0.bias': [48],
          'patch_embed.2.weight': [48], 'patch_embed.2.bias': [48],
          'patch_embed.5.weight': [96, 48, 3, 3], 'patch_embed.5.bias': [96],
          'patch_embed.7.weight': [96], 'patch_embed.7.bias': [96]}
    for i, depth in enumerate((2, 2, 8, 2)):
        c = 96 * 2**i
        r = math.ceil(c / 16)
        for j in range(depth):
            p = f'layers.{i}.blocks.{j}.'
            sd.update({p + 'norm.weight': [c], p + 'norm.bias': [c],
                       p + 'op.in_proj.weight': [c, c], p + 'op.conv2d.weight': [c, 1, 3, 3],
                       p + 'op.x_proj_weight': [4, r + 2, c], p + 'op.dt_projs_weight': [4, c, r],
                       p + 'op.dt_projs_bias': [4, c], p + 'op.A_logs': [4 * c, 1],
                       p + 'op.Ds': [4 * c], p + 'op.out_norm.weight': [c],
                       p + 'op.out_norm.bias': [c], p + 'op.out_proj.weight': [c, c],
                       p + 'norm2.weight': [c], p + 'norm2.bias': [c],
                       p + 'mlp.fc1.weight': [4 * c, c], p + 'mlp.fc1.bias': [4 * c],
                       p + 'mlp.fc2.weight': [c, 4 * c], p + 'mlp.fc2.bias': [c]})
        if i < 3:
            sd.update({f'layers.{i}.downsample.1.weight': [2 * c, c, 3, 3],
                       f'layers.{i}.downsample.1.bias': [2 * c],
                       f'layers.{i}.downsample.3.weight': [2 * c],
                       f'layers.{i}.downsample.3.bias': [2 * c]})
    sd.update({'classifier.norm.weight': [768], 'classifier.norm.bias': [768],
               'classifier.head.weight': [1000, 768], 'classifier.head.bias': [1000]})
    return {k: torch.randn(v) for k, v in sd.items()}


def test_authors_checkpoint_loads_through_init_cfg(tmp_path):
    sd = authors_tiny_state_dict()
    assert sum(v.numel() for v in sd.values()) == 30_249_064
    path = tmp_path / 'vssm_tiny.pth'
    torch.save({'model': sd, 'model_ema': sd, 'epoch': 299}, path)
    model = VMamba('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    own = model.state_dict()
    for key, value in sd.items():
        ours = key.replace('classifier.norm.', 'outnorm3.')
        if not key.startswith('classifier.head.'):
            assert torch.equal(own[ours], value), key


def test_checkpoint_errors_are_clear(tmp_path):
    model = VMamba('tiny', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'no.pth')))
    with pytest.raises(FileNotFoundError, match='no.pth'):
        model.init_weights()
    bad = tmp_path / 'corrupt.pth'
    bad.write_bytes(b'not a checkpoint')
    model.init_cfg['checkpoint'] = str(bad)
    with pytest.raises(RuntimeError, match='could not read checkpoint'):
        model.init_weights()
    small = tmp_path / 'small.pth'
    torch.save({'state_dict': VMamba('small').state_dict()}, small)
    model.init_cfg['checkpoint'] = str(small)
    with pytest.raises(ValueError, match='does not fit the model'):
        model.init_weights()
    model.init_cfg.update(checkpoint=str(small), prefix='backbone.')
    with pytest.raises(ValueError, match="prefix 'backbone.'"):
        model.init_weights()


def test_bad_arch_is_named():
    with pytest.raises(ValueError, match="unknown VMamba arch 'huge'"):
        VMamba('huge')
    with pytest.raises(ValueError, match="unknown keys \\['width'\\]"):
        VMamba(dict(dims=8, depths=(1, 1), width=3))


@pytest.mark.parametrize('channels_last', [False, True])
def test_linear2d_half_precision_path_matches_the_1x1_convolution(channels_last):
    # float32 runs a 1x1 conv; bf16 maps (or autocast) run F.linear on the channels-last view
    torch.manual_seed(0)
    layer = Linear2d(6, 5)
    x = torch.randn(2, 6, 7, 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = torch.nn.functional.conv2d(x, layer.weight[:, :, None, None], layer.bias)
    assert torch.allclose(layer(x), ref, atol=1e-6)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    assert ((out.float() - ref).norm() / ref.norm()).item() < 1e-2
    out16 = layer.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert ((out16.float() - ref).norm() / ref.norm()).item() < 1e-2


@pytest.mark.parametrize('layout', ['channels_last', 'contiguous', 'transposed'])
def test_channel_first_hands_back_the_gradient_in_the_input_layout(layout):
    # the SS2D conv output is channels-last; its gradient must come back channels-last (cuDNN's
    # conv backward otherwise copies it), with the values of plain .contiguous()
    torch.manual_seed(0)
    leaf = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    x = {'channels_last': lambda t: t.contiguous(memory_format=torch.channels_last),
         'contiguous': lambda t: t * 1, 'transposed': lambda t: t.transpose(2, 3)}[layout](leaf)
    seen = []
    x.register_hook(seen.append)  # a non-leaf: its gradient keeps the layout autograd gives it
    grad = torch.randn(x.shape, dtype=torch.float64)
    out = channel_first(x)
    assert out.is_contiguous() and torch.equal(out, x.detach().contiguous())
    (out * grad).sum().backward()
    assert torch.equal(seen[0], grad)
    if layout == 'channels_last':
        assert seen[0].is_contiguous(memory_format=torch.channels_last)
        assert not seen[0].is_contiguous()
    with torch.no_grad():
        assert channel_first(x).is_contiguous()


def test_layernorm2d_triton_path_output_layout_and_dtype_under_autocast():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 4)
    ref = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8, )).permute(0, 3, 1, 2)
    plain = LayerNorm2d(8, backend='triton')
    feeding = LayerNorm2d(8, feeds_linear=True, backend='triton')
    out = plain(x)
    assert out.is_contiguous() and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        kept, cast = plain(x), feeding(x)
    # a residual stream stays float32; a norm feeding a linear layer writes what it would cast to
    assert kept.dtype == torch.float32 and cast.dtype == torch.bfloat16
    assert cast.is_contiguous(memory_format=torch.channels_last)
    assert ((cast.float() - ref).norm() / ref.norm()).item() < 1e-2


def test_inductor_compiled_backbone_takes_a_second_input_size():
    # through inductor (not aot_eager): torch's default compiled a second input size with
    # symbolic sizes, which inductor failed to lower ("cannot determine truth value of
    # Relational"), so detection training with compile=True crashed at its second image size
    torch.manual_seed(0)
    arch = dict(dims=16, depths=(1, 1, 1, 1))
    eager = VMamba(arch, out_indices=(0, 3), drop_path_rate=0.0)
    compiled = VMamba(arch, out_indices=(0, 3), drop_path_rate=0.0, compile=True)
    compiled.load_state_dict(eager.state_dict())
    for size in [(32, 48), (48, 32)]:
        y = torch.randn(1, 3, *size)
        for a, b in zip(eager(y), compiled(y)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_inductor_compiled_backbone_inference_matches_eager():
    # compiled CPU inference: the C scan as one operator of the graph (eager's scan), inductor's
    # code around it
    torch.manual_seed(0)
    arch = dict(dims=16, depths=(1, 1, 1, 1))
    eager = VMamba(arch, out_indices=(0, 3), drop_path_rate=0.0).eval()
    compiled = VMamba(arch, out_indices=(0, 3), drop_path_rate=0.0, compile=True).eval()
    compiled.load_state_dict(eager.state_dict())
    y = torch.randn(2, 3, 40, 36)
    with torch.no_grad():
        for a, b in zip(eager(y), compiled(y)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_compiled_backbone_matches_eager_and_survives_a_deep_copy():
    import copy
    torch.manual_seed(0)
    arch = dict(dims=16, depths=(1, 1, 1, 1))
    eager = VMamba(arch, out_indices=(0, 3), drop_path_rate=0.0)
    compiled = VMamba(arch, out_indices=(0, 3), drop_path_rate=0.0,
                      compile=dict(backend='aot_eager'))
    compiled.load_state_dict(eager.state_dict())
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = torch.randn(2, 3, 40, 36)
    outs = []
    for model in (eager, compiled):
        model.zero_grad()
        feats = model(x)
        sum(f.square().mean() for f in feats).backward()
        outs.append((feats, [p.grad.clone() for p in model.parameters()]))
    (f_e, g_e), (f_c, g_c) = outs
    for a, b in zip(f_e, f_c):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_e, g_c):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    # other input sizes (detection, segmentation) recompile and stay equal; with gradients on,
    # as in training
    for size in [(17, 41)]:
        y = torch.randn(1, 3, *size)
        for a, b in zip(eager(y), compiled(y)):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    twin = copy.deepcopy(compiled)  # what mmengine's EMA hook does
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
        assert not torch.allclose(twin(x)[1], compiled(x)[1])
    with pytest.raises(TypeError, match='compile'):
        VMamba(arch, compile='yes')
    # an empty dict compiles like True (torch.compile's defaults, but each input size on its
    # own: dynamic=False, see _compiled_forward); False stays eager
    assert VMamba(arch, compile={}).compile_cfg == VMamba(arch, compile=True).compile_cfg == {}
    assert VMamba(arch, compile=False).compile_cfg is None


def test_memory_efficient_norm_same_gradients_and_holds_no_norm_inputs():
    # on the Triton path (interpreter here) the norms feeding linear layers keep their output
    # (held by that layer anyway) instead of their float32 input: per block the residual stream
    # twice and the scan's output; the gradients stay those of the plain model
    plain, lean, x = plain_and_variant(dict(scan_backend='triton'), memory_efficient_norm=True)
    flagged = {name for name, m in lean.named_modules() if getattr(m, 'memory_efficient', False)}
    assert flagged == {name for name, m in lean.named_modules()
                       if name.endswith(('.norm', '.norm2', '.out_norm'))}
    outputs, saved = zip(*(step_holding(model, x) for model in (plain, lean)))
    for a, b in zip(*outputs):
        assert torch.equal(a, b)
    for (name, a), b in zip(plain.named_parameters(), lean.parameters()):
        assert torch.allclose(b.grad, a.grad, rtol=1e-4, atol=1e-6), name
    # three float32 maps of C channels per block (d_inner = C: ssm_ratio 1 in SMALL)
    maps = sum(3 * c * (32 // 2**(i + 2))**2 * depth for i, (c, depth) in
               enumerate(zip(plain.dims, plain.depths)))
    assert saved[0] - saved[1] == maps * 2 * 4


def test_config_option_reaches_torch_compile(monkeypatch):
    # what `--cfg-options model.backbone.compile.mode=reduce-overhead` does to a task config:
    # the backbone's forward goes through torch.compile with that mode, one graph per size
    import os.path as osp

    from mmengine.config import Config

    from mmvmamba.models.backbones import vmamba as vmamba_module
    from mmvmamba.registry import MODELS
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    cfg = Config.fromfile(osp.join(root, 'configs', 'upernet',
                                   'upernet_vmamba-nano_digits-96x96.py'))
    cfg.merge_from_dict({'model.backbone.compile.mode': 'reduce-overhead'})
    calls = []

    def fake_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn  # eager: only the arguments are under test here

    monkeypatch.setattr(vmamba_module, '_COMPILED', {})
    monkeypatch.setattr(torch, 'compile', fake_compile)
    backbone = dict(cfg.model.backbone)
    backbone.pop('init_cfg', None)
    model = MODELS.build(backbone)
    assert model.compile_cfg == {'mode': 'reduce-overhead'}
    outs = model(torch.randn(1, 3, 64, 64))
    model(torch.randn(1, 3, 32, 32))
    # compiled once, reused; the mode as inductor's options, layout optimisation off
    # (mmvmamba/models/utils/compile.py)
    assert calls == [dict(dynamic=False, options={'triton.cudagraphs': True,
                                                  'layout_optimization': False})]
    assert len(outs) == len(model.out_indices)


def _compiled_forward_saves(**backbone_options):
    """The nodes each inductor-compiled forward of a small VMamba (bf16 autocast, CPU) passes to
    its backward, after one training step."""
    import os.path as osp
    import sys
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools',
                                'analysis'))
    from saved_activations import compiled_partitions
    torch.manual_seed(0)
    torch._dynamo.reset()  # else dynamo reuses the code compiled for an earlier equal model
    with compiled_partitions() as found:  # inductor's partitions, its caches off
        model = VMamba(dict(dims=16, depths=(1, 1, 1, 1)), out_indices=(3, ),
                       drop_path_rate=0.0, compile=dict(mode='default'), **backbone_options)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(torch.randn(1, 3, 64, 64))
    out[0].float().sum().backward()
    assert found, 'no compiled forward was partitioned'
    outputs = [n for forward, _ in found for n in forward.graph.output_node().args[0]]
    return [n for n in outputs if getattr(n, 'op', '') == 'call_function']


def test_recompute_mlp_act_under_inductor_keeps_no_gelu_output():
    # inductor's partitioner keeps fc2's input, the GELU's output (fc2's weight gradient reads
    # it), beside fc1's output, unless the GELU -> fc2 region is checkpointed: with the option
    # the compiled forward keeps nothing for fc2
    def for_fc2(nodes):
        stacks = [list(n.meta.get('nn_module_stack', {}).values()) for n in nodes]
        return [n.name for n, stack in zip(nodes, stacks)
                if stack and stack[-1][0].endswith('mlp.fc2')]

    assert len(for_fc2(_compiled_forward_saves())) == 4  # one per block
    assert for_fc2(_compiled_forward_saves(recompute_mlp_act=True)) == []


def test_compiled_training_keeps_no_layer_norm_x_hat():
    # inductor stored the x-hat maps a compiled F.layer_norm kept for the backward in a
    # transposed layout (docs/notes/2026-12-02.md); the compiled norms keep their input, mean and
    # rstd instead (layernorm_recompute.py): no mul(sub(x, mean), rsqrt(var)) among the tensors
    # the compiled forward outputs (what it saves for the backward included)
    def is_x_hat(node):
        target = str(node.target)
        if 'aten.mul' not in target or len(node.args) != 2:
            return False
        a, b = (str(getattr(arg, 'target', '')) for arg in node.args)
        return 'aten.sub' in a and 'aten.rsqrt' in b

    assert not [n.name for n in _compiled_forward_saves() if is_x_hat(n)]


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_scan_benchmark_stage_shapes_are_the_models(arch):
    """tools/kernel_dev/benchmark_scan.py times the scan at each arch's stage shapes: (map side at
    224 x 224, SSM channels, dt rank) as the built backbone's SS2D layers have them."""
    import os.path as osp
    import sys
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools',
                                'kernel_dev'))
    import benchmark_scan
    model = VMamba(arch=arch)
    for i, layer in enumerate(model.layers):
        k, channels, rank = layer.blocks[0].op.dt_projs_weight.shape
        assert k == 4
        assert benchmark_scan.STAGES[arch][i + 1] == (56 >> i, channels, rank)


def test_stem_runs_channels_last_and_stage_1_gets_the_layout_it_did():
    """The stem gets the image channels-last (NHWC convolution kernels, norms over a
    contiguous channel axis); stage 1 gets the map in the layout a stem fed channel-first gives,
    and the outputs and gradients are that stem's (float64: equal to rounding)."""
    model = VMamba(SMALL, out_indices=(0, 1, 2, 3), drop_path_rate=0.).double().train()
    x = torch.randn(2, 3, 40, 36, dtype=torch.float64)
    seen = []
    channels_last = torch.channels_last
    model.patch_embed[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=channels_last)))
    model.layers[0].blocks[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].stride()))
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert seen[0] is True
    stage_1_strides = seen[1]

    model.zero_grad()
    stem_forward = model.patch_embed.forward
    model.patch_embed.forward = lambda t: stem_forward(t.contiguous())  # fed channel-first
    seen.clear()
    ref = model(x)
    assert seen == [False, stage_1_strides]
    sum(o.square().mean() for o in ref).backward()
    for a, b in zip(outs, ref):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    for (name, p), g in zip(model.named_parameters(), grads):
        assert torch.allclose(p.grad, g, rtol=1e-10, atol=1e-14), name


@pytest.mark.parametrize('arch', [dict(dims=16, depths=(1, 1, 1, 1)),
                                  dict(dims=16, depths=(1, 1), stem='patchify')])
def test_dense_convolution_weights_are_channels_last_on_the_cpu_only(arch):
    # on the CPU the stem's and downsampling layers' convolutions get channels-last maps, and
    # oneDNN converted a channel-first weight at every call; moving the model decides again
    torch.manual_seed(0)
    model = VMamba(arch, out_indices=(0, 1), drop_path_rate=0.0)
    convs = {n: m for n, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.groups == 1}
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last)
                         and not m.weight.is_contiguous() for m in convs.values())
    # the same model with channel-first weights: same outputs and gradients
    plain = VMamba(arch, out_indices=(0, 1), drop_path_rate=0.0)
    plain.load_state_dict(model.state_dict())
    for m in plain.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous()
    x = torch.randn(2, 3, 36, 28)
    results = []
    for net in (model, plain):
        outs = net(x)
        sum(o.square().mean() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in net.named_parameters()}))
    (outs, grads), (ref_outs, ref_grads) = results
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # state dicts trade both ways; a checkpoint's channel-first tensor keeps the layout
    assert model.state_dict().keys() == plain.state_dict().keys()
    model.load_state_dict(plain.state_dict())
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               for m in convs.values())
    # another device (meta here; CUDA alike) gets channel-first weights, the CPU again not
    model.to('meta')
    assert all(m.weight.is_contiguous() for m in convs.values())
    model.to_empty(device='cpu')
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last)
               and not m.weight.is_contiguous() for m in convs.values())
