"""Channel-first LayerNorm (Triton under TRITON_INTERPRET=1 on CPU) against float64 arithmetic."""
import pytest
import torch

import vmamba_kernels as vk
from vmamba_kernels.layernorm2d import layer_norm_2d_triton
from vmamba_kernels.layernorm_from_output import layer_norm_2d_from_output
from vmamba_kernels.layernorm_recompute import layer_norm_2d_recompute


def reference(x, weight, bias, eps):
    """Direct float64 formula over dim 1 (independent of F.layer_norm)."""
    x = x.double()
    mean = x.mean(1, keepdim=True)
    var = ((x - mean)**2).mean(1, keepdim=True)
    shape = (1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + eps) * weight.double().view(shape) + \
        bias.double().view(shape)


def rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max()).item()


def inputs(batch, channels, height, width, dtype=torch.float32):
    x = (torch.randn(batch, channels, height, width) * 3 + 1).to(dtype)
    weight = torch.randn(channels) * 0.5 + 1
    bias = torch.randn(channels) * 0.1
    return x, weight, bias


# odd channel counts (padded tiles), odd and unit maps, several position blocks
@pytest.mark.parametrize('shape', [(2, 3, 5, 7), (1, 33, 11, 13), (3, 96, 4, 4), (1, 300, 3, 1),
                                   (2, 8, 1, 1)])
def test_forward_and_gradients_match_float64(shape):
    x, weight, bias = inputs(*shape)
    leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
    leaves64 = [t.double().requires_grad_(True) for t in (x, weight, bias)]
    y = layer_norm_2d_triton(*leaves, eps=1e-5)
    ref = reference(*leaves64, eps=1e-5)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert rel(y.detach(), ref.detach()) < 1e-5
    grad = torch.randn(shape, dtype=torch.float64)
    y.backward(grad.float())
    ref.backward(grad)
    for name, a, b in zip(('x', 'weight', 'bias'), leaves, leaves64):
        assert rel(a.grad, b.grad) < 1e-5, name


@pytest.mark.parametrize('in_last,out_last', [(True, False), (False, True), (True, True)])
def test_channels_last_input_output_and_gradient(in_last, out_last):
    x, weight, bias = inputs(2, 24, 5, 3)
    fmt = torch.channels_last
    x64 = x.double().requires_grad_(True)
    leaf = (x.contiguous(memory_format=fmt) if in_last else x.clone()).requires_grad_(True)
    y = layer_norm_2d_triton(leaf, weight, bias, channels_last_out=out_last)
    ref = reference(x64, weight, bias, 1e-5)
    assert y.is_contiguous(memory_format=fmt) == out_last
    assert rel(y.detach(), ref.detach()) < 1e-5
    grad = torch.randn(x.shape, dtype=torch.float64)
    # the upstream gradient arrives channels-last, as from a 1x1 conv on a channels-last input
    y.backward(grad.float().contiguous(memory_format=fmt))
    ref.backward(grad)
    assert rel(leaf.grad, x64.grad) < 1e-5


def test_output_dtype_and_bf16_input():
    x, weight, bias = inputs(2, 12, 6, 5, torch.bfloat16)
    y16 = layer_norm_2d_triton(x, weight, bias)
    y32 = layer_norm_2d_triton(x, weight, bias, out_dtype=torch.float32)
    ref = reference(x, weight, bias, 1e-5)
    assert y16.dtype == torch.bfloat16 and y32.dtype == torch.float32
    assert rel(y32, ref) < 1e-5  # statistics in float32 from the bf16 values
    assert rel(y16, ref) < 1e-2


def test_backward_deterministic_and_dispatch_matches_torch_path():
    x, weight, bias = inputs(2, 20, 9, 7)
    grad = torch.randn(x.shape)
    grads = []
    for _ in range(2):
        w = weight.clone().requires_grad_(True)
        layer_norm_2d_triton(x, w, bias).backward(grad)
        grads.append(w.grad)
    assert torch.equal(grads[0], grads[1])
    torch_path = vk.layer_norm_2d(x, weight, bias, backend='torch')
    triton_path = vk.layer_norm_2d(x, weight, bias, backend='triton')
    assert torch.allclose(torch_path, triton_path, atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_the_argument():
    x, weight, bias = inputs(1, 4, 3, 3)
    with pytest.raises(ValueError, match='weight'):
        layer_norm_2d_triton(x, weight[:3], bias)
    with pytest.raises(ValueError, match='contiguous'):
        layer_norm_2d_triton(x[:, :, :, ::2], weight, bias)
    with pytest.raises(ValueError, match='x must have 4 dimensions'):
        layer_norm_2d_triton(x[0], weight, bias)
    with pytest.raises(TypeError, match='x must have dtype'):
        layer_norm_2d_triton(x.double(), weight, bias)


def held_bytes(fn):
    """fn()'s result and the bytes of every storage autograd holds for its backward."""
    held = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: held.append(t.untyped_storage()) or t, lambda t: t):
        out = fn()
    return out, sum({s.data_ptr(): s.nbytes() for s in held}.values())


@pytest.mark.parametrize('in_last,out_last,out_dtype', [
    (False, False, None), (True, True, None), (False, True, None), (True, False, None),
    (False, True, torch.bfloat16), (True, True, torch.float16)])
def test_save_output_backward_matches_float64_and_holds_no_input(in_last, out_last, out_dtype):
    # the backward recovers x-hat from the output (y - bias) / weight: same gradients as the
    # input-keeping norm (float32 output) or within the output's rounding (half outputs), dx in
    # x's dtype and layout, and the input is no longer held
    x, weight, bias = inputs(2, 24, 5, 3)
    weight[3] = -0.05  # a small and a negative weight
    fmt = torch.channels_last if in_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    grad = torch.randn(x.shape, dtype=torch.float64)
    leaves64 = [t.double().requires_grad_(True) for t in (x, weight, bias)]
    reference(*leaves64, eps=1e-5).backward(grad)
    results = {}
    for save_output in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
        y, held = held_bytes(lambda: layer_norm_2d_triton(
            *leaves, out_dtype=out_dtype, channels_last_out=out_last, save_output=save_output))
        y.backward(grad.to(y.dtype))
        results[save_output] = (held, y, [t.grad for t in leaves])
        assert leaves[0].grad.dtype == x.dtype
        assert leaves[0].grad.is_contiguous(memory_format=fmt)
    (held_in, y_in, g_in), (held_out, y_out, g_out) = results[False], results[True]
    assert torch.equal(y_in, y_out)
    # the input norm holds x, weight, bias, stats; the other y (the caller's anyway) instead of x
    assert held_in - held_out == x.nelement() * 4 - y_out.nelement() * y_out.element_size()
    tol = 1e-5 if out_dtype is None else 1e-2
    for name, a, b, c in zip(('x', 'weight', 'bias'), g_out, g_in, leaves64):
        assert rel(a, c.grad) < tol, name
        if out_dtype is None:
            assert rel(a, b) < 1e-5, name


FROM_OUTPUT = {'triton': lambda x, w, b, out_dtype=None: layer_norm_2d_triton(
    x, w, b, out_dtype=out_dtype, save_output=True), 'torch': layer_norm_2d_from_output}


@pytest.mark.parametrize('impl', sorted(FROM_OUTPUT))
def test_save_output_with_a_zero_weight_stays_finite(impl):
    x, weight, bias = inputs(1, 6, 3, 4)
    weight[2] = 0.
    leaf = x.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    FROM_OUTPUT[impl](leaf, w, bias).square().sum().backward()
    assert torch.isfinite(leaf.grad).all() and torch.isfinite(w.grad).all()


def _graded_case(in_last, dtype=torch.float32):
    """A (3, 20, 4, 5) norm with a small negative weight, x channel-first or channels-last: the
    inputs, their float64 copies with the reference formula's gradients for a random output
    gradient ``grad``, and fresh leaves to differentiate."""
    x, weight, bias = inputs(3, 20, 4, 5, dtype)
    weight[3] = -0.05
    x = x.contiguous(memory_format=torch.channels_last if in_last else torch.contiguous_format)
    leaves64 = [t.double().requires_grad_(True) for t in (x, weight, bias)]
    grad = torch.randn(x.shape, dtype=torch.float64)
    reference(*leaves64, eps=1e-5).backward(grad)
    return x, weight, bias, leaves64, grad, [t.clone().requires_grad_(True)
                                             for t in (x, weight, bias)]


@pytest.mark.parametrize('in_last,out_dtype', [(False, None), (True, None),
                                                (False, torch.bfloat16), (True, torch.float16)])
def test_torch_from_output_function_matches_float64_and_holds_no_input(in_last, out_dtype):
    # the torch ops that torch.compile runs for save_output: F.layer_norm's output in the
    # requested dtype, gradients of the float64 formula (float32 output) or within the output's
    # rounding (half), and x's storage not among what autograd keeps
    x, weight, bias, leaves64, grad, leaves = _graded_case(in_last)
    held = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: held.append(t.untyped_storage().data_ptr()) or t, lambda t: t):
        y = layer_norm_2d_from_output(*leaves, out_dtype=out_dtype)
    assert leaves[0].untyped_storage().data_ptr() not in held
    assert y.untyped_storage().data_ptr() in held
    plain = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (20, ), weight, bias)
    assert y.dtype == (out_dtype or x.dtype)
    # float32: F.layer_norm's value; half: within the output's rounding of it
    rtol = 1e-5 if out_dtype is None else torch.finfo(out_dtype).eps
    assert torch.allclose(y.float(), plain.permute(0, 3, 1, 2), rtol=rtol, atol=1e-5)
    y.backward(grad.to(y.dtype))
    tol = 1e-5 if out_dtype is None else 1e-2
    for name, a, c in zip(('x', 'weight', 'bias'), leaves, leaves64):
        assert a.grad.dtype == torch.float32 and a.grad.shape == c.shape
        assert rel(a.grad, c.grad) < tol, name


@pytest.mark.parametrize('in_last,in_dtype,out_dtype', [
    (False, torch.float32, None), (True, torch.float32, None),
    (True, torch.float32, torch.float16), (False, torch.bfloat16, torch.bfloat16)])
def test_recompute_function_matches_float64_and_holds_input_and_stats(in_last, in_dtype,
                                                                      out_dtype):
    # the torch ops torch.compile runs for a norm: F.layer_norm's output in the requested dtype,
    # the float64 formula's gradients, and for the backward only x itself (no map of its own)
    # and two floats per position
    x, weight, bias, leaves64, grad, leaves = _graded_case(in_last, in_dtype)
    held = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: held.append(t) or t, lambda t: t):
        y = layer_norm_2d_recompute(*leaves, out_dtype=out_dtype)
    maps = [t for t in held if t.numel() == x.numel()]
    assert len(maps) == 1 and maps[0].data_ptr() == leaves[0].data_ptr()
    assert sum(t.numel() for t in held) == x.numel() + 2 * 3 * 4 * 5 + 20
    assert y.dtype == (out_dtype or x.dtype)
    assert y.is_contiguous(memory_format=torch.channels_last)
    plain = torch.nn.functional.layer_norm(x.float().permute(0, 2, 3, 1), (20, ), weight, bias)
    rtol = 1e-5 if y.dtype == torch.float32 else torch.finfo(y.dtype).eps
    assert torch.allclose(y.float(), plain.permute(0, 3, 1, 2), rtol=rtol, atol=1e-5)
    y.backward(grad.to(y.dtype))
    tol = 1e-5 if y.dtype == torch.float32 and in_dtype == torch.float32 else 2e-2
    for name, a, c in zip(('x', 'weight', 'bias'), leaves, leaves64):
        assert a.grad.dtype == a.dtype and a.grad.shape == c.shape
        assert rel(a.grad, c.grad) < tol, name


def test_recompute_function_output_dtype_follows_f_layer_norm_under_autocast():
    x, weight, bias = inputs(1, 8, 3, 3)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert layer_norm_2d_recompute(x.bfloat16(), weight, bias).dtype == torch.float32
    assert layer_norm_2d_recompute(x.bfloat16(), weight, bias).dtype == torch.bfloat16


def test_compiled_norm_is_the_recomputing_function(monkeypatch):
    # inside torch.compile layer_norm_2d takes the recomputing Function (save_output: the one
    # that works from the output); eager on the CPU stays F.layer_norm
    from vmamba_kernels import layernorm_recompute
    calls = []
    real = layernorm_recompute.layer_norm_2d_recompute

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(layernorm_recompute, 'layer_norm_2d_recompute', spy)
    x, weight, bias = inputs(2, 8, 3, 4)
    vk.layer_norm_2d(x, weight, bias, backend='torch')
    assert calls == []
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    out = vk.layer_norm_2d(x, weight, bias, backend='torch', out_dtype=torch.bfloat16)
    assert calls == [x.shape] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference(x, weight, bias, 1e-5).float(),
                               rtol=1e-2, atol=1e-2)
