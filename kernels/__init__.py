"""vmamba_kernels: VMamba's selective scan (SS2D core) in Triton, with its torch paths.

Installed as ``vmamba_kernels`` (from the ``kernels/`` folder of mmvmamba); it imports nothing
from OpenMMLab. Public entry points (routing in ``dispatch.py``):

* :func:`ss2d_scan` - the fused SS2D core (cross-scan + dt projection + S6 + cross-merge) with a
  backend switch: Triton on CUDA tensors, torch elsewhere.
* :func:`layer_norm_2d` - LayerNorm over the channels of a (batch, C, H, W) map, the same
  switch (Triton kernel on CUDA, ``F.layer_norm`` elsewhere).
* :func:`ss2d_scan_grid` - the torch inference and export path, solved along the map's rows
  and columns; :func:`ss2d_scan_chunked` - the differentiable torch path.
* :func:`selective_scan_torch`, :func:`cross_scan`, :func:`cross_merge` - the torch reference
  pieces (mamba-ssm semantics).

Modules: ``ss2d_n1.py`` (Triton, d_state 1, chunked), ``ss2d_n1_map.py`` (Triton, d_state 1,
whole small maps per program; opt-in), ``ss2d_n1_cl.py`` (Triton, d_state 1, channels-last
maps; by default small maps without gradients, :func:`channels_last_scan` says where),
``ss2d_triton.py`` (Triton, any d_state), ``triton_math.py`` (device functions both use),
``layernorm2d.py``, ``compile_ops.py`` (every launch a ``torch.library`` custom op under
``torch.compile``), ``ss2d_grid.py`` and ``reference.py`` (torch), ``checks.py`` (input
validation).
"""
from .checks import check_tensor
from .dispatch import (BACKEND_ENV, BACKENDS, layer_norm_2d, resolve_backend, ss2d_scan,
                       ss2d_scan_torch, ss2d_scan_triton, ss2d_scan_unfused_triton)
from .reference import (cross_merge, cross_scan, scan_orders, selective_scan_torch,
                        ss2d_scan_chunked, to_scan_order)
from .ss2d_grid import scan_lines, ss2d_scan_grid
from .ss2d_n1_cl import channels_last_scan

__all__ = [
    'ss2d_scan', 'ss2d_scan_torch', 'ss2d_scan_triton', 'ss2d_scan_unfused_triton',
    'ss2d_scan_grid', 'ss2d_scan_chunked', 'scan_lines', 'selective_scan_torch', 'cross_scan',
    'cross_merge', 'scan_orders', 'to_scan_order', 'resolve_backend', 'BACKENDS', 'BACKEND_ENV',
    'layer_norm_2d', 'check_tensor', 'channels_last_scan'
]
