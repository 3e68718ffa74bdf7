"""vmamba_kernels: VMamba's selective scan (SS2D core) in Triton, with its torch reference.

Installed as ``vmamba_kernels`` (from the ``kernels/`` folder of mmvmamba); it imports nothing
from OpenMMLab. Public entry points:

* :func:`ss2d_scan` - the fused SS2D core (cross-scan + dt projection + S6 + cross-merge) with a
  backend switch: Triton on CUDA tensors, torch elsewhere.
* :func:`layer_norm_2d` - LayerNorm over the channels of a (batch, C, H, W) map, the same
  switch (Triton kernel on CUDA, ``F.layer_norm`` elsewhere).
* :func:`selective_scan_torch`, :func:`cross_scan`, :func:`cross_merge` - the torch reference
  pieces (mamba-ssm semantics), also used as the CPU path.
"""
import os

from .checks import check_tensor
from .reference import (cross_merge, cross_scan, scan_orders, selective_scan_torch,
                        ss2d_scan_torch, to_scan_order)

__all__ = [
    'ss2d_scan', 'ss2d_scan_torch', 'ss2d_scan_triton', 'selective_scan_torch', 'cross_scan',
    'cross_merge', 'scan_orders', 'to_scan_order', 'resolve_backend', 'BACKENDS', 'BACKEND_ENV',
    'layer_norm_2d'
]

BACKENDS = ('auto', 'triton', 'torch')
BACKEND_ENV = 'VMAMBA_SCAN_BACKEND'


def ss2d_scan_triton(*args, **kwargs):
    """Triton path (imported on first use so that ``import vmamba_kernels`` stays cheap)."""
    from .ss2d_triton import ss2d_scan_triton as impl
    return impl(*args, **kwargs)


def resolve_backend(backend, tensor):
    """Pick 'triton' or 'torch' for ``tensor``.

    ``backend`` None reads the environment variable ``VMAMBA_SCAN_BACKEND`` (default 'auto').
    'auto' is Triton for CUDA tensors and torch otherwise. 'triton' on CPU tensors needs the Triton
    interpreter (``TRITON_INTERPRET=1`` set before triton is imported): it is for tests only.
    """
    if backend is None:
        backend = os.environ.get(BACKEND_ENV, 'auto') or 'auto'
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (argument or ${BACKEND_ENV}), "
                         f'got {backend!r}')
    if backend == 'auto':
        return 'triton' if tensor.is_cuda else 'torch'
    if backend == 'triton' and not tensor.is_cuda and os.environ.get('TRITON_INTERPRET') != '1':
        raise ValueError(f"backend='triton' needs CUDA tensors, got tensors on {tensor.device} "
                         "(set TRITON_INTERPRET=1 before importing triton to run the kernels "
                         "on CPU in the interpreter, or use backend='torch')")
    return backend


def ss2d_scan(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D=None, backend=None):
    """Fused SS2D core of VMamba.

    Args:
        x (Tensor): (batch, C, H, W) map after the depthwise conv and SiLU; float32, bfloat16 or
            float16 (float64 on the torch path).
        dt_low (Tensor): (batch, 4, R, H*W) low-rank dt, in the map's row-major order, one set per
            direction (rows 0..R-1 of ``x_proj`` applied to the map).
        dt_weight (Tensor): (4, C, R) dt projection (``dt_projs_weight``).
        dt_bias (Tensor): (4, C) delta bias (``dt_projs_bias``); softplus is applied after it.
        A (Tensor): (4*C, N) real state matrix (``-exp(A_logs)``).
        Bs, Cs (Tensor): (batch, 4, N, H*W) in row-major order.
        D (Tensor, optional): (4*C,) skip (``Ds``).
        backend (str, optional): 'auto', 'triton' or 'torch'; default from ``$VMAMBA_SCAN_BACKEND``
            or 'auto' (Triton on CUDA, torch elsewhere).

    Returns:
        Tensor: (batch, C, H, W) float32 (float64 for float64 input on the torch path): the sum over
        the 4 directions of each direction's scan output, mapped back to (H, W).
    """
    # both paths validate every argument; only x is needed to choose between them
    check_tensor('x', x, 4)
    if resolve_backend(backend, x) == 'triton':
        return ss2d_scan_triton(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    return ss2d_scan_torch(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)


def layer_norm_2d(x, weight, bias, eps=1e-5, backend=None, out_dtype=None,
                  channels_last_out=False):
    """LayerNorm over dim 1 of a (batch, C, H, W) map with the backend switch of
    :func:`ss2d_scan`. ``out_dtype`` (default x's dtype) and ``channels_last_out`` (store the
    output channels-last) apply to the Triton path; the torch path follows ``F.layer_norm``."""
    from .layernorm2d import layer_norm_2d_torch, layer_norm_2d_triton
    if resolve_backend(backend, x) == 'triton':
        return layer_norm_2d_triton(x, weight, bias, eps, out_dtype, channels_last_out)
    return layer_norm_2d_torch(x, weight, bias, eps)
