"""Independent float64 reference: the SS2D recurrence written out step by step, one direction,
channel and time step at a time, straight from the definition (no chunking, no shared code with
the implementations under test). Slow; used on small shapes only."""
import torch


def _direction_order(k, height, width):
    """Spatial (row-major) indices in the order direction k visits them."""
    row_major = [i * width + j for i in range(height) for j in range(width)]
    col_major = [i * width + j for j in range(width) for i in range(height)]
    return [row_major, col_major, row_major[::-1], col_major[::-1]][k]


def naive_selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False):
    """mamba-ssm semantics, a Python loop over time steps in float64."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    batch, channels, length = u.shape
    per_group = channels // B.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    Bx = B.repeat_interleave(per_group, dim=1)  # (batch, channels, N, L)
    Cx = C.repeat_interleave(per_group, dim=1)
    h = torch.zeros(batch, channels, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    return y


def naive_ss2d(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D=None):
    """The fused SS2D core's contract, in float64, one direction at a time."""
    x, dt_low, dt_weight, dt_bias, A, Bs, Cs = (
        t.double() for t in (x, dt_low, dt_weight, dt_bias, A, Bs, Cs))
    batch, channels, height, width = x.shape
    flat = x.reshape(batch, channels, -1)
    out = torch.zeros_like(flat)
    for k in range(4):
        order = torch.tensor(_direction_order(k, height, width))
        u = flat[:, :, order]
        delta = torch.einsum('cr,brl->bcl', dt_weight[k], dt_low[:, k][:, :, order])
        y = naive_selective_scan(
            u, delta, A[k * channels:(k + 1) * channels], Bs[:, k:k + 1][..., order],
            Cs[:, k:k + 1][..., order], None if D is None else D[k * channels:(k + 1) * channels],
            delta_bias=dt_bias[k], delta_softplus=True)
        out[:, :, order] += y
    return out.view(batch, channels, height, width)
