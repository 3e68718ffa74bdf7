"""The d_state 1 whole-map kernels (``kernels/ss2d_n1_map.py``, interpreter on CPU) against the
float64 step-by-step reference and against the chunked kernels: padded maps of every shape
class, channel blocks, the dt projection in the kernel or before it, half inputs, determinism,
torch.compile, the default routing and bad tiles."""
import pytest
import torch

from vmamba_kernels import ss2d_n1, ss2d_n1_map

from .naive import naive_ss2d
from .test_ss2d_scan import (PARAMS, check_against_reference, check_compiled_matches_eager,
                             forward_and_grads, make_inputs, rel_err)


@pytest.fixture(autouse=True)
def channels_last_kernels_off(monkeypatch):
    # small maps without gradients go to the channels-last kernels by default; the whole-map
    # kernels' own routing applies where those are off
    monkeypatch.setenv('VMAMBA_SCAN_CHANNELS_LAST', '0')


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
    # each launch one opaque operator
    check_compiled_matches_eager(whole_map(), make_inputs(1, 4, 5, 6, 2, 1),
                                 ('ss2d_n1_map_fwd', 'ss2d_n1_map_bwd'))


def spy_whole_map_forward(monkeypatch):
    """A list that gets the (block_c, num_warps) of every whole-map forward launch."""
    calls = []
    launch = ss2d_n1.launch_forward_map
    monkeypatch.setattr(ss2d_n1, 'launch_forward_map',
                        lambda *args: calls.append(args[-2:]) or launch(*args))
    return calls


@pytest.mark.parametrize('limit,grad,expected', [(None, False, [True, False, False]),
                                                 (None, True, [False, False, False]),
                                                 ('0', False, [False, False, False]),
                                                 ('64', True, [True, False, False]),
                                                 ('256', False, [True, True, False]),
                                                 ('256', True, [True, True, False]),
                                                 ('100000', True, [True, True, False])])
def test_default_routing_follows_the_positions_limit(limit, grad, expected, monkeypatch):
    # by default only calls that want no gradient (inference) take the whole-map forward, and
    # only on maps padded to at most 64 positions (a 7 x 7 map pads to 64, a 9 x 12 one to
    # 256); $VMAMBA_WHOLE_MAP_POSITIONS sets the limit for every call, never beyond what a tile
    # holds (65 x 33 pads to 128 x 64 = 8192 > 4096)
    if limit is None:
        monkeypatch.delenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV, raising=False)
    else:
        monkeypatch.setenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV, limit)
    used = spy_whole_map_forward(monkeypatch)
    for size, uses_map in zip([(7, 7), (9, 12), (65, 33)], expected):
        used.clear()
        inputs = make_inputs(1, 2, *size, 2, 1)
        inputs['x'].requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y = ss2d_n1.ss2d_scan_n1(**inputs)
        assert bool(used) == uses_map, size
        assert y.requires_grad == grad


def test_inference_routing_needs_both_grad_mode_and_an_input_that_wants_one(monkeypatch):
    # a 7 x 7 map: grad mode on but no input requiring a gradient (a frozen stage) is inference
    monkeypatch.delenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV, raising=False)
    used = spy_whole_map_forward(monkeypatch)
    inputs = make_inputs(1, 2, 7, 7, 2, 1)
    ss2d_n1.ss2d_scan_n1(**inputs)
    assert used
    used.clear()
    inputs['dt_bias'] = inputs['dt_bias'].clone().requires_grad_()
    y = ss2d_n1.ss2d_scan_n1(**inputs)
    assert not used and y.requires_grad


def test_chunked_tiles_asked_for_keep_the_chunked_kernels(monkeypatch):
    # an inference call on a 7 x 7 map that names a tile or a column layout of the chunked kernels
    # gets them (and their checks) rather than the whole-map forward
    monkeypatch.delenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV, raising=False)
    used = spy_whole_map_forward(monkeypatch)
    inputs = make_inputs(1, 2, 7, 7, 2, 1, seed=1)
    with torch.no_grad():
        reference = ss2d_n1.ss2d_scan_n1(**inputs)
        assert used
        for option in (dict(block_c=4), dict(bwd_block_c=4), dict(transpose_columns=False)):
            used.clear()
            y = ss2d_n1.ss2d_scan_n1(**inputs, **option)
            assert not used, option
            assert rel_err(y, reference) <= 1e-6


def test_inference_tiles_and_the_forward_they_run(monkeypatch):
    # forward-only launches take tiles of 512 elements, a warp per 128; launches a backward may
    # follow, 1024 and 256 (the backward's registers)
    assert ss2d_n1_map.map_launch_config(14, 14, forward_only=True) == (2, 4)
    assert ss2d_n1_map.map_launch_config(14, 14) == (4, 4)
    assert ss2d_n1_map.map_launch_config(7, 7, forward_only=True) == (8, 4)
    assert ss2d_n1_map.map_launch_config(7, 7) == (8, 2)
    assert ss2d_n1_map.map_launch_config(1, 1, forward_only=True) == (8, 1)
    # the inference route of a 14 x 14 map with the limit raised runs them, against float64
    monkeypatch.setenv(ss2d_n1_map.MAX_MAP_POSITIONS_ENV, '256')
    seen = spy_whole_map_forward(monkeypatch)
    inputs = make_inputs(1, 5, 14, 14, 3, 1, seed=2)
    with torch.no_grad():
        y = ss2d_n1.ss2d_scan_n1(**inputs)
    assert seen == [(2, 4)]  # (block_c, num_warps)
    y64 = naive_ss2d(**{k: v.double() for k, v in inputs.items()})
    assert rel_err(y, y64) <= 1e-5


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
