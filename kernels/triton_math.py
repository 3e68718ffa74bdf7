"""Triton device functions shared by the SS2D kernels (``ss2d_triton.py``, ``ss2d_n1.py``,
``ss2d_n1_map.py``, ``ss2d_n1_cl.py``): the scans' combines, a softplus accurate to a few float32
ulps and the gradients of one chunk of the d_state 1 backward."""
import triton
import triton.language as tl


@triton.jit
def _combine(a_left, b_left, a_right, b_right):
    # composition of h -> a_left * h + b_left, then h -> a_right * h + b_right
    return a_left * a_right, b_left * a_right + b_right


@triton.jit
def _combine_grad(g_first, p_first, a_first, g_then, p_then, a_then):
    """Combine of the backward scan g_t = e_t + a_{t+1} g_{t+1}, in processing order (``first``:
    the later steps, already combined; ``then``: the earlier ones). A segment [i, j] is
    (G, P, a_i) with g_i = G + P * a_{j+1} g_{j+1}; one step is (e_t, 1, a_t). Carrying each
    segment's own first decay avoids the one-step shift of the decay (a gather) per chunk."""
    scale = p_then * a_first
    return g_then + scale * g_first, scale * p_first, a_then


@triton.jit
def _channel_params(A_ptr, bias_ptr, D_ptr, kc, cm, HAS_D: tl.constexpr):
    """Per-channel A, dt bias and D (zeros without D) at the flat (direction, channel) indices
    ``kc``, in float32."""
    A = tl.load(A_ptr + kc, mask=cm, other=0.).to(tl.float32)
    bias = tl.load(bias_ptr + kc, mask=cm, other=0.).to(tl.float32)
    if HAS_D:
        Dk = tl.load(D_ptr + kc, mask=cm, other=0.).to(tl.float32)
    else:
        Dk = tl.zeros_like(A)
    return A, bias, Dk


@triton.jit
def _log1p_unit(z):
    """log(1 + z) for 0 <= z <= 1, to a few float32 ulps also for tiny z: 2 atanh(s) with
    s = z / (2 + z) <= 1/3, summed as its series up to s^15 (the first term left out is below
    2e-9 of the sum). ~12 instructions where log(w) * z / (w - 1) took ~35: tl.log is a
    software logarithm (the hardware's lg2.approx is not accurate near 1)."""
    s = tl.fdiv(z, 2.0 + z)
    s2 = s * s
    p = s2 * (1.0 / 15.0) + (1.0 / 13.0)
    p = p * s2 + (1.0 / 11.0)
    p = p * s2 + (1.0 / 9.0)
    p = p * s2 + (1.0 / 7.0)
    p = p * s2 + (1.0 / 5.0)
    p = p * s2 + (1.0 / 3.0)
    p = p * s2 + 1.0
    return 2.0 * s * p


@triton.jit
def _softplus(x):
    """log(1 + e^x) as max(x, 0) + log(1 + e^-|x|): the logarithm's argument stays in [1, 2]."""
    return tl.maximum(x, 0.0) + _log1p_unit(tl.exp(-tl.abs(x)))


@triton.jit
def _chunk_grads(g, decay, delta, u, bv, A, Dk, pre, dy, h0, m2, HAS_D: tl.constexpr,
                 REV: tl.constexpr):
    """One chunk of the d_state 1 backward on a (channels, steps) tile, given dL/dh (``g``):
    the chunk's states recomputed from its start state ``h0`` (scanned along the steps,
    backwards with REV), then du (this direction's part of dx), d(delta pre-activation) (0
    outside ``m2``), the per-channel terms of dA, d bias and dD (zeros without D) and the
    per-step channel sums of dB and dC."""
    du_in = delta * u
    inp = du_in * bv[None, :]
    prod, states = tl.associative_scan((decay, inp), 1, _combine, reverse=REV)
    states = states + prod * h0[:, None]
    carried = states - inp  # decay_t * h_{t-1}
    gb = g * bv[None, :]
    du = gb * delta
    dD_part = tl.zeros_like(A)
    if HAS_D:
        du += Dk[:, None] * dy
        dD_part = tl.sum(dy * u, 1)
    ddelta = g * A[:, None] * carried + gb * u
    dpre = tl.where(m2, ddelta / (1.0 + tl.exp(-pre)), 0.)
    return (du, dpre, tl.sum(g * delta * carried, 1), tl.sum(dpre, 1), dD_part,
            tl.sum(g * du_in, 0), tl.sum(states * dy, 0))
