"""torch.compile over the Triton paths (interpreter on CPU): whole graphs, no break, and the
compiled forward and every gradient equal to eager and to the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import vmamba_kernels as vk
from vmamba_kernels.layernorm2d import layer_norm_2d_triton

from .test_ss2d_scan import PARAMS, forward_and_grads, make_inputs, rel_err
from .naive import naive_ss2d


def scan_then_nonlinearity(**kw):
    # an elementwise op after the scan gives inductor something to fuse next to the custom op
    return torch.tanh(vk.ss2d_scan(**kw, backend='triton')) * 1.5


def reference(**kw):
    return torch.tanh(naive_ss2d(**kw)) * 1.5


def graph_targets(fn, *args, **kwargs):
    """``fn`` compiled whole (no graph break allowed) by a backend that records the operators
    of the graph dynamo hands it and runs that graph as is: the operators' names and the
    result."""
    torch._dynamo.reset()
    targets = []

    def capture(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == 'call_function')
        return gm.forward

    return targets, torch.compile(fn, backend=capture, fullgraph=True)(*args, **kwargs)


# (batch, channels, H, W, rank, d_state): d_state 1 with strided column walks (small map), with
# the transposed column directions (>= 512 positions) and with the dt projection done first
# (rank >= 16), and the general kernels (d_state 4). inductor (what users get) costs ~20 s of C++
# compilation a case here: once per d_state 1 walk; aot_eager (dynamo + AOTAutograd, no code
# generation) for every case.
CASES = [(shape, 'aot_eager') for shape in [(2, 5, 3, 7, 3, 1), (1, 3, 23, 24, 2, 1),
                                            (1, 3, 5, 4, 16, 1), (2, 6, 5, 3, 2, 4)]]
CASES += [((2, 5, 3, 7, 3, 1), 'inductor'), ((1, 3, 23, 24, 2, 1), 'inductor')]


@pytest.mark.parametrize('shape,backend', CASES)
def test_compiled_scan_matches_eager_and_reference(shape, backend):
    check_compiled_scan(shape, backend)


def test_compiled_segmented_scan_matches_eager_and_reference(monkeypatch):
    # long walks split into segments (VMAMBA_SCAN_SEGMENT_PROGRAMS): the pre-pass, the entry
    # kernel and the main pass inside the opaque operators
    monkeypatch.setenv('VMAMBA_SCAN_SEGMENT_PROGRAMS', '8')
    check_compiled_scan((1, 3, 23, 24, 2, 1), 'aot_eager')


def check_compiled_scan(shape, backend):
    torch._dynamo.reset()
    inputs = make_inputs(*shape)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    compiled = torch.compile(scan_then_nonlinearity, backend=backend, fullgraph=True)
    y, g = forward_and_grads(compiled, inputs, grad_out)
    y_eager, g_eager = forward_and_grads(scan_then_nonlinearity, inputs, grad_out)
    y_ref, g_ref = forward_and_grads(reference, {k: v.double() for k, v in inputs.items()},
                                     grad_out)
    assert rel_err(y, y_eager) <= 1e-5 and rel_err(y, y_ref) <= 1e-5
    for name in PARAMS:
        assert rel_err(g[name], g_eager[name]) <= 1e-5, (name, rel_err(g[name], g_eager[name]))
        assert rel_err(g[name], g_ref[name]) <= 1e-5, (name, rel_err(g[name], g_ref[name]))


@pytest.mark.parametrize('channels_last_out', [False, True])
def test_compiled_layer_norm_matches_eager(channels_last_out):
    torch._dynamo.reset()
    x = torch.randn(2, 7, 5, 6) * 2 + 1
    weight, bias = torch.randn(7) * 0.5 + 1, torch.randn(7) * 0.1
    grad_out = torch.randn(x.shape)

    def norm_then_scale(x, weight, bias):
        return layer_norm_2d_triton(x, weight, bias, 1e-5, None, channels_last_out) * 3.0

    results = []
    for fn in (norm_then_scale, torch.compile(norm_then_scale, backend='aot_eager',
                                              fullgraph=True)):
        leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
        y = fn(*leaves)
        results.append((y.detach(), *torch.autograd.grad(y, leaves, grad_out)))
    (y_eager, *g_eager), (y, *g) = results
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last_out
    assert rel_err(y, y_eager) <= 1e-6
    for name, a, b in zip(('x', 'weight', 'bias'), g, g_eager):
        assert rel_err(a, b) <= 1e-6, name


def test_compiled_backward_ignores_autocast_like_eager():
    # Eager autograd runs a backward outside any autocast region; compiled backwards were traced
    # under the forward's autocast up to torch 2.11 (torch._functorch.config
    # .backward_pass_autocast = 'same_as_forward', the default there: on the H100 it left the
    # d_state 1 backward's GEMMs in float16, where small dt-projection gradients underflowed to
    # zero). Our backwards switch autocast off themselves, so both settings must match eager.
    import torch._functorch.config as functorch_config
    torch._dynamo.reset()
    inputs = make_inputs(2, 5, 3, 7, 3, 1)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64) * 1e-3

    def under_autocast(fn):
        def call(**kw):
            with torch.autocast('cpu', dtype=torch.bfloat16):  # outside the compiled region
                return fn(**kw)
        return call

    compiled = torch.compile(scan_then_nonlinearity, backend='aot_eager', fullgraph=True)
    # (the config's own patch: pytest's monkeypatch restores it as a plain attribute, which
    # torch's config module then no longer knows)
    with functorch_config.patch(backward_pass_autocast='same_as_forward'):
        y, g = forward_and_grads(under_autocast(compiled), inputs, grad_out)
    y_eager, g_eager = forward_and_grads(under_autocast(scan_then_nonlinearity), inputs,
                                         grad_out)
    assert rel_err(y, y_eager) <= 1e-5
    for name in PARAMS:
        assert rel_err(g[name], g_eager[name]) <= 1e-5, (name, rel_err(g[name], g_eager[name]))


def test_layer_norm_is_left_to_inductor_under_compile():
    # inside torch.compile the norm is plain torch ops (inductor fuses it with its neighbours;
    # as an opaque Triton call it cost VMamba-T compiled fp16 inference 2x on the H200), with
    # the output dtype the Triton path writes; eager calls still run the Triton kernel
    from vmamba_kernels import layer_norm_2d
    x = torch.randn(2, 7, 5, 6) * 2 + 1
    weight, bias = torch.randn(7) * 0.5 + 1, torch.randn(7) * 0.1

    def norm(x, weight, bias):
        return layer_norm_2d(x, weight, bias, 1e-5, backend='triton',
                             out_dtype=torch.bfloat16, channels_last_out=True)

    eager = norm(x, weight, bias)
    targets, compiled = graph_targets(norm, x, weight, bias)
    assert targets and not any('vmamba_kernels' in t for t in targets), targets
    assert compiled.dtype == eager.dtype == torch.bfloat16
    reference = F.layer_norm(x.double().permute(0, 2, 3, 1), (7, ), weight.double(),
                             bias.double()).permute(0, 3, 1, 2)
    for y in (eager, compiled):
        assert rel_err(y, reference) <= 8e-3  # bf16 rounding of the output


@pytest.mark.parametrize('mode,opaque', [('inductor', (False, False)), ('triton', (True, True)),
                                          ('channel-first', (True, False))])
def test_compiled_norm_variable_picks_which_norms_stay_triton(mode, opaque, monkeypatch):
    # $VMAMBA_COMPILED_NORM: the Triton kernels as opaque operators inside torch.compile, for
    # every norm or only channel-first inputs; same values either way
    from vmamba_kernels import layer_norm_2d
    monkeypatch.setenv('VMAMBA_COMPILED_NORM', mode)
    weight, bias = torch.randn(7) * 0.5 + 1, torch.randn(7) * 0.1
    for x, expect_opaque in zip((torch.randn(2, 7, 5, 6),
                                 torch.randn(2, 7, 5, 6).contiguous(
                                     memory_format=torch.channels_last)), opaque):

        def norm(x):
            return layer_norm_2d(x, weight, bias, 1e-5, backend='triton')

        targets, compiled = graph_targets(norm, x)
        assert any('vmamba_kernels' in t for t in targets) == expect_opaque, targets
        assert torch.allclose(compiled, norm(x), atol=1e-5)
    monkeypatch.setenv('VMAMBA_COMPILED_NORM', 'fast')
    torch._dynamo.reset()
    with pytest.raises(Exception, match="VMAMBA_COMPILED_NORM must be one of"):
        torch.compile(norm, backend='eager', fullgraph=True)(x)


def saved_for_backward_backend(saved):
    """A torch.compile backend (AOTAutograd, inductor's min-cut partition, graphs run as they
    are) that appends to ``saved`` the (shape, dtype) of every tensor the backward graph takes
    from the forward: what the compiled step keeps alive between them."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    def partition(joint, inputs, **kwargs):
        forward, backward = min_cut_rematerialization_partition(joint, inputs, **kwargs)
        for node in backward.graph.nodes:
            value = node.meta.get('val')
            if (node.op == 'placeholder' and not node.name.startswith('tangents')
                    and isinstance(value, torch.Tensor)):
                saved.append((tuple(value.shape), value.dtype))
        return forward, backward

    return aot_autograd(fw_compiler=lambda gm, _: gm, bw_compiler=lambda gm, _: gm,
                        partition_fn=partition)


@pytest.mark.parametrize('save_output', [False, True])
def test_compiled_norm_with_save_output_keeps_its_output_not_its_input(save_output):
    # a norm feeding a linear layer, as in the VSS block, its output in bf16: under compile
    # save_output keeps 2 bytes per element where the plain norm keeps 4; gradients of both,
    # eager and compiled, within bf16 rounding of float64
    torch._dynamo.reset()
    x = (torch.randn(2, 16, 5, 6) * 2 + 1).requires_grad_(True)
    weight = (torch.randn(16) * 0.5 + 1).requires_grad_(True)
    bias = (torch.randn(16) * 0.1).requires_grad_(True)
    proj = (torch.randn(12, 16) * 0.25).to(torch.bfloat16).requires_grad_(True)

    def norm_then_linear(x, weight, bias, proj):
        y = vk.layer_norm_2d(x, weight, bias, 1e-5, backend='triton', out_dtype=torch.bfloat16,
                             channels_last_out=True, save_output=save_output)
        return F.linear(y.permute(0, 2, 3, 1), proj).float().sin().sum()

    def in_float64(x, weight, bias, proj):
        y = F.layer_norm(x.permute(0, 2, 3, 1), (16, ), weight, bias, 1e-5)
        return F.linear(y, proj).sin().sum()

    saved = []
    leaves = (x, weight, bias, proj)
    exact = torch.autograd.grad(in_float64(*(t.double() for t in leaves)), leaves)
    for fn in (norm_then_linear, torch.compile(norm_then_linear, fullgraph=True,
                                               backend=saved_for_backward_backend(saved))):
        grads = torch.autograd.grad(fn(*leaves), leaves)
        for name, grad, ref in zip(('x', 'weight', 'bias', 'proj'), grads, exact):
            assert rel_err(grad.double(), ref) <= 3e-2, name  # bf16 output and GEMM
    # the plain norm's step keeps the float32 input (in whatever layout) and recomputes the
    # output for the linear layer's backward; with save_output it keeps the bf16 output only
    maps = [(sorted(shape), dtype) for shape, dtype in saved if len(shape) == 4]
    assert ((sorted(x.shape), torch.float32) in maps) != save_output, maps
    assert ((sorted(x.shape), torch.bfloat16) in maps) == save_output, maps


@pytest.mark.parametrize('memory_efficient_norm', [False, True])
def test_compiled_model_on_the_triton_path_matches_eager(memory_efficient_norm):
    # the whole backbone as users compile it: the scans opaque, the norms left to inductor (with
    # memory_efficient_norm, the torch Function whose backward works from the output)
    from mmvmamba.models import VMamba
    torch._dynamo.reset()
    torch.manual_seed(0)
    arch = dict(dims=8, depths=(1, 1, 1, 1), drop_path_rate=0.0)
    model = VMamba(arch, out_indices=(0, 3), scan_backend='triton',
                   memory_efficient_norm=memory_efficient_norm).train()
    x = torch.randn(2, 3, 32, 32)
    results = []
    for run in (model, torch.compile(model, backend='aot_eager', fullgraph=True)):
        model.zero_grad(set_to_none=True)
        outs = run(x)
        # not a plain sum of squares: of the normalised outputs that is nearly constant, and
        # its gradients are rounding noise
        sum((o * torch.linspace(-1, 1, o.numel()).view(o.shape)).sum() for o in outs).backward()
        results.append(([o.detach() for o in outs],
                        {n: p.grad.clone() for n, p in model.named_parameters()}))
    (y_eager, g_eager), (y, g) = results
    for a, b in zip(y, y_eager):
        assert rel_err(a, b) <= 1e-5
    for name, ref in g_eager.items():
        assert (g[name] - ref).norm() <= 1e-5 * ref.norm() + 1e-8, name


def test_compiled_graph_holds_no_transposed_map_of_the_column_walks():
    # on maps of >= 512 positions the column directions walk a transposed copy of the map; the
    # launches make it and merge the transposed output themselves, so neither the forward nor
    # the backward graph holds a (batch, C, W, H) map (the graph kept two float32 ones, and the
    # backward two more, when the transposes were torch ops around the operators)
    from torch._dynamo.backends.common import aot_autograd
    torch._dynamo.reset()
    graphs = []

    def keep(gm, _):
        graphs.append(gm)
        return gm

    inputs = make_inputs(1, 3, 23, 24, 2, 1)  # 552 positions: transposed column walks
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    compiled = torch.compile(scan_then_nonlinearity, fullgraph=True,
                             backend=aot_autograd(fw_compiler=keep, bw_compiler=keep))
    y, g = forward_and_grads(compiled, inputs, grad_out)
    assert len(graphs) == 2  # forward, backward
    batch, channels, height, width = inputs['x'].shape
    transposed = (batch, channels, width, height)
    shapes = [tuple(n.meta['val'].shape) for gm in graphs for n in gm.graph.nodes
              if isinstance(n.meta.get('val'), torch.Tensor)]
    assert shapes and transposed not in shapes, shapes
    targets = [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == 'call_function']
    assert sum('ss2d_n1_fwd' in t for t in targets) == 1, targets
    assert sum('ss2d_n1_bwd' in t for t in targets) == 1, targets
    y_ref, g_ref = forward_and_grads(reference, {k: v.double() for k, v in inputs.items()},
                                     grad_out)
    assert rel_err(y, y_ref) <= 1e-5
    for name in PARAMS:
        assert rel_err(g[name], g_ref[name]) <= 1e-5, name
