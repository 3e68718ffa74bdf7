"""The d_state 1 whole-map kernels (``kernels/ss2d_n1_map.py``, interpreter on CPU) against the
float64 step-by-step reference and against the chunked kernels: padded maps of every shape
class, channel blocks, the dt projection in the kernel or before it, half inputs, determinism,
torch.compile, the default routing and bad tiles."""
import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from vmamba_kernels import ss2d_n1, ss2d_n1_map

from .naive import naive_ss2d
from .test_ss2d_scan import (PARAMS, check_against_reference, forward_and_grads, make_inputs,
                             rel_err)


def whole_map(**options):
    return lambda **kw: ss2d_n1.ss2d_scan_n1(**kw, whole_map=True, **options)  # noqa: E731


# (batch, channels, H, W, rank): maps padded in both sides, one side, none (4 x 8), a single row
# or column, a single pixel, a VMamba stage-3-like 14 x 14; ranks in the kernel (< 16) and
# projected before it (>= 16)
SHAPES = [(2, 5, 3, 7, 3), (1, 9, 6, 5, 2), (1, 3, 1, 9, 2), (2, 4, 9, 1, 1), (1, 3, 4, 8, 2),
          (2, 3, 1, 1, 2), (1, 4, 5, 3, 16), (1, 6, 14, 14, 2)]


@pytest.mark.parametrize('shape', SHAPES)
def test_whole_map_matches_float64_reference(shape):
    check_against_reference(whole_map(), make_inputs(*shape, 1), 1e-5)


@pytest.mark.parametrize('block_c,num_warps', [(1, 1), (2, 2), (4, 1), (16, 4)])
def test_whole_map_channel_blocks_and_warps(block_c, num_warps):
    # channel counts that do not fill the last block; each block writes its own dB / dC partials
    check_against_reference(whole_map(map_block_c=block_c, map_num_warps=num_warps),
                            make_inputs(2, 7, 5, 6, 3, 1), 1e-5)


def test_whole_map_without_d():
    inputs = make_inputs(1, 5, 4, 6, 2, 1)
    del inputs['D']
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    y, g = forward_and_grads(whole_map(), inputs, grad_out)
    y_ref, g_ref = forward_and_grads(naive_ss2d, {k: v.double() for k, v in inputs.items()},
                                     grad_out)
    assert rel_err(y, y_ref) <= 1e-5
    for name in inputs:
        assert rel_err(g[name], g_ref[name]) <= 1e-5, name


def test_whole_map_equals_chunked_kernels():
    inputs = make_inputs(2, 6, 7, 5, 3, 1)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    y, g = forward_and_grads(whole_map(), inputs, grad_out)
    y_chunked, g_chunked = forward_and_grads(
        lambda **kw: ss2d_n1.ss2d_scan_n1(**kw, whole_map=False, block_l=16), inputs, grad_out)
    assert rel_err(y, y_chunked) <= 1e-6
    for name in PARAMS:
        assert rel_err(g[name], g_chunked[name]) <= 1e-5, name


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('rank', [2, 16])
def test_whole_map_half_inputs_and_deterministic(dtype, rank):
    half = {'x', 'dt_low', 'Bs', 'Cs'}
    inputs = {k: v.to(dtype) if k in half else v
              for k, v in make_inputs(2, 6, 5, 7, rank, 1).items()}
    check_against_reference(whole_map(), inputs, 1e-2)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    (y1, g1), (y2, g2) = (forward_and_grads(whole_map(), inputs, grad_out) for _ in range(2))
    assert torch.equal(y1, y2)
    for name in PARAMS:
        assert g1[name].dtype == inputs[name].dtype and torch.equal(g1[name], g2[name]), name


def test_whole_map_under_torch_compile_matches_eager():
    torch._dynamo.reset()
    inputs = make_inputs(1, 4, 5, 6, 2, 1)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    graphs = []

    def keep(gm, _):  # AOTAutograd's forward and backward graphs, run as traced
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    compiled = torch.compile(whole_map(), backend=aot_autograd(fw_compiler=keep, bw_compiler=keep),
                             fullgraph=True)
    y, g = forward_and_grads(compiled, inputs, grad_out)
    y_eager, g_eager = forward_and_grads(whole_map(), inputs, grad_out)
    targets = {str(node.target) for gm in graphs for node in gm.graph.nodes}
    # each launch one opaque operator
    assert any('ss2d_n1_map_fwd' in t for t in targets)
    assert any('ss2d_n1_map_bwd' in t for t in targets)
    assert rel_err(y, y_eager) <= 1e-6
    for name in PARAMS:
        assert rel_err(g[name], g_eager[name]) <= 1e-6, name


@pytest.mark.parametrize('limit,expected', [(None, [False, False, False]),
                                            ('64', [True, False, False]),
                                            ('256', [True, True, False]),
                                            ('100000', [True, True, False])])
def test_default_routing_follows_the_positions_limit(limit, expected, monkeypatch):
    # off by default; $VMAMBA_WHOLE_MAP_POSITIONS routes maps padded to at most that many
    # positions (a 7 x 7 map pads to 64, a 9 x 12 one to 256), never more than a tile holds
    # (65 x 33 pads to 128 x 64 = 8192 > 4096)
    if limit is None:
        monkeypatch.delenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV, raising=False)
    else:
        monkeypatch.setenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV, limit)
    used = []
    launch = ss2d_n1.launch_forward_map
    monkeypatch.setattr(ss2d_n1, 'launch_forward_map',
                        lambda *args: used.append(True) or launch(*args))
    for size, uses_map in zip([(7, 7), (9, 12), (65, 33)], expected):
        used.clear()
        inputs = make_inputs(1, 2, *size, 2, 1)
        with torch.no_grad():
            ss2d_n1.ss2d_scan_n1(**inputs)
        assert bool(used) == uses_map, size


def test_bad_positions_limit_and_tiles(monkeypatch):
    inputs = make_inputs(1, 2, 4, 4, 2, 1)
    monkeypatch.setenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV, 'all')
    with pytest.raises(ValueError, match="VMAMBA_WHOLE_MAP_POSITIONS.*'all'"):
        ss2d_n1.ss2d_scan_n1(**inputs)
    monkeypatch.delenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV)
    with pytest.raises(ValueError, match='block_c must be a power of two, got 3'):
        whole_map(map_block_c=3)(**inputs)
    with pytest.raises(ValueError, match='block_c 512 x a 4 x 4 padded map exceeds 4096'):
        whole_map(map_block_c=512)(**inputs)
