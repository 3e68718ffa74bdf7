"""Torch implementation of the selective scan (S6) and of VMamba's 2D cross scan.

This is the differentiable torch path of the model (CPU training; inference takes
``ss2d_grid.py``) and a reference for the Triton kernels, so it is vectorized: the recurrence ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t`` is
solved chunk by chunk over the sequence, each chunk in closed form with a masked (T, T) matrix of
decays ``exp(sum_{r=s+1..t} delta_r * A)`` (the "segment sum" form: every exponent is <= 0, so it
never overflows), and only the chunk-to-chunk carry is sequential. The loop therefore runs L / T
times instead of L times.

Shapes follow mamba-ssm's ``selective_scan_fn``:
    u, delta: (batch, channels, L); A: (channels, N); B, C: (batch, groups, N, L);
    D, delta_bias: (channels,); channels must be a multiple of groups, channel ``d`` uses group
    ``d // (channels // groups)``.

The 2D cross scan flattens an (H, W) map into K = 4 sequences (row-major, column-major, and both
reversed); the cross merge maps each sequence back to (H, W) and sums them.
"""
import math
from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .checks import check_selective_scan_inputs, check_ss2d_inputs, wants_grad
from .ss2d_grid import scan_lines

__all__ = [
    'selective_scan_torch', 'scan_orders', 'cross_scan', 'cross_merge', 'to_scan_order',
    'ss2d_scan_chunked', 'default_chunk_size'
]

NUM_DIRECTIONS = 4
# The chunk's (batch, channels, N, T, T) decay matrix is kept under this many elements.
_MAX_DECAY_ELEMENTS = 1 << 23
# With gradients, autograd would keep every chunk's decay matrix for the backward: batch x
# channels x N x L x T elements in all. Beyond this many, each chunk is recomputed in the
# backward instead (activation checkpointing), and only the chunk's inputs are kept.
MAX_KEPT_DECAY_ELEMENTS = 1 << 26


def default_chunk_size(batch, channels, d_state, length):
    """Largest power-of-two chunk in [4, 64] whose decay matrix stays under the memory cap."""
    per_t2 = max(1, batch * channels * d_state)
    t = int(math.sqrt(_MAX_DECAY_ELEMENTS / per_t2))
    t = 1 << max(2, min(6, t.bit_length() - 1)) if t >= 1 else 4
    return max(1, min(t, length))


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def selective_scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: Optional[torch.Tensor] = None,
                         delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                         chunk_size=None):
    """S6 selective scan (mamba-ssm semantics). Returns y like ``u`` in shape, in float32
    (float64 when ``u`` is float64).

    With gradients, the chunked closed form (autograd through a per-step loop is 4-9x slower,
    tools/kernel_dev/benchmark_scan_cpu.py); without, and with no ``chunk_size`` forced, the
    sequence cut into about sqrt(L) lines of about sqrt(L) steps and solved by
    :func:`vmamba_kernels.ss2d_grid.scan_lines` (the closed form's T x T decay matrix costs T exps
    per element)."""
    check_selective_scan_inputs(u, delta, A, B, C, D, delta_bias)
    cdt = _compute_dtype(u.dtype)
    batch, channels, length = u.shape
    groups, d_state = B.shape[1], A.shape[1]
    u_c = u.to(cdt)
    delta_c = delta.to(cdt)
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    A_c = A.to(cdt)
    # (batch, groups, 1, N, L) broadcasts against channels split as (groups, channels // groups)
    B_c = B.to(cdt).unsqueeze(2)
    C_c = C.to(cdt).unsqueeze(2)
    per_group = channels // groups
    needs_grad = wants_grad(u, delta, A, B, C, D, delta_bias)
    if chunk_size is None and not needs_grad:
        y = _scan_no_grad(u_c, delta_c, A_c, B_c, C_c, batch, groups, per_group, d_state, length)
        return y if D is None else y + D.to(cdt)[:, None] * u_c
    T = chunk_size or default_chunk_size(batch, channels, d_state, length)
    recompute = needs_grad and batch * channels * d_state * length * T > MAX_KEPT_DECAY_ELEMENTS

    du = (delta_c * u_c).view(batch, groups, per_group, 1, length)
    dA = (delta_c.view(batch, groups, per_group, 1, length) *
          A_c.view(groups, per_group, d_state, 1))  # (b, g, p, N, L)
    h = u_c.new_zeros(batch, groups, per_group, d_state)
    causal = torch.ones(T, T, dtype=torch.bool, device=u.device).tril()
    ys = []
    for start in range(0, length, T):
        stop = min(start + T, length)
        inputs = du[..., start:stop] * B_c[..., start:stop]  # (b, g, p, N, n)
        mask = causal[:stop - start, :stop - start]
        if recompute:
            states = checkpoint(_chunk_states, dA[..., start:stop], inputs, h, mask,
                                use_reentrant=False)
        else:
            states = _chunk_states(dA[..., start:stop], inputs, h, mask)
        ys.append((states * C_c[..., start:stop]).sum(3))
        h = states[..., -1]
    y = torch.cat(ys, -1).reshape(batch, channels, length)
    if D is not None:
        y = y + D.to(cdt)[:, None] * u_c
    return y


def _chunk_states(dA, inputs, h, mask):
    """The states of one chunk of n steps in closed form: (b, g, p, N, n) from its decay
    exponents ``dA`` and inputs (both (b, g, p, N, n)), the state ``h`` entering it and the
    causal (n, n) ``mask``."""
    cum = dA.cumsum(-1)
    seg = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # [t, s] = cum_t - cum_s
    decay = torch.exp(seg.masked_fill(~mask, float('-inf')))
    states = (decay @ inputs.unsqueeze(-1)).squeeze(-1)
    return states + torch.exp(cum) * h.unsqueeze(-1)


def _scan_no_grad(u, delta, A, B, C, batch, groups, per_group, d_state, length):
    """The recurrence without a graph: the sequence as ~sqrt(L) lines of ~sqrt(L) steps."""
    steps = math.isqrt(length - 1) + 1 if length > 1 else 1
    lines = -(-length // steps)
    pad = steps * lines - length  # zero inputs and log-decays after the end change nothing

    def as_grid(t):  # (..., L) -> (..., steps, lines)
        t = F.pad(t, (0, pad)) if pad else t
        return t.reshape(t.shape[:-1] + (lines, steps)).transpose(-1, -2)

    log_decay = (delta.view(batch, groups, per_group, 1, length) *
                 A.view(groups, per_group, d_state, 1))
    inputs = (delta * u).view(batch, groups, per_group, 1, length) * B
    states = scan_lines(as_grid(log_decay), as_grid(inputs))
    states = states.transpose(-1, -2).reshape(states.shape[:-2] + (-1, ))[..., :length]
    return (states * C).sum(3).reshape(batch, groups * per_group, length)


@lru_cache(maxsize=64)
def _orders_cpu(height, width):
    length = height * width
    row = torch.arange(length)
    col = row.view(height, width).t().reshape(-1)
    return torch.stack([row, col, row.flip(0), col.flip(0)])


def scan_orders(height: int, width: int, device=None) -> torch.Tensor:
    """(4, H*W) long tensor: ``orders[k, t]`` is the row-major spatial index visited at step t of
    direction k (0: row-major, 1: column-major, 2: reversed row-major, 3: reversed column-major)."""
    orders = _orders_cpu(int(height), int(width))
    return orders if device is None else orders.to(device)


def to_scan_order(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(batch, 4, J, H*W) in spatial order -> the same in each direction's scan order."""
    orders = scan_orders(height, width, t.device)
    index = orders.view(1, NUM_DIRECTIONS, 1, -1).expand(t.shape[0], -1, t.shape[2], -1)
    return torch.gather(t, 3, index)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """(batch, C, H, W) -> (batch, 4, C, H*W): the map read in the 4 scan orders."""
    batch, channels, height, width = x.shape
    flat = x.reshape(batch, 1, channels, height * width).expand(-1, NUM_DIRECTIONS, -1, -1)
    return to_scan_order(flat, height, width)


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(batch, 4, C, H*W) in scan order -> (batch, C, H, W): each direction mapped back, summed."""
    batch, k, channels, length = ys.shape
    orders = scan_orders(height, width, ys.device)
    index = orders.view(1, NUM_DIRECTIONS, 1, -1).expand(batch, -1, channels, -1)
    spatial = torch.zeros_like(ys).scatter_(3, index, ys)
    return spatial.sum(1).view(batch, channels, height, width)


def ss2d_scan_chunked(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                      dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                      D: Optional[torch.Tensor] = None,
                      chunk_size: Optional[int] = None) -> torch.Tensor:
    """The fused SS2D core (contract of :func:`vmamba_kernels.ss2d_scan`) as cross scan, the
    selective scan above and cross merge: the differentiable torch path.

    Returns (batch, C, H, W) float32 (float64 for float64 inputs)."""
    check_ss2d_inputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    batch, channels, height, width = x.shape
    cdt = _compute_dtype(x.dtype)
    xs = cross_scan(x)
    delta = torch.einsum('kcr,bkrl->bkcl', dt_weight.to(cdt), dt_low.to(cdt))
    delta = to_scan_order(delta, height, width)
    ys = selective_scan_torch(
        xs.reshape(batch, NUM_DIRECTIONS * channels, -1), delta.reshape(batch, -1, height * width),
        A, to_scan_order(Bs, height, width), to_scan_order(Cs, height, width), D,
        delta_bias=dt_bias.reshape(-1), delta_softplus=True, chunk_size=chunk_size)
    return cross_merge(ys.view(batch, NUM_DIRECTIONS, channels, -1), height, width)
