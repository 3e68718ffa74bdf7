"""SS2D core: Triton path (interpreter on CPU) and torch path against the float64 step-by-step
reference, over random shapes; gradcheck; determinism; backend switch; bad input."""
import math
import random

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

import vmamba_kernels as vk
from vmamba_kernels import ss2d_scan_triton

from .naive import _direction_order, naive_selective_scan, naive_ss2d

PARAMS = ('x', 'dt_low', 'dt_weight', 'dt_bias', 'A', 'Bs', 'Cs', 'D')


def make_inputs(batch, channels, height, width, rank, d_state, dtype=torch.float32, seed=None):
    """Fresh random inputs in the ranges the model produces (dt bias from Mamba's init)."""
    g = torch.Generator().manual_seed(seed if seed is not None else random.randrange(1 << 30))
    length = height * width
    dt = torch.exp(torch.rand(4, channels, generator=g) * math.log(100) + math.log(1e-3))
    return dict(
        x=torch.randn(batch, channels, height, width, generator=g).to(dtype),
        dt_low=(torch.randn(batch, 4, rank, length, generator=g) * 0.7).to(dtype),
        dt_weight=torch.randn(4, channels, rank, generator=g) * rank**-0.5,
        dt_bias=dt + torch.log(-torch.expm1(-dt)),
        A=-(torch.rand(4 * channels, d_state, generator=g) * 3 + 0.05),
        Bs=torch.randn(batch, 4, d_state, length, generator=g).to(dtype),
        Cs=torch.randn(batch, 4, d_state, length, generator=g).to(dtype),
        D=torch.randn(4 * channels, generator=g))


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def forward_and_grads(fn, inputs, grad_out):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    y = fn(**leaves)
    grads = torch.autograd.grad(y, list(leaves.values()), grad_out.to(y.dtype))
    return y, dict(zip(leaves, grads))


def check_against_reference(fn, inputs, tol):
    ref_in = {k: v.double() for k, v in inputs.items()}
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    y_ref, g_ref = forward_and_grads(naive_ss2d, ref_in, grad_out)
    y, g = forward_and_grads(fn, inputs, grad_out)
    assert y.shape == inputs['x'].shape and y.dtype in (torch.float32, torch.float64)
    assert rel_err(y, y_ref) <= tol, ('y', rel_err(y, y_ref))
    for name in (p for p in PARAMS if p in inputs):  # D may be left out
        assert g[name].dtype == inputs[name].dtype
        assert rel_err(g[name], g_ref[name]) <= tol, (name, rel_err(g[name], g_ref[name]))


def check_compiled_matches_eager(fn, inputs, operators):
    """``fn`` under torch.compile (AOTAutograd's forward and backward graphs run as traced)
    against eager: each name of ``operators`` among the graphs' targets (a launch compiled as one
    opaque operator), the output and every gradient within 1e-6."""
    torch._dynamo.reset()
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    graphs = []

    def keep(gm, _):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    compiled = torch.compile(fn, fullgraph=True,
                             backend=aot_autograd(fw_compiler=keep, bw_compiler=keep))
    y, g = forward_and_grads(compiled, inputs, grad_out)
    y_eager, g_eager = forward_and_grads(fn, inputs, grad_out)
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes}
    for operator in operators:
        assert any(operator in t for t in targets), operator
    assert rel_err(y, y_eager) <= 1e-6
    for name in PARAMS:
        assert rel_err(g[name], g_eager[name]) <= 1e-6, name


# (batch, channels, H, W, rank, d_state): odd and unit sizes, several channel counts and batches
TRITON_SHAPES = [(2, 5, 3, 7, 3, 1), (1, 20, 5, 1, 2, 4), (3, 3, 1, 9, 1, 16), (1, 17, 6, 5, 4, 1)]
TORCH_SHAPES = TRITON_SHAPES + [(4, 33, 11, 13, 5, 1), (2, 8, 1, 1, 2, 16), (1, 6, 23, 3, 3, 4)]


@pytest.mark.parametrize('shape', TRITON_SHAPES)
def test_triton_fp32_matches_float64_reference(shape):
    check_against_reference(lambda **kw: vk.ss2d_scan(**kw, backend='triton'),
                            make_inputs(*shape), 1e-5)


def test_triton_chunk_carries_match_reference():
    # many chunks per sequence and several channel blocks: exercises the state carried between
    # chunks in the forward and the gradient carried backwards in the backward
    check_against_reference(lambda **kw: ss2d_scan_triton(**kw, block_c=16, block_l=16),
                            make_inputs(1, 20, 7, 6, 2, 4), 1e-5)


@pytest.mark.parametrize('project_first', [False, True])
@pytest.mark.parametrize('transpose_columns', [False, True])
@pytest.mark.parametrize('shape', [(2, 5, 3, 7, 3, 1), (1, 9, 6, 5, 2, 1), (1, 3, 1, 9, 2, 1),
                                   (1, 4, 5, 3, 8, 1)])
def test_triton_d_state_1_both_column_walks_match_reference(shape, transpose_columns,
                                                            project_first):
    # d_state 1 has kernels of its own: chunks of 16 steps (carries forwards and backwards, the
    # reversed directions walked chunk by chunk from the end), 2-5 channel blocks in the forward
    # and a different block in the backward, column directions strided or transposed (with
    # their dt_low / Bs / Cs rows then copied column-major), the dt projection in the kernels
    # (rank 8: unrolled) or a GEMM before them
    fn = lambda **kw: ss2d_scan_triton(  # noqa: E731
        **kw, block_c=2, block_l=16, bwd_block_c=4, transpose_columns=transpose_columns,
        project_first=project_first)
    check_against_reference(fn, make_inputs(*shape), 1e-5)


@pytest.mark.parametrize('shape,segments,bwd_segments,project_first,use_d', [
    ((2, 5, 6, 7, 3, 1), 3, 2, False, True),  # 3 chunks: one per segment
    ((1, 4, 9, 11, 2, 1), 2, 3, True, True),  # 7 chunks: segments of 4 + 3 and 3 + 3 + 1
    ((1, 3, 5, 13, 2, 1), 4, 1, False, False),  # no D; the backward unsegmented
    ((2, 2, 1, 40, 2, 1), 9, 9, False, True),  # more segments asked than chunks
])
def test_triton_d_state_1_segmented_walks_match_reference(shape, segments, bwd_segments,
                                                          project_first, use_d):
    # each direction's walk split into runs of chunks walked by different programs, the state
    # (forward) and the carried gradient (backward) entering each run found by a pre-pass over
    # the runs' summaries: the same result as one program walking it all
    inputs = make_inputs(*shape)
    if not use_d:
        inputs.pop('D')
    fn = lambda **kw: ss2d_scan_triton(  # noqa: E731
        **kw, block_c=2, block_l=16, bwd_block_c=4, transpose_columns=True,
        project_first=project_first, segments=segments, bwd_segments=bwd_segments)
    check_against_reference(fn, inputs, 1e-5)


def test_triton_d_state_1_segments_need_transposed_columns():
    inputs = make_inputs(1, 3, 4, 5, 2, 1, seed=0)
    with pytest.raises(ValueError, match='segments > 1 needs .*transpose_columns=True'):
        ss2d_scan_triton(**inputs, block_l=16, transpose_columns=False, segments=2)
    with pytest.raises(ValueError, match="bwd_segments must be a positive integer, got 0"):
        ss2d_scan_triton(**inputs, transpose_columns=True, bwd_segments=0)


def test_triton_d_state_1_register_caps_reach_the_launches(monkeypatch):
    # maxnreg / bwd_maxnreg are launch options of the forward and backward kernels (the
    # interpreter ignores them; tests/test_gpu.py checks capped kernels' results on the GPU)
    from vmamba_kernels import ss2d_n1
    seen = {}
    for name in ('_ss2d_fwd_n1_kernel', '_ss2d_bwd_n1_kernel'):
        kernel = getattr(ss2d_n1, name)

        class Recorder:
            def __getitem__(self, grid, kernel=kernel, name=name):
                def launch(*args, **kw):
                    seen[name] = kw['maxnreg']
                    return kernel[grid](*args, **kw)
                return launch
        monkeypatch.setattr(ss2d_n1, name, Recorder())
    inputs = make_inputs(1, 3, 4, 5, 2, 1, seed=0)
    fn = lambda **kw: ss2d_scan_triton(**kw, block_l=16, maxnreg=64, bwd_maxnreg=88)  # noqa
    check_against_reference(fn, inputs, 1e-5)
    assert seen == {'_ss2d_fwd_n1_kernel': 64, '_ss2d_bwd_n1_kernel': 88}
    check_against_reference(lambda **kw: ss2d_scan_triton(**kw, block_l=16), inputs, 1e-5)
    assert seen == {'_ss2d_fwd_n1_kernel': None, '_ss2d_bwd_n1_kernel': None}
    for bad in (0, 16, 256, 64.0):
        with pytest.raises(ValueError, match=f'bwd_maxnreg must be an integer from 24 to 255 '
                                             f'.*got {bad!r}'):
            ss2d_scan_triton(**inputs, bwd_maxnreg=bad)


@pytest.mark.parametrize('rank', [15, 16])
def test_triton_d_state_1_projects_first_from_rank_16_by_default(rank, monkeypatch):
    from vmamba_kernels import ss2d_n1
    calls = []
    projected_dt = ss2d_n1._projected_dt
    monkeypatch.setattr(ss2d_n1, '_projected_dt',
                        lambda *args: calls.append(args) or projected_dt(*args))
    check_against_reference(lambda **kw: ss2d_scan_triton(**kw, block_l=16),
                            make_inputs(1, 3, 4, 5, rank, 1), 1e-5)
    assert bool(calls) == (rank >= ss2d_n1.PROJECT_FROM_RANK == 16)


def test_triton_d_state_1_projection_dtype():
    # float16 dt_low (fp16 autocast): the dt projection's GEMMs, the projected pre-activation
    # and its gradient in float16; bf16 (8-bit mantissa: past 1e-2) and float32: float32
    from vmamba_kernels.ss2d_n1 import _projection_dtype
    assert _projection_dtype(torch.float16) == torch.float16
    assert _projection_dtype(torch.bfloat16) == _projection_dtype(torch.float32) == torch.float32


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('transpose_columns,project_first', [(False, True), (True, False)])
def test_triton_d_state_1_half_inputs_and_deterministic(transpose_columns, project_first, dtype):
    # half-precision inputs, the dt projection before the kernels or in them (with float16
    # inputs its GEMMs and d(pre-activation) are float16); the state stays float32
    half = {'x', 'dt_low', 'Bs', 'Cs'}
    inputs = make_inputs(2, 6, 5, 7, 2, 1)
    inputs = {k: v.to(dtype) if k in half else v for k, v in inputs.items()}
    fn = lambda **kw: ss2d_scan_triton(  # noqa: E731
        **kw, block_l=16, transpose_columns=transpose_columns, project_first=project_first)
    check_against_reference(fn, inputs, 1e-2)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    (y1, g1), (y2, g2) = (forward_and_grads(fn, inputs, grad_out) for _ in range(2))
    assert torch.equal(y1, y2)
    for name in PARAMS:
        assert torch.equal(g1[name], g2[name]), name


@pytest.mark.parametrize('shape,dtype', [((2, 5, 3, 7, 3, 1), torch.float32),
                                         ((1, 6, 5, 4, 2, 1), torch.float16),
                                         ((1, 4, 3, 5, 2, 4), torch.float32)])
def test_unfused_baseline_matches_float64_reference(shape, dtype):
    # the benchmark's unfused baseline: the same kernels over inputs cross-scanned beforehand,
    # per-direction outputs merged afterwards, against float64 (d_state 1 and the general
    # kernels; float16 inputs: its per-direction dx in the map's dtype)
    from vmamba_kernels.reference import cross_merge, cross_scan, to_scan_order
    height, width = shape[2], shape[3]

    def unfused(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D):
        ys = vk.ss2d_scan_unfused_triton(
            cross_scan(x), to_scan_order(dt_low, height, width), dt_weight, dt_bias, A,
            to_scan_order(Bs, height, width), to_scan_order(Cs, height, width), D, height,
            width)
        assert ys.shape == (x.shape[0], 4, x.shape[1], height * width)
        return cross_merge(ys.float(), height, width)

    half = {'x', 'dt_low', 'Bs', 'Cs'}
    inputs = {k: v.to(dtype) if k in half else v for k, v in make_inputs(*shape).items()}
    check_against_reference(unfused, inputs, 1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize('transpose_columns,segments,rows', [(False, 1, None), (True, 1, None),
                                                             (True, 3, None), (False, 1, 3),
                                                             (True, 2, 2), (False, 1, 9)])
def test_triton_d_state_1_atomic_channel_sums(transpose_columns, segments, rows):
    # dB and dC summed over the 4 channel blocks by atomics into one row or a few (block i into
    # row i % rows; 9: more rows than blocks), each direction's walk whole or in segments,
    # against float64 and against the per-block rows
    inputs = make_inputs(2, 7, 5, 9, 3, 1, seed=3)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    results = {}
    for atomic in (True, False):
        fn = lambda **kw: ss2d_scan_triton(  # noqa: E731
            **kw, block_c=2, block_l=16, bwd_block_c=2, transpose_columns=transpose_columns,
            bwd_segments=segments, bwd_atomic_sums=atomic,
            bwd_sum_rows=rows if atomic else None)
        check_against_reference(fn, inputs, 1e-5)
        results[atomic] = forward_and_grads(fn, inputs, grad_out)[1]
    for name in PARAMS:
        assert torch.allclose(results[True][name], results[False][name], rtol=1e-5,
                              atol=1e-6), name


def test_triton_d_state_1_backward_defaults_and_bad_value(monkeypatch):
    # atomics on every map while deterministic algorithms are not asked for, into 16 rows on
    # maps of 128 to 511 positions and into one elsewhere
    from vmamba_kernels import ss2d_n1
    for length, rows in ((3136, 1), (784, 1), (512, 1), (511, 16), (196, 16), (128, 16),
                         (127, 1), (49, 1)):
        bwd = ss2d_n1.n1_launch_config(length)[1]
        assert (bwd['atomic_sums'], bwd['sum_rows']) == (True, rows), length
    assert ss2d_n1.n1_launch_config(196, bwd_sum_rows=3)[1]['sum_rows'] == 3
    assert ss2d_n1.n1_launch_config(196, bwd_atomic_sums=False)[1]['atomic_sums'] is False
    assert ss2d_n1.n1_launch_config(196, bwd_atomic_sums=True)[1]['atomic_sums'] is True
    assert ss2d_n1.n1_launch_config(3136, bwd_atomic_sums=False)[1]['atomic_sums'] is False
    monkeypatch.setattr(torch, 'are_deterministic_algorithms_enabled', lambda: True)
    assert ss2d_n1.n1_launch_config(3136)[1]['atomic_sums'] is False
    assert ss2d_n1.n1_launch_config(196)[1]['atomic_sums'] is False
    assert ss2d_n1.n1_launch_config(3136, bwd_atomic_sums=True)[1]['atomic_sums'] is True
    with pytest.raises(ValueError, match="bwd_atomic_sums must be True, False or None, got 'yes'"):
        ss2d_n1.n1_launch_config(64, bwd_atomic_sums='yes')
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match=f'bwd_sum_rows must be a positive integer, '
                                             f'got {bad!r}'):
            ss2d_n1.n1_launch_config(64, bwd_sum_rows=bad)
    # rows to add into ask for the atomics, even on a small map or under deterministic
    # algorithms, and refuse their explicit absence
    assert ss2d_n1.n1_launch_config(196, bwd_sum_rows=4)[1]['atomic_sums'] is True
    with pytest.raises(ValueError, match=r'bwd_sum_rows \(4\) are rows that atomics add into'):
        ss2d_n1.n1_launch_config(196, bwd_sum_rows=4, bwd_atomic_sums=False)
    # the default backward tile on large maps runs under a register cap of 80; a tile of one's
    # own, or a small map, under none unless asked
    assert ss2d_n1.n1_launch_config(3136)[1]['maxnreg'] == 80
    assert ss2d_n1.n1_launch_config(3136, bwd_block_c=4)[1]['maxnreg'] is None
    assert ss2d_n1.n1_launch_config(3136, bwd_maxnreg=96)[1]['maxnreg'] == 96
    assert ss2d_n1.n1_launch_config(196)[1]['maxnreg'] is None


@pytest.mark.parametrize('shape', TORCH_SHAPES)
def test_torch_path_fp32_matches_float64_reference(shape):
    check_against_reference(lambda **kw: vk.ss2d_scan(**kw, backend='torch'),
                            make_inputs(*shape), 1e-5)


def test_torch_path_small_chunks_match_reference():
    check_against_reference(lambda **kw: vk.ss2d_scan_torch(**kw, chunk_size=3),
                            make_inputs(2, 6, 4, 5, 2, 4), 1e-5)


@pytest.mark.parametrize('backend', ['triton', 'torch'])
def test_bf16_inputs_within_1e_2(backend):
    bf16 = {'x', 'dt_low', 'Bs', 'Cs'}
    inputs = make_inputs(2, 12, 5, 7, 3, 4)
    inputs = {k: v.bfloat16() if k in bf16 else v for k, v in inputs.items()}
    check_against_reference(lambda **kw: vk.ss2d_scan(**kw, backend=backend), inputs, 1e-2)


def test_torch_path_gradcheck_float64():
    inputs = {k: v.double().requires_grad_(True) for k, v in make_inputs(1, 3, 3, 2, 2, 2).items()}
    names = list(inputs)

    def fn(*args):
        return vk.ss2d_scan_torch(**dict(zip(names, args)), chunk_size=2)

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), eps=1e-6, atol=1e-6)


def test_triton_backward_is_bitwise_deterministic():
    inputs = make_inputs(2, 10, 4, 5, 2, 4)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    fn = lambda **kw: ss2d_scan_triton(**kw, block_c=16, block_l=16)  # noqa: E731
    y1, g1 = forward_and_grads(fn, inputs, grad_out)
    y2, g2 = forward_and_grads(fn, inputs, grad_out)
    assert torch.equal(y1, y2)
    for name in PARAMS:
        assert torch.equal(g1[name], g2[name]), name


@pytest.mark.parametrize('groups,use_d,use_bias,softplus', [(1, True, True, True),
                                                          (3, False, False, False),
                                                          (6, True, False, True)])
def test_selective_scan_torch_matches_step_by_step(groups, use_d, use_bias, softplus):
    batch, channels, length, d_state = 2, 6, 37, 4
    u = torch.randn(batch, channels, length)
    delta = torch.rand(batch, channels, length) * 0.5
    A = -torch.rand(channels, d_state) * 2
    B = torch.randn(batch, groups, d_state, length)
    C = torch.randn(batch, groups, d_state, length)
    D = torch.randn(channels) if use_d else None
    bias = torch.randn(channels) * 0.3 if use_bias else None
    ref = naive_selective_scan(u, delta, A, B, C, D, bias, softplus)
    chunked = vk.selective_scan_torch(u, delta, A, B, C, D, bias, softplus, chunk_size=8)
    with torch.no_grad():  # no gradient needed and no chunk forced: the step loop
        stepped = vk.selective_scan_torch(u, delta, A, B, C, D, bias, softplus)
    assert rel_err(chunked, ref) <= 1e-5 and rel_err(stepped, ref) <= 1e-5


def test_chunked_scan_recomputes_chunks_beyond_the_kept_memory_cap(monkeypatch):
    # with gradients, every chunk's (T, T) decay matrix used to be held for the backward
    # (VMamba-T training on the CPU at 512 x 512: 20.7 GiB); above the cap each chunk is
    # recomputed in the backward, with the same gradients (float64 step-by-step reference)
    from vmamba_kernels import reference
    batch, channels, length, d_state, T = 2, 6, 40, 3, 8
    g = torch.Generator().manual_seed(5)
    leaves = [torch.randn(batch, channels, length, generator=g, dtype=torch.float64),
              torch.rand(batch, channels, length, generator=g, dtype=torch.float64) * 0.5,
              -torch.rand(channels, d_state, generator=g, dtype=torch.float64) * 2,
              torch.randn(batch, 2, d_state, length, generator=g, dtype=torch.float64),
              torch.randn(batch, 2, d_state, length, generator=g, dtype=torch.float64),
              torch.randn(channels, generator=g, dtype=torch.float64)]
    leaves = [t.requires_grad_(True) for t in leaves]
    ref = naive_selective_scan(*leaves)
    ref_grads = torch.autograd.grad(ref.square().sum(), leaves)
    kept = {}
    decay_elements = batch * channels * d_state * length * T
    for cap in (decay_elements, decay_elements - 1):  # at the cap: kept; one below: recomputed
        monkeypatch.setattr(reference, 'MAX_KEPT_DECAY_ELEMENTS', cap)
        held = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: held.append(t.numel()) or t, lambda t: t):
            y = vk.selective_scan_torch(*leaves, chunk_size=T)
        kept[cap] = sum(held)
        grads = torch.autograd.grad(y.square().sum(), leaves)
        assert rel_err(y, ref) <= 1e-12
        assert all(rel_err(a, b) <= 1e-12 for a, b in zip(grads, ref_grads))
    # recomputing holds none of the decay matrices (nor the exponents they are made from)
    assert kept[decay_elements] - kept[decay_elements - 1] >= decay_elements, kept


def test_ss2d_torch_inference_path_matches_reference():
    inputs = make_inputs(2, 7, 5, 3, 2, 4)
    with torch.no_grad():
        y = vk.ss2d_scan_torch(**inputs)
    assert rel_err(y, naive_ss2d(**{k: v.double() for k, v in inputs.items()})) <= 1e-5


@pytest.mark.parametrize('height,width', [(1, 1), (3, 5), (4, 1), (6, 6)])
def test_cross_scan_and_merge_follow_the_four_orders(height, width):
    x = torch.randn(2, 3, height, width)
    xs = vk.cross_scan(x)
    flat = x.flatten(2)
    for k in range(4):
        assert torch.equal(xs[:, k], flat[:, :, _direction_order(k, height, width)])
    ys = torch.randn(2, 4, 3, height * width)
    merged = torch.zeros_like(flat)
    for k in range(4):
        merged[:, :, _direction_order(k, height, width)] += ys[:, k]
    assert torch.allclose(vk.cross_merge(ys, height, width).flatten(2), merged)


def test_backend_switch(monkeypatch):
    x = torch.zeros(1)
    monkeypatch.delenv(vk.BACKEND_ENV, raising=False)
    assert vk.resolve_backend(None, x) == 'torch'  # auto on CPU
    assert vk.resolve_backend('torch', x) == 'torch'
    monkeypatch.setenv(vk.BACKEND_ENV, 'triton')
    assert vk.resolve_backend(None, x) == 'triton'  # the interpreter is on in tests
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(ValueError, match='needs CUDA tensors'):
        vk.resolve_backend(None, x)
    monkeypatch.setenv(vk.BACKEND_ENV, 'cuda')
    with pytest.raises(ValueError, match=r"\$VMAMBA_SCAN_BACKEND must be one of auto, triton, "
                                         r"torch, got 'cuda'"):
        vk.resolve_backend(None, x)
    with pytest.raises(ValueError, match=r"backend must be one of .*, got 'gpu'"):
        vk.resolve_backend('gpu', x)


def test_env_backend_is_used_by_ss2d_scan(monkeypatch):
    inputs = make_inputs(1, 3, 2, 3, 2, 1)
    monkeypatch.setenv(vk.BACKEND_ENV, 'triton')
    y_triton = vk.ss2d_scan(**inputs)
    monkeypatch.setenv(vk.BACKEND_ENV, 'torch')
    y_torch = vk.ss2d_scan(**inputs)
    assert rel_err(y_triton, y_torch) < 1e-5


def _bad(**changes):
    inputs = make_inputs(2, 4, 3, 3, 2, 1, seed=0)
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize('backend', ['triton', 'torch'])
@pytest.mark.parametrize('changes,error,match', [
    (dict(x=torch.randn(2, 4, 9)), ValueError, r'x must have 4 dimensions, got shape \(2, 4, 9\)'),
    (dict(x=torch.randn(2, 4, 3, 3).int()), TypeError, 'x must have dtype'),
    (dict(dt_low=torch.randn(2, 4, 2, 8)), ValueError, r'dt_low must have shape \(2, 4, 2, 9\)'),
    (dict(dt_weight=torch.randn(4, 5, 2)), ValueError, 'dt_weight must have shape'),
    (dict(A=torch.randn(16, 1, 1)), ValueError, 'A must have 2 dimensions'),
    (dict(A=torch.randn(12, 1)), ValueError, r'A must have shape \(16, d_state\)'),
    (dict(Bs=torch.randn(2, 2, 1, 9)), ValueError, r'Bs must have shape \(2, 4, 1, 9\)'),
    (dict(Cs=torch.randn(2, 4, 2, 9)), ValueError, 'Cs must have shape'),
    (dict(D=torch.randn(4)), ValueError, r'D must have shape \(16,\)'),
    (dict(dt_bias=torch.randn(4, 4, device='meta')), ValueError, 'dt_bias is on meta'),
    (dict(x=[[1.0]]), TypeError, 'x must be a torch.Tensor'),
])
def test_bad_input_names_the_argument(backend, changes, error, match):
    with pytest.raises(error, match=match):
        vk.ss2d_scan(**_bad(**changes), backend=backend)


def test_triton_refuses_non_contiguous_and_float64():
    inputs = make_inputs(2, 4, 3, 3, 2, 1, seed=0)
    inputs['Bs'] = torch.randn(2, 4, 1, 18)[..., ::2]
    with pytest.raises(ValueError, match='Bs must be contiguous'):
        vk.ss2d_scan(**inputs, backend='triton')
    with pytest.raises(TypeError, match='float64'):
        vk.ss2d_scan(**{k: v.double() for k, v in make_inputs(1, 2, 2, 2, 1, 1).items()},
                     backend='triton')


def test_d_state_1_options_with_a_larger_d_state_name_the_reason():
    from vmamba_kernels.dispatch import ss2d_scan_triton
    inputs = make_inputs(1, 4, 3, 3, 2, 2, seed=0)
    with pytest.raises(TypeError, match=r"\['whole_map'\] apply to d_state 1 only.*d_state 2"):
        ss2d_scan_triton(**inputs, whole_map=True)


def test_selective_scan_mismatched_groups():
    u = torch.randn(1, 6, 5)
    with pytest.raises(ValueError, match=r'multiple of groups \(4\)'):
        vk.selective_scan_torch(u, u, torch.randn(6, 2), torch.randn(1, 4, 2, 5),
                                torch.randn(1, 4, 2, 5))
    with pytest.raises(ValueError, match='same number of groups'):
        vk.selective_scan_torch(u, u, torch.randn(6, 2), torch.randn(1, 3, 2, 5),
                                torch.randn(1, 2, 2, 5))


def test_auto_segments_reach_the_programs_asked_for(monkeypatch):
    from vmamba_kernels import ss2d_n1
    monkeypatch.delenv(ss2d_n1.SEGMENT_PROGRAMS_ENV, raising=False)
    assert ss2d_n1.auto_segments(24, 1000) == 1  # off by default
    monkeypatch.setenv(ss2d_n1.SEGMENT_PROGRAMS_ENV, '1000')
    assert ss2d_n1.auto_segments(24, 1000) == 42  # 24 programs x 42 segments >= 1000
    assert ss2d_n1.auto_segments(24, 10) == 10  # at most one per chunk
    assert ss2d_n1.auto_segments(1536, 49) == 1  # enough programs already
    monkeypatch.setenv(ss2d_n1.SEGMENT_PROGRAMS_ENV, 'many')
    with pytest.raises(ValueError, match="VMAMBA_SCAN_SEGMENT_PROGRAMS must be an integer.*'many'"):
        ss2d_n1.auto_segments(24, 1000)
    # routed through ss2d_scan: a long walk at batch 1 split, the result unchanged
    monkeypatch.setenv(ss2d_n1.SEGMENT_PROGRAMS_ENV, '8')
    inputs = make_inputs(1, 2, 4, 9, 2, 1, seed=0)
    launches = []
    real = ss2d_n1._segment_layout
    monkeypatch.setattr(ss2d_n1, '_segment_layout',
                        lambda *a: launches.append(real(*a)) or launches[-1])
    check_against_reference(lambda **kw: ss2d_scan_triton(**kw, block_l=16,
                                                          transpose_columns=True), inputs, 1e-5)
    assert {n_segments for _, _, n_segments in launches} == {3}  # 36 steps: 3 chunks of 16


# maps for the transposes by tiles: one tile, several with partial edges (tiles of 16 to 64 a
# side), non-square, one row, one 64-row tile with a column of tiles past it
TRANSPOSE_MAPS = [((2, 3, 5, 7), torch.float16), ((1, 2, 33, 40), torch.bfloat16),
                  ((2, 1, 36, 3), torch.float32), ((1, 1, 64, 65), torch.float16),
                  ((1, 2, 1, 130), torch.float16)]


@pytest.mark.parametrize('shape,dtype', TRANSPOSE_MAPS)
def test_add_transposed_against_torch(shape, dtype):
    # the backward's dx: the rows' float32 map plus the columns' transposed one, cast in the same
    # pass: within one output ulp of the float64 sum, and bitwise torch's float32 sum rounded
    # to nearest (bfloat16: not here, where Triton's interpreter truncates that cast); maps
    # larger than one 32 x 32 tile, non-square, and in place (out is a) in float32
    from vmamba_kernels.map_transpose import add_transposed, add_transposed_reference
    g = torch.Generator().manual_seed(sum(shape))
    a = torch.randn(*shape, generator=g)
    t = torch.randn(*shape[:2], shape[3], shape[2], generator=g)
    want = add_transposed_reference(a, t, dtype)
    exact = a.double() + t.double().transpose(2, 3)
    out = a if dtype == torch.float32 else torch.empty(shape, dtype=dtype)
    got = add_transposed(a, t, out)
    assert got is out and got.dtype == dtype
    ulp = 2.0**-{torch.float16: 10, torch.bfloat16: 7, torch.float32: 23}[dtype]
    assert ((got.double() - exact).abs() <= exact.abs() * ulp).all()
    if dtype != torch.bfloat16:
        assert torch.equal(got, want), (got.double() - want.double()).abs().max()
    with pytest.raises(ValueError, match=r'got a \(2, 3, 5, 7\), t \(2, 3, 5, 7\)'):
        add_transposed(torch.zeros(2, 3, 5, 7), torch.zeros(2, 3, 5, 7), torch.zeros(2, 3, 5, 7))


@pytest.mark.parametrize('shape,dtype', TRANSPOSE_MAPS)
def test_transposed_copy_against_torch(shape, dtype):
    # the column walks' copy of x / dy: bitwise torch's transposed contiguous copy (values are
    # moved, never computed), on maps of one tile, of several with partial edges, non-square,
    # one row
    from vmamba_kernels.map_transpose import transposed
    g = torch.Generator().manual_seed(sum(shape))
    t = torch.randn(*shape, generator=g).to(dtype)
    got = transposed(t)
    assert got.shape == (*shape[:2], shape[3], shape[2]) and got.is_contiguous()
    assert got.dtype == dtype and torch.equal(got, t.transpose(2, 3).contiguous())
    with pytest.raises(ValueError, match=r'got shape \(2, 7, 5, 3\), strides'):
        transposed(torch.zeros(2, 3, 5, 7).permute(0, 3, 2, 1))


@pytest.mark.parametrize('options', [dict(transpose_columns=False), dict(transpose_columns=True),
                                     dict(whole_map=True), dict(backend='torch'),
                                     dict(d_state=2)])
def test_output_in_the_maps_dtype(options):
    # out_dtype=x's dtype: y is the float32 sum of the four directions rounded once (bitwise the
    # float32 output cast; the chunked kernels with fp16_sums off, see
    # test_fp16_sums_of_the_directions), and the gradients through a half-precision y stay
    # within float16's tolerance of float64; every path (chunked kernels with and without
    # transposed columns, the whole-map kernels, the general d_state kernels, torch)
    options = dict(options)
    d_state = options.pop('d_state', 1)
    backend = options.pop('backend', 'triton')
    half = {'x', 'dt_low', 'Bs', 'Cs'}
    inputs = make_inputs(2, 6, 5, 7, 2, d_state, seed=11)
    inputs = {k: v.half() if k in half else v for k, v in inputs.items()}
    if backend == 'torch':
        fn = lambda out_dtype=None, **kw: vk.ss2d_scan(  # noqa: E731
            **kw, backend='torch', out_dtype=out_dtype)
    else:
        chunked = d_state == 1 and not options.get('whole_map')
        tiles = dict(block_l=16, fp16_sums=False) if chunked else {}
        fn = lambda out_dtype=None, **kw: ss2d_scan_triton(  # noqa: E731
            **kw, out_dtype=out_dtype, **tiles, **options)
    with torch.no_grad():
        y32, y16 = fn(**inputs), fn(**inputs, out_dtype=torch.float16)
    assert y32.dtype == torch.float32 and y16.dtype == torch.float16
    assert torch.equal(y16, y32.half())
    ref_in = {k: v.double() for k, v in inputs.items()}
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    y_ref, g_ref = forward_and_grads(naive_ss2d, ref_in, grad_out)
    y, g = forward_and_grads(lambda **kw: fn(**kw, out_dtype=torch.float16), inputs, grad_out)
    assert rel_err(y, y_ref) <= 2e-3
    for name in PARAMS:
        assert g[name].dtype == inputs[name].dtype
        assert rel_err(g[name], g_ref[name]) <= 1e-2, (name, rel_err(g[name], g_ref[name]))
    with pytest.raises(ValueError, match=r'out_dtype must be None, torch.float32 or x\'s dtype '
                                         r'\(torch.float16\), got torch.bfloat16'):
        vk.ss2d_scan(**inputs, backend=backend, out_dtype=torch.bfloat16)


def check_fp16_sums(scan):
    """fp16_sums: on a float16 map the four directions add into float16 maps (y forward, dx
    backward), each sum rounded on the way as the authors' merge does: within float16's
    tolerance of float64, a few float16 roundings from the float32 sums, and really different
    from them; float32 and bfloat16 maps keep float32 sums (bitwise unchanged). ``scan(dtype,
    sums)``: the scan with y in ``dtype`` and fp16_sums ``sums``."""
    half = {'x', 'dt_low', 'Bs', 'Cs'}
    grad_out = torch.randn(2, 6, 5, 8, dtype=torch.float64)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        inputs = make_inputs(2, 6, 5, 8, 2, 1, seed=5)
        inputs = {k: v.to(dtype) if k in half else v for k, v in inputs.items()}
        (y32, g32), (y16, g16) = (forward_and_grads(scan(dtype, sums), inputs, grad_out)
                                  for sums in (False, True))
        if dtype != torch.float16:
            assert torch.equal(y16, y32) and all(torch.equal(g16[k], g32[k]) for k in PARAMS)
            continue
        ref_in = {k: v.double() for k, v in inputs.items()}
        y_ref, g_ref = forward_and_grads(naive_ss2d, ref_in, grad_out)
        assert rel_err(y16, y_ref) <= 3e-3
        for name in PARAMS:
            assert g16[name].dtype == inputs[name].dtype
            assert rel_err(g16[name], g_ref[name]) <= 1e-2, (name, rel_err(g16[name],
                                                                            g_ref[name]))
        # at most a few float16 roundings (2^-11 of the largest term) from the float32 sums
        assert 0 < rel_err(y16, y32) <= 4 * 2.0**-11
        assert 0 < rel_err(g16['x'], g32['x']) <= 4 * 2.0**-11


@pytest.mark.parametrize('transpose_columns,segments', [(False, 1), (True, 1), (True, 2)])
def test_fp16_sums_of_the_directions(transpose_columns, segments):
    check_fp16_sums(lambda dtype, sums: lambda **kw: ss2d_scan_triton(
        **kw, out_dtype=dtype, block_l=16, transpose_columns=transpose_columns,
        segments=segments, bwd_segments=segments, fp16_sums=sums))


def test_fp16_sums_default_and_bad_value(monkeypatch):
    from vmamba_kernels import ss2d_n1
    monkeypatch.delenv('VMAMBA_SCAN_FP16_SUMS', raising=False)
    for passes in ss2d_n1.n1_launch_config(3136):
        assert passes['fp16_sums'] is ss2d_n1.FP16_SUMS
    monkeypatch.setattr(ss2d_n1, 'FP16_SUMS', not ss2d_n1.FP16_SUMS)
    assert ss2d_n1.n1_launch_config(196)[1]['fp16_sums'] is ss2d_n1.FP16_SUMS
    assert ss2d_n1.n1_launch_config(196, fp16_sums=0)[0]['fp16_sums'] is False
    with pytest.raises(ValueError, match="fp16_sums must be True, False or None, got 'yes'"):
        ss2d_n1.n1_launch_config(64, fp16_sums='yes')
    # the environment variable overrides the module default; an argument overrides both
    for value, expected in (('0', False), ('1', True)):
        monkeypatch.setenv('VMAMBA_SCAN_FP16_SUMS', value)
        assert all(p['fp16_sums'] is expected for p in ss2d_n1.n1_launch_config(3136))
        assert ss2d_n1.n1_launch_config(3136, fp16_sums=not expected)[0]['fp16_sums'] is (
            not expected)
    monkeypatch.setenv('VMAMBA_SCAN_FP16_SUMS', 'yes')
    with pytest.raises(ValueError, match=r"\$VMAMBA_SCAN_FP16_SUMS must be one of 0 \(float32 "
                                         r"sums\), 1 \(float16 sums on float16 maps\), got 'yes'"):
        ss2d_n1.n1_launch_config(64)
