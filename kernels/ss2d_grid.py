"""SS2D core vectorised over the map's rows and columns: the torch inference path (where the
compiled CPU scan is unavailable) and the form the ONNX export traces.

Each of VMamba's four scan orders walks the (H, W) map line by line: the row-major walk is H
rows of W steps, the column-major walk W columns of H steps, the other two the same backwards.
Cutting every sequence into those lines gives chunks that are already laid out as a 2-D grid
(steps x lines), so no gather is needed to bring a sequence into order, and the recurrence
``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t`` is solved in two short loops:

1. along the steps of a line, for every line (and batch, direction, channel) at once, starting
   each line from a zero state: ``W`` (or ``H``) vectorised steps;
2. along the lines, carrying each line's final state into the next: ``H`` (or ``W``) steps on
   one value per line.

The carried state enters line j at step t multiplied by ``exp(cumsum(delta * A))`` from the line's
start, a product of decays <= 1, so nothing can overflow. A 56 x 56 map therefore takes 112 small
vectorised steps instead of 3136 per-position steps, with each step's arithmetic in the same
order as the sequential recurrence.

Directions in the grid: a map ``m`` (..., H, W) in row-major order is seen by direction 0 as
``m^T`` (steps along W, lines are rows), by 1 as ``m`` (steps along H, lines are columns), by 2 and
3 as those flipped in both axes (walked backwards). On a square map the four directions share one
grid shape and are solved together; otherwise rows and columns are two groups.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

from .checks import check_ss2d_inputs

__all__ = ['ss2d_scan_grid', 'scan_lines']


def _to_grid(m: torch.Tensor, k: int) -> torch.Tensor:
    """Row-major map (..., H, W) -> direction k's grid (..., steps, lines) (a view)."""
    if k % 2 == 0:
        m = m.transpose(-1, -2)
    return m.flip(-1, -2) if k >= 2 else m


def _from_grid(g: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`_to_grid` (a view)."""
    if k >= 2:
        g = g.flip(-1, -2)
    return g.transpose(-1, -2) if k % 2 == 0 else g


def scan_lines(log_decay: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Solve ``h = exp(log_decay) * h_prev + inputs`` over sequences cut into equal lines.

    Args:
        log_decay, inputs (Tensor): (..., steps, lines); the sequence visits line 0's steps in
            order, then line 1's, ...; ``log_decay <= 0``.

    Returns:
        Tensor: the states h, (..., steps, lines), starting from h = 0.
    """
    steps, lines = inputs.shape[-2:]
    decay = torch.exp(log_decay)
    # every line from a zero state, all lines at once; the steps are kept as a list and stacked
    # once (no in-place writes: traced for ONNX, a write into a slice becomes a copy of the
    # whole tensor per step)
    rows = [inputs[..., 0, :]]
    for t in range(1, steps):
        rows.append(torch.addcmul(inputs[..., t, :], decay[..., t, :], rows[-1]))
    states = torch.stack(rows, -2)
    if lines == 1:
        return states
    # decay from each line's start to step t, and the state each line receives from the last
    from_start = torch.exp(log_decay.cumsum(-2))
    carried = [torch.zeros_like(states[..., 0, 0])]
    for j in range(1, lines):
        carried.append(torch.addcmul(states[..., -1, j - 1], from_start[..., -1, j - 1],
                                     carried[-1]))
    return torch.addcmul(states, from_start, torch.stack(carried, -1).unsqueeze(-2))


def _scan_group(ks: Sequence[int], x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, cdt):
    """Directions ``ks`` (sharing one grid shape) solved together; returns their outputs, each
    as a row-major (batch, C, H, W) map."""
    channels, height, width = x.shape[1:]
    d_state = A.shape[1]
    index = list(ks)

    def grid(m, k):  # (batch, J, H*W) row-major -> (batch, J, steps, lines)
        return _to_grid(m.reshape(m.shape[0], m.shape[1], height, width), k)

    u = torch.stack([grid(x, k) for k in ks], 1).to(cdt)  # (b, k, C, s, l)
    low = torch.stack([grid(dt_low[:, k], k) for k in ks], 1).to(cdt)  # (b, k, R, s, l)
    delta = torch.einsum('kcr,bkrsl->bkcsl', dt_weight[index].to(cdt), low)
    delta = F.softplus(delta + dt_bias[index].to(cdt)[None, :, :, None, None])
    b_in = torch.stack([grid(Bs[:, k], k) for k in ks], 1).to(cdt)  # (b, k, N, s, l)
    c_out = torch.stack([grid(Cs[:, k], k) for k in ks], 1).to(cdt)
    a = A.to(cdt).view(4, channels, d_state)[index]  # (k, C, N)
    log_decay = delta.unsqueeze(3) * a[None, :, :, :, None, None]  # (b, k, C, N, s, l)
    states = scan_lines(log_decay, (delta * u).unsqueeze(3) * b_in.unsqueeze(2))
    y = (states * c_out.unsqueeze(2)).sum(3)  # (b, k, C, s, l)
    if D is not None:
        y = y + D.to(cdt).view(4, channels)[index][None, :, :, None, None] * u
    return [_from_grid(y[:, i], k) for i, k in enumerate(ks)]


def ss2d_scan_grid(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                   dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                   D: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The fused SS2D core (contract of :func:`vmamba_kernels.ss2d_scan`) solved line by line.

    Differentiable, but autograd through its ~2 sqrt(H * W) steps per block is slower than the
    chunked closed form: the torch backend uses this for inference and traced graphs (ONNX) only.

    Returns:
        Tensor: (batch, C, H, W) float32 (float64 for float64 ``x``).
    """
    check_ss2d_inputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    height, width = x.shape[-2:]
    groups: List[Sequence[int]] = [(0, 1, 2, 3)] if height == width else [(0, 2), (1, 3)]
    out = None
    for ks in groups:
        for y in _scan_group(ks, x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, cdt):
            out = y.contiguous() if out is None else out.add_(y)
    return out
