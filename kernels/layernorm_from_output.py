"""LayerNorm over the channels of a (batch, C, H, W) map whose backward works from its output, in
torch operations: what ``layer_norm_2d(..., save_output=True)`` runs inside ``torch.compile``.

Inductor turns an ``F.layer_norm`` into fused kernels but keeps the norm's input for the backward
(the float32 residual stream, in VMamba). Written as an autograd Function whose backward needs
only the output y (held anyway by the linear layer y feeds), the rstd per position and the
parameters, the compiled graph has no reason to keep the input: x-hat is recovered as
(y - bias) / weight, as in the Triton kernel's FROM_OUTPUT backward (``layernorm2d.py``), with the
same accuracy: y's rounding divided by the weight.
"""
import torch

__all__ = ['layer_norm_2d_from_output']

# a zero weight's channel loses its x-hat (its output no longer depends on it); kept finite
_MIN_WEIGHT = 1e-12


class LayerNormFromOutputFunction(torch.autograd.Function):
    """Statistics and arithmetic in float32; y in ``out_dtype``, stored channels-last (the
    layout ``F.layer_norm`` on the channel-last view gives)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        xl = x.permute(0, 2, 3, 1).float()
        var, mean = torch.var_mean(xl, dim=-1, keepdim=True, correction=0)
        rstd = torch.rsqrt(var + eps)
        y = ((xl - mean) * rstd * weight.float() + bias.float()).to(out_dtype)
        ctx.save_for_backward(y, weight, bias, rstd)
        ctx.x_dtype = x.dtype
        return y.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, dy):
        y, weight, bias, rstd = ctx.saved_tensors
        w = weight.float()
        w_safe = torch.where(w.abs() < _MIN_WEIGHT, torch.where(w < 0, -_MIN_WEIGHT, _MIN_WEIGHT),
                             w)
        xhat = (y.float() - bias.float()) / w_safe
        return backward_from_x_hat(xhat, rstd, dy, weight, ctx.x_dtype,
                                   (weight.dtype, bias.dtype)) + (None, None)


def backward_from_x_hat(xhat, rstd, dy, weight, x_dtype, param_dtypes):
    """A channel norm's (dx, d weight, d bias) from x-hat and rstd (float32, (batch, H, W, C)
    and (batch, H, W, 1)) and the output gradient ``dy`` (batch, C, H, W): dx in ``x_dtype`` as
    a (batch, C, H, W) view, the parameters' in ``param_dtypes``."""
    dyl = dy.permute(0, 2, 3, 1).float()
    g = dyl * weight.float()
    dx = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    dweight = (dyl * xhat).sum((0, 1, 2)).to(param_dtypes[0])
    dbias = dyl.sum((0, 1, 2)).to(param_dtypes[1])
    return dx.to(x_dtype).permute(0, 3, 1, 2), dweight, dbias


def layer_norm_2d_from_output(x, weight, bias, eps=1e-5, out_dtype=None):
    """LayerNorm over dim 1 of ``x`` (batch, C, H, W) whose backward keeps the output, not the
    input (y must stay unmodified until the backward). ``out_dtype``: default x's dtype."""
    return LayerNormFromOutputFunction.apply(x, weight, bias, float(eps), out_dtype or x.dtype)
