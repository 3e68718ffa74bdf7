"""Channel-first building blocks: the whole model keeps (B, C, H, W) end to end."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from vmamba_kernels import layer_norm_2d
from vmamba_kernels.checks import wants_grad

from .recompute import run_recomputed


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``p``."""

    def __init__(self, p=0.):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f'drop path probability must be in [0, 1), got {p}')
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class _ChannelFirst(torch.autograd.Function):
    """``x.contiguous()`` whose gradient keeps ``x``'s layout: a channels-last ``x`` gets a
    channels-last gradient. Plain ``contiguous`` hands back its output's channel-first
    gradient, so the ops before it (a SiLU after a depthwise convolution that runs channels-last)
    met a gradient in another layout than their saved tensors, and cuDNN's convolution backward
    converted it with a copy of its own; here the conversion is an op of the graph, which
    ``torch.compile`` can fuse into the kernel computing the gradient."""

    @staticmethod
    def forward(ctx, x):
        ctx.channels_last = (not x.is_contiguous()
                             and x.is_contiguous(memory_format=torch.channels_last))
        return x.contiguous()

    @staticmethod
    def backward(ctx, grad):
        if ctx.channels_last:
            return grad.contiguous(memory_format=torch.channels_last)
        return grad


def channel_first(x):
    """``x`` as a contiguous (channel-first) NCHW map, its gradient in ``x``'s layout
    (:class:`_ChannelFirst`)."""
    if x.is_contiguous() or not wants_grad(x):
        return x.contiguous()
    return _ChannelFirst.apply(x)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (parameters shaped like nn.LayerNorm's).

    On CUDA it runs the channel-first Triton kernel of ``vmamba_kernels.layer_norm_2d`` (one read
    and one write of the map, no permute copies); elsewhere ``F.layer_norm`` on a channel-last
    view. The switch is the package's backend switch (argument ``backend`` or
    ``$VMAMBA_SCAN_BACKEND``).

    Args:
        feeds_linear (bool): the output only feeds a linear (1x1 conv) layer: on the Triton
            path it is then stored channels-last (what the convolution runs on without layout
            changes, as it gets from the permuted ``F.layer_norm`` output) and, under autocast,
            in the autocast dtype that layer would cast it to anyway. Otherwise it is
            channel-first and float32 under autocast like ``F.layer_norm``, so residual streams
            keep their precision. Default: False.
        backend (str, optional): 'auto' | 'triton' | 'torch'. Default: None (environment).
        memory_efficient (bool): on the Triton path and under ``torch.compile``, keep the
            output instead of the input for the backward, which recovers the normalised map as
            (y - bias) / weight (as Apex's memory-efficient LayerNorm). Where the output is held
            anyway (by the linear layer it feeds) the norm then holds no map of its own. The
            gradients carry the output's rounding divided by the weight. Default: False.
    """

    def __init__(self, normalized_shape, eps=1e-5, feeds_linear=False, backend=None,
                 memory_efficient=False, **kwargs):
        super().__init__(normalized_shape, eps=eps, **kwargs)
        self.feeds_linear, self.backend = feeds_linear, backend
        self.memory_efficient = memory_efficient

    def forward(self, x):
        if x.dim() == 4 and self.elementwise_affine and self.bias is not None:
            out_dtype = None
            if torch.is_autocast_enabled(x.device.type):
                out_dtype = (torch.get_autocast_dtype(x.device.type) if self.feeds_linear else
                             torch.float32)
            if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
                x = x.contiguous()
            return layer_norm_2d(x, self.weight, self.bias, self.eps, backend=self.backend,
                                 out_dtype=out_dtype, channels_last_out=self.feeds_linear,
                                 save_output=self.memory_efficient)
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A Linear layer applied per pixel of an NCHW map (a 1x1 conv with a 2-D weight, so its
    state-dict entry has the shape the authors' checkpoints use).

    In half precision (bf16/fp16 maps or autocast) it is ``F.linear`` on the channels-last view:
    one GEMM, no layout change when the map is stored channels-last (as
    LayerNorm2d(feeds_linear=True) and this layer write it), and far less dispatch overhead than
    a 1x1 convolution, which dominated launch-bound training steps. Float32 maps on CUDA stay a
    1x1 convolution: cuDNN runs those in TF32 by default (``torch.backends.cudnn.allow_tf32``)
    where a float32 GEMM would not, which made the GEMM 30% slower end to end (docs/kernels.md).
    On the CPU the GEMM is the faster of the two (VMamba-T inference at batch 1, 2 threads:
    121 -> 102 ms; docs/notes/2026-12-01.md)."""

    def forward(self, x):
        if (x.is_cuda and x.dtype == torch.float32
                and not torch.is_autocast_enabled(x.device.type)):
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)


class _GeluLinear(torch.autograd.Function):
    """``F.linear(gelu(h), weight, bias)`` over the last dim of ``h`` that keeps only ``h`` for
    the backward and recomputes ``gelu(h)`` there: the activation (as wide as ``h``) is not held
    between forward and backward. The same operations as GELU then ``F.linear`` (the linear in
    ``h``'s dtype, as autocast runs it on a half-precision ``h``)."""

    @staticmethod
    def forward(ctx, h, weight, bias):
        w, b = weight.to(h.dtype), bias.to(h.dtype)
        ctx.save_for_backward(h, w)
        return F.linear(F.gelu(h), w, b)

    @staticmethod
    def backward(ctx, dout):
        h, w = ctx.saved_tensors
        dout = dout.to(h.dtype)
        a = F.gelu(h)
        dw = dout.reshape(-1, dout.shape[-1]).t() @ a.reshape(-1, a.shape[-1])
        db = dout.reshape(-1, dout.shape[-1]).sum(0)
        dh = torch.ops.aten.gelu_backward(dout @ w, h)
        return dh, dw, db


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, per pixel.

    Args:
        recompute_act (bool): while training, keep only fc1's output for the backward and
            recompute the GELU there (one elementwise pass) instead of holding its output,
            ``hidden`` channels per pixel: for VMamba-T at batch 128 about 1.5 GiB less
            activation memory. Taken with gradients, no dropout and the exact GELU; under
            ``torch.compile`` as a checkpointed GELU -> fc2, of which the compiled backward
            recomputes the GELU alone. Default: False.
    """

    def __init__(self, dim, hidden, drop=0., recompute_act=False):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = Linear2d(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.recompute_act = recompute_act

    def forward(self, x):
        h = self.fc1(x)
        if (self.recompute_act and torch.is_grad_enabled() and self.drop.p == 0
                and self.act.approximate == 'none'):
            if torch.compiler.is_compiling():
                # inductor's partitioner keeps the GELU's output, which fc2's weight gradient
                # reads (it does not recompute a tensor that a matmul of the backward reads);
                # a checkpointed region it recomputes: the backward gets fc1's output alone
                return run_recomputed(self._act_fc2, h, [h, *self.fc2.parameters()])
            out = _GeluLinear.apply(h.permute(0, 2, 3, 1), self.fc2.weight, self.fc2.bias)
            return out.permute(0, 3, 1, 2)
        return self.drop(self.fc2(self.drop(self.act(h))))

    def _act_fc2(self, h):
        return self.fc2(self.act(h))
