"""The kernels' softplus (max(x, 0) + log1p(e^-|x|), log1p as a short atanh series) against
float64, over the range delta's pre-activation takes and beyond."""
import torch
import triton
import triton.language as tl

from vmamba_kernels.triton_math import _softplus


@triton.jit
def _softplus_kernel(x_ptr, y_ptr, N: tl.constexpr):
    offsets = tl.arange(0, N)
    tl.store(y_ptr + offsets, _softplus(tl.load(x_ptr + offsets)))


def test_softplus_is_within_a_few_ulps_of_float64_everywhere():
    # dt in [1e-3, 0.1] puts the pre-activation around -7 to -2 at initialisation: there
    # softplus ~ e^x, where log(1 + z) computed naively loses the relative precision
    x = torch.cat([torch.linspace(-60, 60, 2048), -torch.logspace(-8, 1.6, 1024),
                   torch.logspace(-8, 1.6, 1024), torch.randn(4096) * 8]).float()
    y = torch.empty_like(x)
    _softplus_kernel[(1, )](x, y, N=x.numel())
    ref = torch.nn.functional.softplus(x.double(), threshold=1000.0)
    rel = (y.double() - ref).abs() / ref
    assert rel.max().item() < 1e-6, x[rel.argmax()].item()
    # the edges: no overflow for large x, exact zero and infinity at the infinities
    edges = torch.tensor([-float('inf'), -1e30, 1e30, float('inf')])
    out = torch.empty_like(edges)
    _softplus_kernel[(1, )](edges, out, N=4)
    assert out.tolist() == [0.0, 0.0, edges[2].item(), float('inf')]
