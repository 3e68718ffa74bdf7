"""SS2D: VMamba's 2D selective-scan mixer (steps 1-7 of the reference), channel-first."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vmamba_kernels import channels_last_scan, resolve_backend, ss2d_scan
from vmamba_kernels.checks import wants_grad

from .utils.layers import LayerNorm2d, Linear2d, channel_first
from .utils.recompute import run_recomputed

NUM_DIRECTIONS = 4


class SS2D(nn.Module):
    """in_proj -> depthwise 3x3 conv -> SiLU -> 4-direction selective scan -> out_norm ->
    (z gate) -> out_proj.

    Args:
        dim (int): input/output channels.
        d_state (int): SSM state size N. Default: 1.
        ssm_ratio (float): d_inner = ssm_ratio * dim. Default: 1.0.
        dt_rank (int | 'auto'): rank R of the dt projection; 'auto' = ceil(dim / 16).
        conv_bias (bool): bias of the depthwise conv. Default: False.
        gate (bool): v0's z gate (in_proj to 2 * d_inner, y * SiLU(z)). Default: False.
        dropout (float): dropout after out_proj. Default: 0.
        dt_min, dt_max, dt_init_floor (float): Mamba's dt initialization range.
        scan_backend (str, optional): 'auto' | 'triton' | 'torch', passed to
            :func:`vmamba_kernels.ss2d_scan` (None: ``$VMAMBA_SCAN_BACKEND`` or auto).
        recompute_input (bool): while gradients are wanted, in_proj -> conv -> SiLU runs under
            activation checkpointing: the in_proj and conv outputs (d_inner channels each) are
            not held for the backward, which recomputes them from the block's normalised input
            (held anyway by in_proj). Default: False.
    """

    def __init__(self, dim, d_state=1, ssm_ratio=1.0, dt_rank='auto', conv_bias=False,
                 gate=False, dropout=0., dt_min=1e-3, dt_max=0.1, dt_init_floor=1e-4,
                 scan_backend=None, recompute_input=False):
        super().__init__()
        self.recompute_input = recompute_input
        d_inner = int(ssm_ratio * dim)
        rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.d_inner, self.d_state, self.dt_rank, self.gate = d_inner, d_state, rank, gate
        self.scan_backend = scan_backend
        self.in_proj = Linear2d(dim, d_inner * (2 if gate else 1), bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=conv_bias)
        self.act = nn.SiLU()
        k = NUM_DIRECTIONS
        self.x_proj_weight = nn.Parameter(torch.empty(k, rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d_inner))
        self.A_logs = nn.Parameter(torch.empty(k * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(k * d_inner))
        self.out_norm = LayerNorm2d(d_inner, feeds_linear=True)
        self.out_proj = Linear2d(d_inner, dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        """Mamba's initialization of the SSM parameters."""
        dt_min, dt_max, floor = self._dt_range
        nn.init.uniform_(self.x_proj_weight, -self.d_inner**-0.5, self.d_inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) +
                       math.log(dt_min)).clamp(min=floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        states = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        self.A_logs.copy_(torch.log(states).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def _scan_input(self, x, backend):
        """in_proj -> depthwise conv -> SiLU: the scan's input, channel-first and contiguous as
        the Triton kernels and the differentiable path read it (a channels-last convolution
        output is copied once, its gradient copied back: :func:`channel_first`), or in the
        layout it has where the torch path runs without gradients (the CPU's C scan reads
        channels-last rows, which a copy to channel-first would only have to undo), and the
        gate z (None without gate). ``backend``: the scan's, resolved. The Triton kernels that
        read channels-last maps get the map as it is (:meth:`_scan_reads_channels_last`)."""
        x = self.in_proj(x)
        z = None
        if self.gate:
            x, z = x.chunk(2, dim=1)
        x = self.act(self.conv2d(x))
        if (wants_grad(x) or backend != 'torch') and not self._scan_reads_channels_last(
                x, backend):
            x = channel_first(x)
        return x, z

    def _scan_reads_channels_last(self, x, backend):
        """Whether the scan reads x stored channels-last (the Triton kernels of
        ``vmamba_kernels.ss2d_n1_cl``, where ``$VMAMBA_SCAN_CHANNELS_LAST`` says): then the map
        is handed over as the convolution left it."""
        return backend == 'triton' and self.d_state == 1 and channels_last_scan(
            *x.shape[2:], inference=not wants_grad(x))

    def forward(self, x):
        backend = resolve_backend(self.scan_backend, x)  # once per call: it reads the environment
        if self.recompute_input:
            x, z = run_recomputed(lambda t: self._scan_input(t, backend), x,
                                  [x, *self.in_proj.parameters(), *self.conv2d.parameters()])
        else:
            x, z = self._scan_input(x, backend)
        batch, channels, height, width = x.shape
        # the x projection of all directions as one batched GEMM on x as it is: autograd then
        # keeps x itself for the weight's gradient (the storage the scan keeps too), where an
        # einsum would keep a permuted copy of it
        weight = self.x_proj_weight.to(x.dtype).reshape(-1, channels)
        proj = torch.bmm(weight.expand(batch, -1, -1), x.flatten(2))
        proj = proj.view(batch, NUM_DIRECTIONS, -1, height * width)
        dt_low, Bs, Cs = proj.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        # the scan's output in the map's dtype (under autocast half precision, as the authors'
        # kernel returns it; the four directions are summed in float32 and rounded once, or on
        # a float16 map on the GPU in float16 as the authors' merge adds them)
        y = ss2d_scan(x, dt_low.contiguous(), self.dt_projs_weight.float(),
                      self.dt_projs_bias.float(), -torch.exp(self.A_logs.float()),
                      Bs.contiguous(), Cs.contiguous(), self.Ds.float(),
                      backend=backend, out_dtype=x.dtype)
        y = self.out_norm(y)
        if self.gate:
            y = y * F.silu(z)
        return self.dropout(self.out_proj(y))
