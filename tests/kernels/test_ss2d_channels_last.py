"""The d_state 1 kernels on channels-last maps (``kernels/ss2d_n1_cl.py``, interpreter on CPU)
against the float64 step-by-step reference and the chunked kernels: maps of every shape class,
tiles, half inputs, x stored either way, torch.compile, the switch that routes to them and bad
tiles."""
import pytest
import torch

from vmamba_kernels import ss2d_n1, ss2d_n1_cl

from .test_ss2d_scan import (PARAMS, check_against_reference, check_compiled_matches_eager,
                             check_fp16_sums, forward_and_grads, make_inputs, rel_err)


def channels_last(**options):
    return lambda **kw: ss2d_n1.ss2d_scan_n1(**kw, channels_last=True, **options)  # noqa: E731


# (batch, channels, H, W, rank): non-square maps walked by columns, a single row or column, a
# single pixel, channel counts that leave the last block part-filled, a rank >= 16
SHAPES = [(2, 5, 3, 7, 3), (1, 9, 6, 5, 2), (1, 3, 1, 9, 2), (2, 4, 9, 1, 1), (2, 3, 1, 1, 2),
          (1, 33, 4, 4, 16)]


@pytest.mark.parametrize('shape', SHAPES)
def test_channels_last_matches_float64_reference(shape):
    check_against_reference(channels_last(), make_inputs(*shape, 1), 1e-5)


@pytest.mark.parametrize('tiles', [dict(block_l=2), dict(block_l=16, block_c=4),
                                   dict(bwd_block_c=8, bwd_num_warps=2, num_warps=2)])
def test_channels_last_tiles(tiles):
    # chunks shorter and longer than the walk, channel blocks over and under the channels
    check_against_reference(channels_last(**tiles), make_inputs(2, 7, 5, 6, 3, 1), 1e-5)


@pytest.mark.parametrize('shape', [(2, 20, 9, 7, 3), (1, 5, 1, 40, 2)])
def test_channels_last_inference_tile_matches_float64_reference(shape):
    # without gradients the forward runs its own tile (16 channels x 32 steps): walks longer
    # and shorter than a chunk, a part-filled channel block
    from .naive import naive_ss2d
    inputs = make_inputs(*shape, 1)
    with torch.no_grad():
        y = ss2d_n1.ss2d_scan_n1(**inputs, channels_last=True)
        y_ref = naive_ss2d(**{k: v.double() for k, v in inputs.items()})
    assert rel_err(y, y_ref) <= 1e-5


def test_channels_last_without_d_equals_chunked_kernels():
    inputs = make_inputs(1, 5, 4, 6, 2, 1)
    del inputs['D']
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    y, g = forward_and_grads(channels_last(), inputs, grad_out)
    y_chunked, g_chunked = forward_and_grads(
        lambda **kw: ss2d_n1.ss2d_scan_n1(**kw, channels_last=False), inputs, grad_out)
    assert rel_err(y, y_chunked) <= 1e-6
    for name in inputs:
        assert rel_err(g[name], g_chunked[name]) <= 1e-5, name


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_channels_last_half_inputs_and_output_in_the_maps_dtype(dtype):
    # y in x's dtype with fp16_sums off: the float32 sum of the directions rounded once
    half = {'x', 'dt_low', 'Bs', 'Cs'}
    inputs = {k: v.to(dtype) if k in half else v
              for k, v in make_inputs(2, 6, 5, 7, 16, 1).items()}
    check_against_reference(channels_last(), inputs, 1e-2)
    with torch.no_grad():
        y = ss2d_n1.ss2d_scan_n1(**inputs, channels_last=True, out_dtype=dtype, fp16_sums=False)
        y32 = ss2d_n1.ss2d_scan_n1(**inputs, channels_last=True)
    assert y.dtype == dtype and y.shape == inputs['x'].shape and y32.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    # the float32 sum rounded once (to within one ulp: the interpreter's casts truncate)
    assert ((y.float() - y32).abs() <= y32.abs() * torch.finfo(dtype).eps + 1e-30).all()


def test_channels_last_fp16_sums_of_the_directions():
    # on a float16 map the directions add into y (forward) and dx (backward) themselves
    check_fp16_sums(lambda dtype, sums: channels_last(out_dtype=dtype, fp16_sums=sums))


def test_channels_last_reads_x_stored_either_way():
    # a channels-last x is read in place, a channel-first one copied: the same result; y is
    # stored channels-last either way, and so is dx for a channels-last x
    inputs = make_inputs(2, 6, 4, 5, 3, 1)
    grad_out = torch.randn(inputs['x'].shape, dtype=torch.float64)
    y, g = forward_and_grads(channels_last(), inputs, grad_out)
    stored = dict(inputs, x=inputs['x'].contiguous(memory_format=torch.channels_last))
    y_cl, g_cl = forward_and_grads(channels_last(), stored, grad_out)
    assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert torch.equal(y, y_cl)
    assert g_cl['x'].is_contiguous(memory_format=torch.channels_last)
    for name in PARAMS:
        assert torch.equal(g[name], g_cl[name]), name


def test_channels_last_under_torch_compile_matches_eager():
    # each launch one opaque operator
    check_compiled_matches_eager(channels_last(), make_inputs(1, 4, 5, 6, 2, 1),
                                 ('ss2d_n1_cl_fwd', 'ss2d_n1_cl_bwd'))


@pytest.mark.parametrize('mode,size,options,expected', [
    (None, 5, {}, True), (None, 23, {}, False), ('0', 5, {}, False), ('small', 5, {}, True),
    ('small', 23, {}, False),
    ('all', 23, {}, True), ('all', 5, dict(block_l=16), True), (None, 5, dict(block_c=4), True),
    ('all', 5, dict(transpose_columns=False), False), ('all', 5, dict(whole_map=True), False),
    (None, 5, dict(bwd_maxnreg=88), False), ('all', 5, dict(segments=2), False),
    (None, 5, dict(bwd_sum_rows=2), False)])
def test_switch_routes_to_channels_last_kernels(mode, size, options, expected, monkeypatch):
    # '$VMAMBA_SCAN_CHANNELS_LAST': by default 'inference' (below 512 positions, 23 x 23 being
    # 529, without gradients, as here), '0' off, 'small' below 512 positions, 'all' every map;
    # an option of the other kernels keeps them, tiles both families take go to the one chosen
    if mode is None:
        monkeypatch.delenv(ss2d_n1_cl.CHANNELS_LAST_ENV, raising=False)
    else:
        monkeypatch.setenv(ss2d_n1_cl.CHANNELS_LAST_ENV, mode)
    calls = []
    monkeypatch.setattr(ss2d_n1, 'ss2d_scan_n1_channels_last',
                        lambda *args, **kw: calls.append(kw) or args[0])
    monkeypatch.setattr(ss2d_n1.SS2DScanN1Function, 'apply', lambda *args: args[0])
    inputs = make_inputs(1, 2, size, size, 2, 1)
    with torch.no_grad():
        ss2d_n1.ss2d_scan_n1(**inputs, **options)
    assert bool(calls) == expected
    assert ss2d_n1_cl.channels_last_scan(size, size) == (mode in ('small', 'all') and
                                                         (mode == 'all' or size < 20))


@pytest.mark.parametrize('size,grad,expected', [(5, False, True), (5, True, False),
                                                (23, False, False)])
def test_inference_switch_routes_only_without_gradients(size, grad, expected, monkeypatch):
    # 'inference': maps below 512 positions when no gradient is wanted, with the inference
    # forward tile (16 channels x 32 steps); with gradients the chunked kernels
    monkeypatch.setenv(ss2d_n1_cl.CHANNELS_LAST_ENV, 'inference')
    calls, tiles = [], ss2d_n1_cl.cl_launch_config
    monkeypatch.setattr(ss2d_n1_cl, 'cl_launch_config',
                        lambda **kw: calls.append(kw) or ({}, {}))
    monkeypatch.setattr(ss2d_n1_cl.SS2DScanN1ChannelsLast, 'apply', lambda *args: args[0])
    monkeypatch.setattr(ss2d_n1.SS2DScanN1Function, 'apply', lambda *args: args[0])
    inputs = make_inputs(1, 2, size, size, 2, 1)
    with torch.set_grad_enabled(grad):
        ss2d_n1.ss2d_scan_n1(**dict(inputs, x=inputs['x'].requires_grad_(grad)))
    assert calls == ([dict(inference=True)] if expected else [])
    assert ss2d_n1_cl.channels_last_scan(size, size, inference=not grad) == expected
    forward, backward = tiles(inference=True)
    assert (forward['BLOCK_C'], forward['BLOCK_L'], forward['num_warps']) == (16, 32, 1)
    forward, backward = tiles()
    assert (forward['BLOCK_C'], forward['BLOCK_L'], backward['BLOCK_C']) == (32, 8, 128)


def test_tiles_both_families_take_are_those_of_the_launch_config():
    # CL_TILES decides which options may go to these kernels (any other keeps the chunked ones)
    import inspect
    params = set(inspect.signature(ss2d_n1_cl.cl_launch_config).parameters) - {'inference'}
    assert set(ss2d_n1_cl.CL_TILES) == params
    assert params < set(inspect.signature(ss2d_n1.n1_launch_config).parameters)


def test_bad_switch_value_and_tiles(monkeypatch):
    monkeypatch.setenv(ss2d_n1_cl.CHANNELS_LAST_ENV, '1')
    with pytest.raises(ValueError, match="VMAMBA_SCAN_CHANNELS_LAST must be one of 0 .*got '1'"):
        ss2d_n1_cl.channels_last_scan(14, 14)
    inputs = make_inputs(1, 2, 3, 3, 2, 1)
    with pytest.raises(ValueError, match='block_l must be a power of two, got 3'):
        ss2d_n1.ss2d_scan_n1(**inputs, channels_last=True, block_l=3)
    with pytest.raises(TypeError, match='segments'):
        ss2d_n1.ss2d_scan_n1(**inputs, channels_last=True, segments=2)
    with pytest.raises(ValueError, match="fp16_sums must be True, False or None, got 'yes'"):
        ss2d_n1.ss2d_scan_n1(**inputs, channels_last=True, fp16_sums='yes')


def test_fp16_sums_default_follows_the_chunked_kernels(monkeypatch):
    monkeypatch.delenv(ss2d_n1.FP16_SUMS_ENV, raising=False)
    for value in (True, False):
        monkeypatch.setattr(ss2d_n1, 'FP16_SUMS', value)
        assert all(p['fp16_sums'] is value for p in ss2d_n1_cl.cl_launch_config())
        assert ss2d_n1_cl.cl_launch_config(fp16_sums=not value)[1]['fp16_sums'] is (not value)
    monkeypatch.setenv(ss2d_n1.FP16_SUMS_ENV, '1')
    assert all(p['fp16_sums'] is True for p in ss2d_n1_cl.cl_launch_config())


def test_a_channels_last_map_passes_only_where_it_is_read_or_copied():
    # the fused scan takes x stored channels-last (the chunked kernels copy it: same result as
    # the contiguous map); the unfused baseline's cross-scanned input must stay contiguous
    import vmamba_kernels as vk
    inputs = make_inputs(1, 3, 4, 5, 2, 1)
    stored = dict(inputs, x=inputs['x'].contiguous(memory_format=torch.channels_last))
    with torch.no_grad():
        y = vk.ss2d_scan(**inputs, backend='triton')
        y_stored = vk.ss2d_scan(**stored, backend='triton')
    assert torch.equal(y, y_stored)
    xs = torch.randn(1, 4, 3, 20).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match='xs must be contiguous'):
        vk.ss2d_scan_unfused_triton(xs, inputs['dt_low'], inputs['dt_weight'],
                                    inputs['dt_bias'], inputs['A'], inputs['Bs'], inputs['Cs'],
                                    inputs['D'], 4, 5)
