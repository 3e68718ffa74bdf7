"""LayerNorm over the channels of a (batch, C, H, W) map that keeps its input, mean and rstd for
the backward and recomputes x-hat there, in torch operations: what ``layer_norm_2d`` runs inside
``torch.compile`` (unless it keeps the output, ``layernorm_from_output.py``).

Inductor compiled ``F.layer_norm`` so that the forward stored each norm's x-hat for the backward
in a layout of its own choosing: on the H200 (torch 2.11) VMamba-T's x-hat maps came out in
(batch, W, C, H) order although their input was channels-last, and the backward's reductions
over them read with a stride of H or C x H between neighbouring threads (~6.9 ms of the 55.7 ms
compiled training step, docs/notes/2026-12-02.md). Here the backward needs only what the graph
holds anyway, the input (the residual stream) in its own layout, and two floats per position;
x-hat is recomputed where the backward's reductions read it, and the forward no longer writes it.
"""
import torch

from .layernorm_from_output import backward_from_x_hat

__all__ = ['layer_norm_2d_recompute']


class LayerNormRecomputeFunction(torch.autograd.Function):
    """Statistics and arithmetic in float32; y in ``out_dtype``, stored channels-last (the
    layout ``F.layer_norm`` on the channel-last view gives)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, out_dtype):
        # torch's own norm (the values F.layer_norm gives); stored (batch, H, W, C)
        y, mean, rstd = torch.native_layer_norm(x.permute(0, 2, 3, 1).float(), (x.shape[1], ),
                                                weight.float(), bias.float(), eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.param_dtypes = (weight.dtype, bias.dtype)
        return y.to(out_dtype).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        # the same arithmetic as the forward's x-hat, written on the (batch, C, H, W) view:
        # otherwise the graph's common-subexpression pass merges the two and the compiled
        # forward keeps x-hat again
        xhat = ((x.float() - mean.permute(0, 3, 1, 2)) * rstd.permute(0, 3, 1, 2)).permute(
            0, 2, 3, 1)
        return backward_from_x_hat(xhat, rstd, dy, weight, x.dtype,
                                   ctx.param_dtypes) + (None, None)


def layer_norm_2d_recompute(x, weight, bias, eps=1e-5, out_dtype=None):
    """LayerNorm over dim 1 of ``x`` (batch, C, H, W) whose backward keeps x and recomputes
    x-hat. ``out_dtype``: default ``F.layer_norm``'s (float32 under autocast, else x's dtype)."""
    if out_dtype is None:
        autocast = torch.is_autocast_enabled(x.device.type)
        out_dtype = torch.float32 if autocast else x.dtype
    return LayerNormRecomputeFunction.apply(x, weight, bias, float(eps), out_dtype)
