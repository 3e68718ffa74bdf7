"""Where every call is routed: the backend (Triton or torch) by device or by choice, the Triton
kernels by d_state, the torch path by whether gradients are needed. The kernel modules below
import nothing from here or from each other's launchers."""
import os
from typing import Optional

import torch

from .checks import (check_contiguous, check_ss2d_inputs, check_tensor, check_triton_inputs,
                     env_choice, wants_grad)

__all__ = ['BACKENDS', 'BACKEND_ENV', 'resolve_backend', 'ss2d_scan', 'ss2d_scan_triton',
           'ss2d_scan_unfused_triton', 'ss2d_scan_torch', 'layer_norm_2d']

BACKENDS = ('auto', 'triton', 'torch')
BACKEND_ENV = 'VMAMBA_SCAN_BACKEND'
# which LayerNorm2d runs inside torch.compile on the Triton backend: inductor's (default), the
# Triton kernels as opaque operators for every norm, or only for channel-first inputs (the SS2D
# output norm's, which the scan writes channel-first)
COMPILED_NORMS = ('inductor', 'triton', 'channel-first')
COMPILED_NORM_ENV = 'VMAMBA_COMPILED_NORM'


def resolve_backend(backend: Optional[str], tensor: torch.Tensor) -> str:
    """Pick 'triton' or 'torch' for ``tensor``.

    ``backend`` None reads the environment variable ``VMAMBA_SCAN_BACKEND`` (default 'auto').
    'auto' is Triton for CUDA tensors and torch otherwise. 'triton' on CPU tensors needs the Triton
    interpreter (``TRITON_INTERPRET=1`` set before triton is imported): it is for tests only.
    """
    if backend is None:
        backend = env_choice(BACKEND_ENV, BACKENDS, 'auto')
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'auto':
        return 'triton' if tensor.is_cuda else 'torch'
    if backend == 'triton' and not tensor.is_cuda and os.environ.get('TRITON_INTERPRET') != '1':
        raise ValueError(f"backend='triton' needs CUDA tensors, got tensors on {tensor.device} "
                         "(set TRITON_INTERPRET=1 before importing triton to run the kernels "
                         "on CPU in the interpreter, or use backend='torch')")
    return backend


def ss2d_scan(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
              dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
              D: Optional[torch.Tensor] = None, backend: Optional[str] = None,
              out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
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
        out_dtype (torch.dtype, optional): the output's dtype: None (float32, or float64 for
            float64 input), torch.float32 or x's dtype (under autocast, half the bytes for the
            norm that follows and for the gradient coming back). The four directions are
            summed in float32 and rounded once, except by the d_state 1 kernels on a float16
            map, which add them into a float16 sum as the authors' merge does (``fp16_sums``
            of :func:`vmamba_kernels.ss2d_n1.n1_launch_config`).

    Returns:
        Tensor: (batch, C, H, W) float32 (float64 for float64 input on the torch path; else
        ``out_dtype``): the sum over
        the 4 directions of each direction's scan output, mapped back to (H, W). CPU inference
        returns it stored channels-last (what the following LayerNorm reads without a copy):
        use ``reshape`` rather than ``view`` on it.
    """
    # both paths validate every argument; only x is needed to choose between them
    check_tensor('x', x, 4)
    check_out_dtype(out_dtype, x)
    if resolve_backend(backend, x) == 'triton':
        return ss2d_scan_triton(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, out_dtype=out_dtype)
    y = ss2d_scan_torch(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    return y if out_dtype is None else y.to(out_dtype)


def check_out_dtype(out_dtype, x):
    """``out_dtype`` is None, torch.float32 or x's dtype, else a ValueError naming it."""
    if out_dtype is not None and out_dtype not in (torch.float32, x.dtype):
        raise ValueError(f'out_dtype must be None, torch.float32 or x\'s dtype ({x.dtype}), '
                         f'got {out_dtype!r}')


def _exported():
    """Inside torch.export, torch.jit tracing or an ONNX export: only torch ops may run (the
    graph must stand without this package's operators)."""
    return (getattr(torch.compiler, 'is_exporting', lambda: False)() or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export())


@torch.compiler.assume_constant_result
def _cpu_kernel_available_when_compiling() -> bool:
    """:func:`cpu_kernel_available`, which builds or loads the C scan, asked once while
    torch.compile traces: its answer is a constant of the graph, not code to trace."""
    from .cpu_scan import cpu_kernel_available
    return cpu_kernel_available()


def ss2d_scan_torch(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                    dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                    D: Optional[torch.Tensor] = None,
                    chunk_size: Optional[int] = None) -> torch.Tensor:
    """The non-Triton path of :func:`ss2d_scan`. Without gradients to track (inference), float32
    or half inputs on the CPU run the compiled C scan (:mod:`vmamba_kernels.cpu_scan`) where it
    is available (under ``torch.compile`` as one opaque operator); otherwise, and when traced
    or exported (torch.jit, torch.export, ONNX), the scan is solved along the map's
    rows and columns in torch (:func:`vmamba_kernels.ss2d_grid.ss2d_scan_grid`: about
    2 * sqrt(H * W) vectorised steps). With gradients, or a forced ``chunk_size``, it runs the
    differentiable chunked closed form (:func:`vmamba_kernels.reference.ss2d_scan_chunked`)."""
    from .cpu_scan import (MAX_STATE, cpu_kernel_available, ss2d_scan_cpu,
                           ss2d_scan_cpu_compiled)
    from .reference import ss2d_scan_chunked
    from .ss2d_grid import ss2d_scan_grid
    inputs = (x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    needs_grad = wants_grad(*inputs)
    if chunk_size is not None or needs_grad:
        return ss2d_scan_chunked(*inputs, chunk_size=chunk_size)
    check_ss2d_inputs(*inputs)
    if (x.device.type == 'cpu' and x.dtype != torch.float64 and A.shape[1] <= MAX_STATE
            and not _exported()):
        if torch.compiler.is_compiling():
            if _cpu_kernel_available_when_compiling():
                return ss2d_scan_cpu_compiled(*inputs)
        elif cpu_kernel_available():
            return ss2d_scan_cpu(*inputs)
    return ss2d_scan_grid(*inputs)


def ss2d_scan_triton(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                     dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                     D: Optional[torch.Tensor] = None, out_dtype: Optional[torch.dtype] = None,
                     **config) -> torch.Tensor:
    """Triton path of :func:`ss2d_scan`; returns (batch, C, H, W) float32 (or ``out_dtype``).

    d_state 1 runs the kernels of ``ss2d_n1.py`` (``config``: see
    :func:`vmamba_kernels.ss2d_n1.ss2d_scan_n1`), larger d_state the general ones of
    ``ss2d_triton.py`` (``config``: ``block_c``, ``block_l``, ``num_warps``)."""
    check_ss2d_inputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    check_triton_inputs(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    check_out_dtype(out_dtype, x)
    if A.shape[1] == 1:
        from .ss2d_n1 import ss2d_scan_n1
        return ss2d_scan_n1(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, out_dtype=out_dtype,
                            **config)
    from .ss2d_triton import ss2d_scan_general
    general = {'block_c', 'block_l', 'num_warps'}
    unknown = sorted(set(config) - general)
    if unknown:
        raise TypeError(f'{unknown} apply to d_state 1 only (the kernels of ss2d_n1.py); with '
                        f'd_state {A.shape[1]} the options are {sorted(general)}')
    y = ss2d_scan_general(x.contiguous(), dt_low, dt_weight, dt_bias, A, Bs, Cs, D, **config)
    return y if out_dtype is None else y.to(out_dtype)


def ss2d_scan_unfused_triton(xs, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                             config=None):
    """Unfused baseline for the benchmark: the same scan kernels over inputs already
    cross-scanned into (batch, 4, ., L) scan order; returns per-direction (batch, 4, C, L)."""
    check_contiguous((('xs', xs), ))  # (check_triton_inputs lets a channels-last map through)
    check_triton_inputs(xs, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
    if A.shape[1] == 1:
        from .ss2d_n1 import ss2d_scan_n1_unfused
        return ss2d_scan_n1_unfused(xs, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                                    config)
    from .ss2d_triton import ss2d_scan_general_unfused
    return ss2d_scan_general_unfused(xs, dt_low, dt_weight, dt_bias, A, Bs, Cs, D, height, width,
                                     config)


def _triton_norm_compiled(x):
    """Whether, inside torch.compile, ``x``'s norm runs the Triton kernels (opaque operators)
    rather than inductor's: ``$VMAMBA_COMPILED_NORM`` (see ``COMPILED_NORMS``)."""
    mode = env_choice(COMPILED_NORM_ENV, COMPILED_NORMS, 'inductor')
    return mode == 'triton' or (mode == 'channel-first' and x.is_contiguous())


def layer_norm_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                  backend: Optional[str] = None, out_dtype: Optional[torch.dtype] = None,
                  channels_last_out: bool = False, save_output: bool = False) -> torch.Tensor:
    """LayerNorm over dim 1 of a (batch, C, H, W) map with the backend switch of
    :func:`ss2d_scan`. ``out_dtype`` (default x's dtype), ``channels_last_out`` (store the
    output channels-last) and ``save_output`` (the backward works from the output, not the
    input: see :func:`layer_norm_2d_triton`) apply to the Triton path; the torch path follows
    ``F.layer_norm``.
    Inside ``torch.compile`` (unless ``$VMAMBA_COMPILED_NORM`` keeps the Triton kernels there)
    the torch path runs on every device (inductor fuses it), with ``out_dtype`` applied, as a
    torch autograd Function whose backward recomputes x-hat from the input
    (``layernorm_recompute.py``), or with ``save_output`` works from the output
    (``layernorm_from_output.py``)."""
    from .layernorm2d import layer_norm_2d_torch, layer_norm_2d_triton
    compiling = torch.compiler.is_compiling()
    if resolve_backend(backend, x) == 'triton' and (not compiling or _triton_norm_compiled(x)):
        return layer_norm_2d_triton(x, weight, bias, eps, out_dtype, channels_last_out,
                                    save_output)
    if compiling and save_output:
        # the compiled graph then keeps y (which the next linear layer holds too), not x
        from .layernorm_from_output import layer_norm_2d_from_output
        return layer_norm_2d_from_output(x, weight, bias, eps, out_dtype)
    if compiling:
        # under torch.compile every backend takes this path: inductor generates the norm and
        # fuses it with the residual adds and casts around it, where the Triton kernel would be
        # an opaque call (a launch and a dispatch per norm, no fusion); out_dtype is the cast
        # the Triton path would have written. The backward recomputes x-hat from the input it
        # keeps (inductor stored a saved x-hat transposed: layernorm_recompute.py)
        from .layernorm_recompute import layer_norm_2d_recompute
        return layer_norm_2d_recompute(x, weight, bias, eps, out_dtype)
    return layer_norm_2d_torch(x, weight, bias, eps)
