"""The two inference-only paths of the SS2D core on CPU (the compiled C scan and the torch scan
along rows and columns) against the float64 step-by-step reference over random shapes, and the
dispatch between them and the differentiable path."""
import random
import warnings

import pytest
import torch

import vmamba_kernels as vk
from vmamba_kernels import cpu_scan
from vmamba_kernels.ss2d_grid import scan_lines, ss2d_scan_grid

from .naive import naive_ss2d
from .test_compile import graph_targets
from .test_ss2d_scan import make_inputs, rel_err

# (batch, channels, H, W, rank, d_state): square and oblong maps, single rows / columns, channel
# counts around the C kernel's 16-64 channel blocks, every d_state the models use
SHAPES = [(2, 5, 3, 7, 3, 1), (1, 20, 5, 1, 2, 4), (3, 3, 1, 9, 1, 16), (1, 17, 6, 5, 4, 1),
          (2, 70, 6, 6, 2, 1), (1, 4, 1, 1, 1, 1), (3, 130, 9, 4, 5, 1), (2, 33, 8, 8, 3, 16),
          (1, 65, 4, 11, 6, 2)]


def _random_shapes(count, seed):
    rng = random.Random(seed)
    return [(rng.randint(1, 3), rng.randint(1, 80), rng.randint(1, 9), rng.randint(1, 9),
             rng.randint(1, 6), rng.choice([1, 1, 2, 4, 16])) for _ in range(count)]


@pytest.mark.parametrize('shape', SHAPES + _random_shapes(12, seed=7))
def test_compiled_cpu_scan_matches_float64(shape):
    inputs = make_inputs(*shape)
    ref = naive_ss2d(**{k: v.double() for k, v in inputs.items()})
    y = cpu_scan.ss2d_scan_cpu(**inputs)
    assert y.dtype == torch.float32 and y.shape == inputs['x'].shape
    assert rel_err(y, ref) < 2e-6


@pytest.mark.parametrize('shape', SHAPES + _random_shapes(8, seed=11))
def test_grid_scan_matches_float64(shape):
    inputs = make_inputs(*shape)
    ref = naive_ss2d(**{k: v.double() for k, v in inputs.items()})
    assert rel_err(ss2d_scan_grid(**inputs), ref) < 2e-6
    y64 = ss2d_scan_grid(**{k: v.double() for k, v in inputs.items()})
    assert y64.dtype == torch.float64 and rel_err(y64, ref) < 1e-12


@pytest.mark.parametrize('d_state', [1, 4])
def test_compiled_cpu_scan_any_layout_and_unset_output(d_state, monkeypatch):
    # a channels-last map read as it is, bitwise as its contiguous copy, both against float64;
    # the output, left uninitialised (here: NaN) until the first direction writes it, never read
    inputs = make_inputs(2, 70, 5, 6, 3, d_state, seed=d_state)
    ref = naive_ss2d(**{k: v.double() for k, v in inputs.items()})
    y = cpu_scan.ss2d_scan_cpu(**inputs)
    assert rel_err(y, ref) < 2e-6
    empty = torch.empty
    monkeypatch.setattr(torch, 'empty', lambda *a, **kw: empty(*a, **kw).fill_(float('nan')))
    cl = dict(inputs, x=inputs['x'].contiguous(memory_format=torch.channels_last))
    assert not cl['x'].is_contiguous()
    assert torch.equal(cpu_scan.ss2d_scan_cpu(**cl), y)


def test_compiled_cpu_scan_without_skip_and_with_half_inputs():
    inputs = make_inputs(2, 24, 5, 6, 3, 1, seed=3)
    inputs['D'] = None
    ref = naive_ss2d(**{k: v.double() for k, v in inputs.items() if v is not None})
    assert rel_err(cpu_scan.ss2d_scan_cpu(**inputs), ref) < 2e-6
    half = dict(inputs, x=inputs['x'].bfloat16(), dt_low=inputs['dt_low'].bfloat16())
    ref_half = naive_ss2d(**{k: v.double() for k, v in half.items() if v is not None})
    assert rel_err(cpu_scan.ss2d_scan_cpu(**half), ref_half) < 2e-6


def test_compiled_cpu_scan_does_not_depend_on_the_thread_count():
    inputs = make_inputs(2, 100, 7, 9, 4, 1, seed=5)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(cpu_scan.ss2d_scan_cpu(**inputs))
    finally:
        torch.set_num_threads(threads)
    for out in outs[1:]:
        assert rel_err(out, outs[0]) < 1e-6


def test_scan_lines_is_the_sequential_recurrence():
    g = torch.Generator().manual_seed(0)
    steps, lines = 7, 5
    log_decay = -torch.rand(3, steps, lines, generator=g, dtype=torch.float64) * 2
    inputs = torch.randn(3, steps, lines, generator=g, dtype=torch.float64)
    # the sequence visits line 0's steps, then line 1's, ...
    seq_a = log_decay.transpose(1, 2).reshape(3, -1)
    seq_x = inputs.transpose(1, 2).reshape(3, -1)
    h, expected = torch.zeros(3, dtype=torch.float64), []
    for t in range(seq_x.shape[1]):
        h = torch.exp(seq_a[:, t]) * h + seq_x[:, t]
        expected.append(h)
    expected = torch.stack(expected, 1).view(3, lines, steps).transpose(1, 2)
    assert torch.allclose(scan_lines(log_decay, inputs), expected, rtol=1e-12, atol=1e-12)


def test_dispatch_inference_gradients_and_tracing(monkeypatch):
    inputs = make_inputs(1, 8, 4, 5, 2, 1, seed=9)
    calls = []
    monkeypatch.setattr(cpu_scan, 'ss2d_scan_cpu',
                        lambda *a: calls.append('c') or ss2d_scan_grid(*a))
    with torch.no_grad():
        vk.ss2d_scan(**inputs, backend='torch')
    assert calls == ['c']
    # gradients: the differentiable path, whose result carries a graph
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    assert vk.ss2d_scan(**leaves, backend='torch').requires_grad and calls == ['c']
    # traced (ONNX export, torch.jit): torch ops only
    traced = torch.jit.trace(lambda x: vk.ss2d_scan(x, *list(inputs.values())[1:]),
                             (inputs['x'], ), check_trace=False)
    assert calls == ['c'] and torch.allclose(traced(inputs['x']),
                                             ss2d_scan_grid(**inputs), atol=1e-6)
    # float64 and d_state > 16: the torch scan
    with torch.no_grad():
        vk.ss2d_scan(**{k: v.double() for k, v in inputs.items()}, backend='torch')
        vk.ss2d_scan(**make_inputs(1, 4, 3, 3, 1, 17), backend='torch')
    assert calls == ['c']


def scan_then_tanh(**kw):
    return torch.tanh(vk.ss2d_scan(**kw, backend='torch'))


@pytest.mark.parametrize('shape', [(2, 5, 3, 7, 3, 1), (1, 70, 6, 5, 2, 4)])
def test_compiled_inference_calls_the_c_scan_as_one_operator(shape):
    # under torch.compile without gradients the C scan is one opaque operator of the graph (the
    # torch scan's step loop is not traced in), and the result is the eager C scan's; inductor
    # (what users get) for one shape, the recorded graph run as is for both
    inputs = make_inputs(*shape, seed=5)
    ref = naive_ss2d(**{k: v.double() for k, v in inputs.items()})
    with torch.no_grad():
        eager = scan_then_tanh(**inputs)
        ops, out = graph_targets(scan_then_tanh, **inputs)
        assert str(torch.ops.vmamba_kernels.ss2d_scan_cpu.default) in ops, ops
        assert len(ops) < 10, ops  # the scan, tanh and little else: no unrolled step loop
        assert rel_err(out, eager) < 1e-6 and rel_err(out, torch.tanh(ref)) < 2e-6
        if shape[-1] == 1:
            torch._dynamo.reset()
            out = torch.compile(scan_then_tanh, backend='inductor', fullgraph=True)(**inputs)
            assert rel_err(out, eager) < 1e-6


def test_exports_and_gradients_keep_torch_ops_under_compile():
    # torch.export (what the ONNX exporter traces) must not hold this package's operators: the
    # torch scan along rows and columns; with gradients, the differentiable path
    inputs = make_inputs(1, 6, 4, 5, 2, 1, seed=3)

    class Scan(torch.nn.Module):
        def forward(self, x):
            rest = {k: v for k, v in inputs.items() if k != 'x'}
            return vk.ss2d_scan(x, **rest, backend='torch')

    with torch.no_grad():
        exported = torch.export.export(Scan(), (inputs['x'], ))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == 'call_function']
    assert not any('vmamba_kernels' in t for t in targets), targets
    assert rel_err(exported.module()(inputs['x']), ss2d_scan_grid(**inputs)) < 1e-6
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    ops, out = graph_targets(scan_then_tanh, **leaves)
    assert str(torch.ops.vmamba_kernels.ss2d_scan_cpu.default) not in ops and out.requires_grad


def test_unavailable_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    inputs = make_inputs(1, 6, 3, 4, 2, 1, seed=1)
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv('VMAMBA_CPU_KERNEL_CACHE', str(tmp_path / 'cache'))
    cpu_scan._library.cache_clear()
    try:
        with pytest.warns(UserWarning, match='compiled CPU scan is unavailable'):
            assert not cpu_scan.cpu_kernel_available()
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # said once, not at every call
            with torch.no_grad():
                y = vk.ss2d_scan(**inputs, backend='torch')
        ref = naive_ss2d(**{k: v.double() for k, v in inputs.items()})
        assert rel_err(y, ref) < 2e-6
        with pytest.raises(RuntimeError, match='unavailable'):
            cpu_scan.ss2d_scan_cpu(**inputs)
        monkeypatch.setenv('VMAMBA_CPU_KERNEL', '0')
        cpu_scan._library.cache_clear()
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # switched off on purpose: no warning
            assert not cpu_scan.cpu_kernel_available()
    finally:
        cpu_scan._library.cache_clear()


def test_cpu_kernel_switch_refuses_other_values(monkeypatch):
    # only 0 turns the C scan off; a value meant as "off" in another spelling is an error naming
    # the variable, not a kernel silently left on
    cpu_scan._library.cache_clear()
    try:
        monkeypatch.setenv('VMAMBA_CPU_KERNEL', 'false')
        with pytest.raises(ValueError, match=r"\$VMAMBA_CPU_KERNEL must be one of 0 \(off\), "
                                             r"1 \(on where it can be built\), got 'false'"):
            cpu_scan.cpu_kernel_available()
        monkeypatch.setenv('VMAMBA_CPU_KERNEL', '0')
        assert not cpu_scan.cpu_kernel_available()
    finally:
        cpu_scan._library.cache_clear()


def test_kernel_is_built_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv('VMAMBA_CPU_KERNEL_CACHE', str(tmp_path))
    cpu_scan._library.cache_clear()
    try:
        assert cpu_scan.cpu_kernel_available()
        built = list(tmp_path.glob('ss2d_scan-*.so'))
        assert len(built) == 1
        stamp = built[0].stat().st_mtime_ns
        cpu_scan._library.cache_clear()
        assert cpu_scan.cpu_kernel_available()
        assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt
    finally:
        cpu_scan._library.cache_clear()

