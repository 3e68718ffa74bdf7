"""tools/analysis: FLOPs table, linearity, ERF PNG, benchmark and scaling on CPU."""
import math
import os
import os.path as osp
import sys

import pytest
import torch
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
CFG = osp.join(ROOT, 'configs', 'vmamba', 'vmamba-{}_8xb128_in1k.py')
DIGITS = osp.join(ROOT, 'configs', 'vmamba', 'vmamba-nano_1xb32_digits.py')


@pytest.mark.parametrize('arch,gflops,mparams', [('tiny', 4.9, 30.25), ('small', 8.7, 50.15),
                                                 ('base', 15.4, 88.56), ('v0-tiny', 5.6, 22.89),
                                                 ('v0-small', 11.2, 44.42),
                                                 ('v0-base', 18.0, 76.25)])
def test_flops_and_params_match_the_paper_table(arch, gflops, mparams):
    import get_flops
    r = get_flops.main([CFG.format(arch)])
    assert abs(r['total'] / 1e9 - gflops) / gflops < 0.02
    assert abs(r['params'] / 1e6 - mparams) < 0.005


def test_scan_flops_are_exactly_linear_in_pixels():
    import _common
    from mmvmamba.analysis import count_flops
    backbone = _common.build_backbone(_common.load_config(CFG.format('tiny')))
    small, large = count_flops(backbone, (224, 224)), count_flops(backbone, (448, 448))
    assert large['scan'] == 4 * small['scan']
    assert large['total'] == pytest.approx(4 * small['total'], rel=1e-9)


def test_resolution_scaling_vmamba_linear_vit_superlinear(tmp_path):
    import resolution_scaling
    out = tmp_path / 'scaling.png'
    rows = resolution_scaling.main(['--config', DIGITS, '--sizes', '64', '128', '256',
                                    '--out', str(out), '--vit-dim', '96'])
    assert rows[2]['vmamba_scan'] == 16 * rows[0]['vmamba_scan']
    assert rows[2]['vmamba_flops'] / rows[0]['vmamba_flops'] == pytest.approx(16, rel=1e-3)
    assert rows[2]['vit_flops'] / rows[0]['vit_flops'] > 16.5
    assert rows[0]['vmamba_ms'] > 0 and Image.open(out).size[0] > 0


def test_erf_writes_png_of_input_size(tmp_path):
    import visualize_erf
    out = tmp_path / 'erf.png'
    erf = visualize_erf.main([DIGITS, '--shape', '48', '40', '--num', '2', '--out', str(out)])
    assert Image.open(out).size == (40, 48)
    assert erf.shape == (48, 40) and (erf >= 0).all() and erf.sum() > 0


def test_erf_with_checkpoint(tmp_path):
    import _common
    import torch
    import visualize_erf
    backbone = _common.build_backbone(_common.load_config(DIGITS))
    ckpt = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in backbone.state_dict().items()}},
               ckpt)
    visualize_erf.main([DIGITS, str(ckpt), '--shape', '32', '32', '--num', '1', '--out',
                        str(tmp_path / 'erf.png')])
    assert (tmp_path / 'erf.png').exists()


def test_benchmark_runs_on_cpu(capsys):
    import benchmark
    rows = benchmark.main([DIGITS, '--batch', '2', '--shape', '32', '32', '--device', 'cpu',
                           '--warmup', '1', '--repeats', '2', '--amp', 'none', 'bf16'])
    assert [r[:3] for r in rows] == [(m, a, 'eager') for m in benchmark.MODES
                                     for a in ('none', 'bf16')]
    assert all(r[3] > 0 for r in rows)
    # every result is printed before the final table (a run cut short keeps what it measured)
    out = capsys.readouterr().out
    table_at = out.index('| mode |')
    for mode, amp, launch, ips, _, _ in rows:
        assert 0 <= out.index(f'{mode} {amp} {launch}: {ips:.1f} img/s') < table_at


def test_compare_compiled_judges_against_the_eager_precision_spread(monkeypatch):
    # a "compiled" model that adds a fixed relative error to the output: within tolerance when
    # its distance to the float32 run is within the tolerance or twice the eager
    # autocast-vs-float32 spread, refused otherwise
    import compare_compiled

    class Offset(torch.nn.Module):
        def __init__(self, inner, error):
            super().__init__()
            self.inner, self.error = inner, error

        def forward(self, x):
            out = self.inner(x)
            return out + self.error * out.detach().abs().max()

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    x = torch.randn(4, 8)
    # bf16 autocast moves this model's output by ~4e-3 (one bf16 rounding), float32 on a CPU by 0
    for error, tol, amp, passed in ((1e-4, 1e-3, None, True), (1e-2, 1e-3, None, False),
                                    (1e-3, 1e-4, torch.bfloat16, True),
                                    (1.0, 1e-4, torch.bfloat16, False)):
        monkeypatch.setattr(torch, 'compile',
                            lambda m, mode=None, error=error: Offset(m, error))
        rows = compare_compiled.compare(model, x, amp, 'default', tol)
        diff, spread, ok, to_precise = rows['output']
        # (the offset output is rounded to bf16 under autocast)
        assert diff == pytest.approx(error, rel=1e-3, abs=2**-8 if amp else 0)
        assert ok is passed, (error, tol, amp, spread)
        assert ok is (to_precise <= max(tol, 2 * spread))
        assert (spread > 1e-3) if amp else (spread == 0)
        assert rows.keys() == {'output'} | {name for name, _ in model.named_parameters()}


def test_compare_compiled_scales_the_fp16_loss_like_grad_scaler():
    import compare_compiled as cc
    assert cc.loss_scale_for(torch.float16, 'auto') == 2**16
    assert cc.loss_scale_for(torch.bfloat16, 'auto') == cc.loss_scale_for(None, 'auto') == 1
    assert cc.loss_scale_for(torch.float16, '8') == 8
    for bad in ('0', '-2'):
        with pytest.raises(ValueError, match='--loss-scale must be "auto" or a positive number'):
            cc.loss_scale_for(None, bad)
    # a model with small gradients (as near initialisation): the scale comes off exactly in
    # float32, and under fp16 autocast the scaled run is closer to float32 (unscaled, the first
    # layer's gradients fall into fp16's subnormal range)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    with torch.no_grad():
        model[1].weight.mul_(1e-3)
    x = torch.randn(4, 8)
    _, grads = cc.run(model, x, None)
    _, scaled = cc.run(model, x, None, loss_scale=2.0**16)
    assert all(torch.equal(grads[k], scaled[k]) for k in grads)
    errors = [cc.relative_difference(grads['0.weight'], cc.run(model, x, torch.float16,
                                                              loss_scale=s)[1]['0.weight'])
              for s in (1.0, 2.0**16)]
    assert errors[1] < errors[0] / 2, errors


def test_benchmark_compile_graph_marks_every_step(monkeypatch):
    # torch.compile(mode='reduce-overhead') replays CUDA graph trees: each measured step is
    # announced to them (torch.compile itself is replaced: no compilation needed to see it)
    import benchmark
    compiled, step_marks = [], []
    monkeypatch.setattr(torch, 'compile', lambda model, **kw: compiled.append(kw) or model)
    monkeypatch.setattr(torch.compiler, 'cudagraph_mark_step_begin',
                        lambda: step_marks.append(1))
    rows = benchmark.main([DIGITS, '--batch', '2', '--shape', '32', '32', '--device', 'cpu',
                           '--warmup', '1', '--repeats', '2', '--amp', 'none', '--modes',
                           'inference', '--launch', 'compile', 'compile-graph'])
    assert [r[2] for r in rows] == ['compile', 'compile-graph']
    # through compile_model: inductor's layout optimisation off for VMamba (the mode as options)
    assert compiled == [{'options': {'layout_optimization': False}},
                        {'options': {'triton.cudagraphs': True, 'layout_optimization': False}}]
    assert len(step_marks) == 3  # the warm-up and measured steps of compile-graph only


def test_cuda_graph_launch_needs_a_gpu():
    import benchmark
    from mmvmamba.analysis import measure_throughput
    with pytest.raises(ValueError, match='cuda_graph=True needs a CUDA device'):
        measure_throughput(torch.nn.Conv2d(3, 4, 3), 2, (8, 8), 'cpu', cuda_graph=True)
    with pytest.raises(SystemExit):
        benchmark.main([DIGITS, '--device', 'cpu', '--launch', 'graph'])


def test_compare_peers_measures_every_model_and_case_against_the_reference(tmp_path):
    import json

    import compare_peers
    out = tmp_path / 'rows.json'
    rows = compare_peers.main([DIGITS, '--peers', 'convnext-tiny', '--device', 'cpu', '--batch',
                               '1', '2', '--shape', '32', '32', '--warmup', '0', '--repeats', '1',
                               '--json', str(out)])
    assert [(r['model'], r['batch']) for r in rows] == [
        ('vmamba-nano', 1), ('vmamba-nano', 2), ('mmpretrain convnext-tiny', 1),
        ('mmpretrain convnext-tiny', 2)]
    assert all(r['images_per_s'] > 0 for r in rows)
    # on the CPU the host runs the step: its time is the step's (less the final bookkeeping)
    assert all(0 < r['host_ms'] <= r['ms_per_batch'] * 1.001 for r in rows), rows
    assert [r['ratio'] for r in rows[2:]] == [1.0, 1.0]  # the first peer is the reference
    assert json.loads(out.read_text()) == rows
    with pytest.raises(ValueError, match='family'):
        compare_peers.build_peer('resnet-50')


def test_compare_peers_builds_mmpretrain_peers_under_another_default_scope():
    # a process that ran mmseg (or mmdet) first has that default scope: the peers are still
    # mmpretrain's
    import compare_peers
    import mmseg.models  # noqa: F401
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = compare_peers.build_peer('convnext-tiny')
        assert DefaultScope.get_current_instance().scope_name == 'mmseg'
    assert type(model.backbone).__module__.startswith('mmpretrain.')


def test_compare_peers_builds_a_fresh_model_for_every_launch_mode(monkeypatch):
    # capturing training graphs replaces the module's forward: a model shared between launch
    # modes made the 'compile' rows measure the graphs captured for the 'graph' rows
    import argparse

    import compare_peers
    built, compiled, step_marks = [], [], []

    def build():
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
        built.append(model)
        return model

    def fake_compile(model, **kwargs):
        compiled.append((model, kwargs))
        return model

    monkeypatch.setattr(torch, 'compile', fake_compile)
    monkeypatch.setattr(torch.compiler, 'cudagraph_mark_step_begin',
                        lambda: step_marks.append(1))
    args = argparse.Namespace(modes=['inference', 'train'], amp=['none'], batch=[2],
                              shape=[8, 8], device='cpu', warmup=1, repeats=2,
                              launch=['eager', 'compile', 'compile-graphs'])
    rows = compare_peers.measure_all(args, [('net', build)])
    assert [(r['launch'], r['mode']) for r in rows] == [
        (launch, mode) for launch in args.launch for mode in args.modes]
    assert len(built) == 3 and len({id(m) for m in built}) == 3
    assert [(m, kw) for m, kw in compiled] == [(built[1], {}),
                                               (built[2], {'mode': 'reduce-overhead'})]
    assert len(step_marks) == 2 * 3  # every step of both modes of compile-graphs


def test_compare_peers_times_the_peers_in_their_own_launch_modes(monkeypatch):
    # --peer-launch: VMamba's config switch (launched eagerly) against Swin at its fastest
    # launch, in one process; 'vs best' takes the reference's fastest launch of each case
    import argparse

    import compare_peers
    monkeypatch.setattr(torch, 'compile', lambda model, **kwargs: model)
    build = lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3),  # noqa: E731
                                        torch.nn.AdaptiveAvgPool2d(1))
    args = argparse.Namespace(modes=['inference'], amp=['none'], batch=[2], shape=[8, 8],
                              device='cpu', warmup=0, repeats=1, launch=['eager'],
                              peer_launch=['eager', 'compile'])
    rows = compare_peers.measure_all(args, [('vmamba-nano', build), ('timm net', build),
                                            ('mmpretrain swin-tiny', build)])
    assert [(r['model'], r['launch']) for r in rows] == [
        ('vmamba-nano', 'eager'), ('timm net', 'eager'), ('timm net', 'compile'),
        ('mmpretrain swin-tiny', 'eager'), ('mmpretrain swin-tiny', 'compile')]
    # the ratios' default reference is the first peer, also after several VMamba configs
    assert compare_peers.default_reference(['vmamba-a', 'vmamba-b', 'timm net']) == 'timm net'
    assert compare_peers.default_reference(['vmamba-a', 'vmamba-b']) == 'vmamba-a'
    args.peer_launch = None  # default: the peers follow --launch
    assert compare_peers.launches_of(args, 'timm net') == ['eager']
    assert compare_peers.parse_args(['--peer-launch', 'compile-graphs']).peer_launch == [
        'compile-graphs']

    def row(model, launch, speed, mode='train'):
        return dict(model=model, launch=launch, mode=mode, amp='fp16', batch=128,
                    images_per_s=speed)

    rows = compare_peers.ratios([row('vmamba', 'eager', 2000.0), row('swin', 'eager', 2500.0),
                                 row('swin', 'compile-graphs', 4000.0),
                                 row('vmamba', 'eager', 8000.0, 'inference'),
                                 row('swin', 'compile-graphs', 10000.0, 'inference')], 'swin')
    assert [(r['ratio'], r['ratio_best']) for r in rows] == [
        (0.8, 0.5), (1.0, 0.625), (1.0, 1.0), (None, 0.8), (1.0, 1.0)]
    for r in rows:
        r.update(params=1e6, ms_per_batch=1.0, host_ms=1.0, peak_gib=None)
    lines = compare_peers.table(rows, 'swin').splitlines()
    assert lines[0].endswith('| vs swin | vs best |')
    assert lines[2].endswith('| 0.80x | 0.50x |') and lines[5].endswith('| - | 0.80x |')


def test_compare_peers_applies_cfg_options_to_vmamba_and_names_them():
    import compare_peers
    args = compare_peers.parse_args([DIGITS, '--peers', '--device', 'cpu', '--cfg-options',
                                     'model.backbone.recompute_mlp_act=True'])
    (label, build), = compare_peers.models_to_compare(args)
    assert label == 'vmamba-nano model.backbone.recompute_mlp_act=True'
    mlps = [m for m in build().modules() if hasattr(m, 'recompute_act')]
    assert mlps and all(m.recompute_act for m in mlps)
    plain, = compare_peers.models_to_compare(compare_peers.parse_args([DIGITS, '--peers']))
    assert not any(m.recompute_act for m in plain[1]().modules() if hasattr(m, 'recompute_act'))


def test_compare_peers_refuses_peers_whose_package_is_missing_before_timing(monkeypatch):
    # a peer's package missing is said before any model is built (the default peers are
    # mmpretrain's); no peers asked for, nothing is required
    import importlib.util
    import compare_peers
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name in ('mmpretrain', 'timm') else real(name, *a))
    with pytest.raises(SystemExit, match=r'--peers swin-tiny convnext-tiny: mmpretrain is not'):
        compare_peers.models_to_compare(compare_peers.parse_args([DIGITS]))
    with pytest.raises(SystemExit, match=r'--timm swin_tiny_patch4_window7_224: timm is not'):
        compare_peers.models_to_compare(compare_peers.parse_args(
            [DIGITS, '--peers', '--timm', 'swin_tiny_patch4_window7_224']))
    (label, _), = compare_peers.models_to_compare(compare_peers.parse_args([DIGITS, '--peers']))
    assert label == 'vmamba-nano'


def test_norm_ratios_flags_the_norms_memory_efficient_norm_would_harm(tmp_path, capsys):
    # a whole classifier's checkpoint (mmengine layout, backbone. prefix) and the authors' layout
    # (model key, no prefix): the VSS blocks' norm / norm2 / out_norm are read, nothing else;
    # a channel with bias 50 x its weight is named and fails the default limit
    import norm_ratios
    from mmvmamba.models import VMamba
    backbone = VMamba(dict(dims=8, depths=(1, 1, 2, 1)), out_indices=(3, ))
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    state['layers.2.blocks.1.op.out_norm.bias'][3] = 50 * state[
        'layers.2.blocks.1.op.out_norm.weight'][3].abs()
    ratios = norm_ratios.norm_ratios({'backbone.' + k: v for k, v in state.items()})
    assert len(ratios) == 3 * 5 and 'layers.2.blocks.1.op.out_norm' in ratios
    assert not any('downsample' in n or 'outnorm' in n or 'patch_embed' in n for n in ratios)
    assert torch.isclose(ratios['layers.2.blocks.1.op.out_norm'].max(),
                         torch.tensor(50., dtype=torch.float64))
    path = tmp_path / 'authors.pth'
    torch.save({'model': state}, path)
    assert norm_ratios.main([str(path)]) == 1
    out = capsys.readouterr().out
    assert 'layers.2.blocks.1.op.out_norm | 50 | 1 |' in out and 'leave it off' in out
    # freshly initialised norms (weight 1, bias 0) are safe
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               backbone.state_dict().items()}}, path)
    assert norm_ratios.main([str(path)]) == 0
    assert 'safe for this checkpoint' in capsys.readouterr().out
    torch.save({'state_dict': {'head.fc.weight': torch.ones(2, 2)}}, path)
    with pytest.raises(SystemExit, match='no norm of a VSS block'):
        norm_ratios.main([str(path)])


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error without a CUDA GPU')
@pytest.mark.parametrize('steps, expected', [('2', 'needs a CUDA GPU'), ('-1', 'got -1')])
def test_downstream_profile_names_what_it_needs(steps, expected, capsys):
    import downstream_steps
    with pytest.raises(SystemExit):
        downstream_steps.main(['--tasks', 'det', '--profile', steps])
    assert expected in capsys.readouterr().err


def test_downstream_variants_take_turns_in_their_environment(monkeypatch):
    import downstream_steps
    monkeypatch.delenv('MMVMAMBA_TEST_VARIANT', raising=False)
    seen = []

    def step():
        seen.append(os.environ.get('MMVMAMBA_TEST_VARIANT'))
        return seen[-1]

    variants = ['default', 'MMVMAMBA_TEST_VARIANT=a', 'MMVMAMBA_TEST_VARIANT=b,OTHER_VAR=1']
    results = downstream_steps._alternate(step, variants, warmup=1, repeats=2, rounds=2)
    # warm-up once each, then two rounds of two calls per variant, in turn
    turn = [None, None, 'a', 'a', 'b', 'b']
    assert seen == [None, 'a', 'b'] + turn + turn
    assert [len(results[v]['times']) for v in variants] == [4, 4, 4]
    assert [results[v]['out'] for v in variants] == [None, 'a', 'b']
    assert all(results[v]['clock'] == [] for v in variants)  # no clock given
    assert 'MMVMAMBA_TEST_VARIANT' not in os.environ and 'OTHER_VAR' not in os.environ
    with pytest.raises(ValueError, match="'VAR'"):
        downstream_steps.parse_variant('A=1,VAR')


class _AllocationLog:
    """The memory interface of ``_alternate`` over allocations the steps report."""

    def __init__(self):
        self.live, self.peak = 0, 0

    def allocate(self, gib):
        self.live += gib
        self.peak = max(self.peak, self.live)
        self.live -= gib

    def reset(self):
        self.peak = self.live

    def peak_gib(self):
        return self.peak


def test_downstream_peak_memory_counts_what_the_warm_up_allocates():
    # a CUDA graph allocates while it is recorded (in the warm-up), never when it is replayed
    import downstream_steps
    log = _AllocationLog()
    calls = {'default': 0, 'A_VARIANT=1': 0}

    def step():
        spec = 'A_VARIANT=1' if os.environ.get('A_VARIANT') else 'default'
        calls[spec] += 1
        if calls[spec] == 1:  # the recording
            log.allocate(5.0 if spec == 'default' else 3.0)
        log.allocate(1.0)

    results = downstream_steps._alternate(step, list(calls), warmup=2, repeats=2, rounds=2,
                                          memory=log)
    assert results['default']['peak'] == 5.0
    assert results['A_VARIANT=1']['peak'] == 3.0
    results = downstream_steps._alternate(step, list(calls), warmup=1, repeats=1, rounds=1,
                                          memory=log)
    assert results['default']['peak'] == 1.0  # recorded before: the steps only replay


def test_forward_clock_times_each_forward_of_its_module():
    import time

    import downstream_steps

    class Slow(torch.nn.Module):
        def forward(self, x):
            time.sleep(0.02)
            return x

    slow = Slow()
    clock = downstream_steps.ForwardClock(slow)
    slow(torch.zeros(1))
    slow(torch.zeros(1))
    clock.remove()
    slow(torch.zeros(1))
    assert len(clock.times) == 2 and all(0.02 <= t < 0.5 for t in clock.times), clock.times


def test_downstream_measures_each_variant_of_a_segmentor_on_cpu(monkeypatch):
    import downstream_steps as ds
    monkeypatch.delenv('VMAMBA_SCAN_SEGMENT_PROGRAMS', raising=False)
    config = osp.join(ROOT, 'configs', 'upernet', 'upernet_vmamba-nano_digits-96x96.py')
    option = {'model.backbone.recompute_mlp_act': True}
    rows = ds.measure(config, ds.segmentation_batch(2, 96, 96, classes=11), amp='none',
                      warmup=0, repeats=1, variants=['default', 'VMAMBA_SCAN_SEGMENT_PROGRAMS=64'],
                      cfg_options=option)
    assert [r['variant'] for r in rows] == ['default', 'VMAMBA_SCAN_SEGMENT_PROGRAMS=64']
    assert ds._label(rows[1]) == ('upernet_vmamba-nano_digits-96x96.py model.backbone.'
                                  'recompute_mlp_act=True [VMAMBA_SCAN_SEGMENT_PROGRAMS=64]')
    # the options reach our configs' backbones, and never the task libraries' peers
    model, _ = ds.build(config, 'none', option)
    mlps = [m for m in model.backbone.modules() if hasattr(m, 'recompute_act')]
    assert mlps and all(m.recompute_act for m in mlps)
    assert not ds.takes_options(ds.SEG_CONFIGS[1]) and ds.takes_options(ds.SEG_CONFIGS[0])
    for row in rows:
        assert row['train_s'] > 0 and row['infer_img_s'] > 0 and row['profile'] is None
        # on the CPU the backbone's forward runs within the step, and takes a part of it
        assert 0 < row['backbone_host_s'] < row['train_s']
        assert row['losses'] and all(math.isfinite(v) for v in row['losses'].values()), row
    assert 'VMAMBA_SCAN_SEGMENT_PROGRAMS' not in os.environ


def test_host_profile_counts_the_backward_and_groups_by_package():
    import _profiling

    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            return grad * 2

    def step():
        x = torch.ones(8, requires_grad=True)
        Twice.apply(x).sum().backward()
        return x.grad

    stats = _profiling.host_profile(step, steps=3)
    rows = _profiling.host_rows(stats)
    # the custom Function's backward runs on the profiled thread, once per step
    backward = [r for r in rows if r[1].endswith('(backward)') and 'test_analysis' in r[1]]
    assert len(backward) == 1 and backward[0][2] == 3, backward
    assert _profiling.host_package('~').startswith('C functions')
    assert _profiling.host_package('/x/site-packages/triton/runtime/jit.py').startswith('triton')
    assert _profiling.host_package('/repo/kernels/ss2d_n1.py').startswith('vmamba_kernels')
    assert _profiling.host_package('/repo/mmvmamba/models/ss2d.py').startswith('mmvmamba')


def test_downstream_host_profile_prints_packages_and_functions(capsys):
    import downstream_steps as ds
    config = osp.join(ROOT, 'configs', 'upernet', 'upernet_vmamba-nano_digits-96x96.py')
    rows = ds.measure(config, ds.segmentation_batch(2, 64, 64, classes=11), amp='none',
                      warmup=0, repeats=1, host_profile_steps=1)
    assert rows[0]['host_profile'] is not None and rows[0]['host_profile_steps'] == 1
    import _profiling
    _profiling.print_host_tables(rows[0]['host_profile'], 1, top=5)
    out = capsys.readouterr().out
    assert '| mmvmamba (model) |' in out and '| function (top 5 by own time) |' in out, out
    assert 'host time under cProfile' in out


class _ScaledMlp(torch.nn.Module):
    """fc1 -> GELU -> a linear layer whose weight is computed from a parameter (as autocast's
    weight copies are)."""

    def __init__(self, dim=6, hidden=10):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, hidden)
        self.act = torch.nn.GELU()
        self.w2 = torch.nn.Parameter(torch.randn(dim, hidden))

    def forward(self, x):
        return torch.nn.functional.linear(self.act(self.fc1(x)), self.w2 * 2.0)


def test_saved_activations_attributes_each_saved_tensor_to_its_module():
    import saved_activations
    model = _ScaledMlp()
    batch, dim, hidden = 5, 6, 10
    result = saved_activations.saved_by_module(model, torch.randn(batch, dim))
    f32 = 4
    # fc1 keeps its input, GELU its input (fc1's output); the last linear, run by the model
    # itself, keeps GELU's output
    assert result['activations'] == {
        ('fc1', 'float32'): batch * dim * f32,
        ('act', 'float32'): batch * hidden * f32,
        ('(model)', 'float32'): batch * hidden * f32}
    # fc1's weight (a view of the parameter) and w2 * 2 (computed from a parameter alone)
    assert result['weights'] == 2 * dim * hidden * f32


def test_saved_activations_of_the_compiled_forward():
    import saved_activations
    model = _ScaledMlp()
    batch, dim, hidden = 5, 6, 10
    result = saved_activations.saved_by_compiled_module(model, torch.randn(batch, dim))
    activations = result['activations']
    # the input (fc1's weight gradient needs it; a graph input has no module) and fc1's output
    # (a matmul is not recomputed); GELU's output may be kept or recomputed
    assert activations[('(model)', 'float32')] == batch * dim * 4
    assert activations[('fc1', 'float32')] == batch * hidden * 4
    assert set(activations) <= {('(model)', 'float32'), ('fc1', 'float32'), ('act', 'float32')}
    assert result['weights'] > 0


def test_saved_activations_compares_vmamba_with_a_peer(capsys):
    import saved_activations
    results = saved_activations.main([DIGITS, '--peers', 'convnext-tiny', '--batch', '2',
                                      '--shape', '32', '32', '--amp', 'bf16'])
    assert len(results) == 2
    vmamba, convnext = results.values()
    groups = {group for group, _ in vmamba['activations']}
    assert {'backbone.layers.blocks.op.in_proj', 'backbone.layers.blocks.mlp.fc1'} <= groups
    assert any(group.startswith('backbone.stages') for group, _ in convnext['activations'])
    out = capsys.readouterr().out
    assert 'MiB of activations per image' in out and '| backbone.layers.blocks.op' in out


def test_profile_step_profiles_one_model_a_config_or_a_peer(capsys):
    """The model profile_step.py would profile (its CUDA part needs a GPU: tests/test_gpu.py)."""
    import profile_step
    for argv, says in (([], 'got 0'), (['--peer', 'swin-tiny', '--timm', 'x'], 'got 2'),
                       (['--peer', 'resnet-50'], "'resnet-50'"),
                       (['--peer', 'swin-tiny', '--cfg-options', 'a=1'], 'VMamba config only')):
        with pytest.raises(SystemExit) as exc:
            profile_step.parse_args(argv)
        assert exc.value.code == 2 and says in capsys.readouterr().err
    args = profile_step.parse_args(
        [DIGITS, '--cfg-options', 'model.backbone.memory_efficient_norm=True'])
    label, build = profile_step.model_to_profile(args)
    assert label.endswith('model.backbone.memory_efficient_norm=True')
    model = build()
    assert any(getattr(m, 'memory_efficient', False) for m in model.modules())
    label, build = profile_step.model_to_profile(profile_step.parse_args(['--peer',
                                                                        'convnext-tiny']))
    model = build().eval()
    assert label == 'mmpretrain convnext-tiny'
    assert type(model.backbone).__name__ == 'ConvNeXt'
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
