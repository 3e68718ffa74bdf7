"""SS2D core for CPU inference as compiled C (``cpu/ss2d_scan.c``): one pass over the map per
direction, channels vectorised, the work split over torch's CPU threads.

The C file needs no Python or torch headers: it is compiled with the system's C compiler
(``$CC``, else ``cc``) in well under a second the first time it is needed, cached under
``$VMAMBA_CPU_KERNEL_CACHE`` (default ``~/.cache/mmvmamba/cpu_kernels``, one build per source,
compiler and CPU), and called through ctypes, which releases the GIL, so several threads run it
at once. Where it cannot be built (no compiler, a read-only cache) or ``VMAMBA_CPU_KERNEL=0``, the
torch path (``ss2d_grid.py``) runs instead, and the reason is given once as a warning.
"""
import ctypes
import functools
import hashlib
import os
import os.path as osp
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import torch

from .checks import env_choice
from .compile_ops import opaque_under_compile

__all__ = ['cpu_kernel_available', 'ss2d_scan_cpu', 'ss2d_scan_cpu_compiled', 'MAX_STATE',
           'CPU_KERNEL_ENV']

SOURCE = osp.join(osp.dirname(osp.abspath(__file__)), 'cpu', 'ss2d_scan.c')
CPU_KERNEL_ENV = 'VMAMBA_CPU_KERNEL'
CACHE_ENV = 'VMAMBA_CPU_KERNEL_CACHE'
FLAGS = ['-O3', '-march=native', '-ffast-math', '-fopenmp-simd', '-fPIC', '-shared']
MAX_STATE = 16  # the kernel's per-channel state buffer
MAX_BLOCK = 64  # channels per task at most (the kernel's MAX_BLOCK)


def _cpu_signature():
    """What the compiled code depends on besides its source: the machine's instruction set."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith(('flags', 'Features'))), '')
    except OSError:  # no /proc/cpuinfo (not Linux): the processor's name must do
        flags = platform.processor()
    return platform.machine() + flags


def _build(compiler):
    with open(SOURCE, 'rb') as f:
        source = f.read()
    version = subprocess.run([compiler, '--version'], capture_output=True, text=True,
                             check=True).stdout
    key = hashlib.sha256(source + version.encode() + _cpu_signature().encode() +
                         ' '.join(FLAGS).encode()).hexdigest()[:16]
    cache = os.environ.get(CACHE_ENV) or osp.join(osp.expanduser('~'), '.cache', 'mmvmamba',
                                                  'cpu_kernels')
    target = osp.join(cache, f'ss2d_scan-{key}.so')
    if not osp.isfile(target):
        os.makedirs(cache, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:  # built aside, then moved: atomic
            built = osp.join(tmp, 'ss2d_scan.so')
            proc = subprocess.run([compiler, *FLAGS, SOURCE, '-o', built, '-lm'],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f'{compiler} failed: {proc.stderr.strip()[-500:]}')
            os.replace(built, target)
    return target


@functools.lru_cache(maxsize=None)
def _library():
    """The loaded kernel, or None (with one warning saying why) where it cannot be had."""
    if env_choice(CPU_KERNEL_ENV, {'0': 'off', '1': 'on where it can be built'}, '1') == '0':
        return None
    compiler = os.environ.get('CC') or shutil.which('cc') or shutil.which('gcc')
    try:
        if compiler is None:
            raise RuntimeError('no C compiler found (set CC, or install gcc)')
        lib = ctypes.CDLL(_build(compiler))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        warnings.warn(f'vmamba_kernels: the compiled CPU scan is unavailable ({e}); using the '
                      f'slower torch path. Set {CPU_KERNEL_ENV}=0 to choose it silently.')
        return None
    f = lib.ss2d_scan_f32
    f.restype = None
    f.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_long] * 8
    return f


def cpu_kernel_available() -> bool:
    """Whether :func:`ss2d_scan_cpu` can run here (builds the kernel on first call)."""
    return _library() is not None


@functools.lru_cache(maxsize=None)
def _pool(workers, pid):
    """One pool per process (``pid``): a forked child inherits the parent's pool object but not
    its threads, and would wait on them forever."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix='vmamba-cpu-scan')


def _pointer(t: Optional[torch.Tensor]):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def ss2d_scan_cpu(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                  dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                  D: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The fused SS2D core (contract of :func:`vmamba_kernels.ss2d_scan`, inputs already checked)
    in float32 on CPU tensors, without autograd. ``x`` in any layout: a channels-last map is read
    as it is (the kernel walks channels-last rows), another is copied once.

    Returns:
        Tensor: (batch, C, H, W) float32, stored channels-last.
    """
    f = _library()
    if f is None:
        raise RuntimeError('the compiled CPU scan is unavailable: see the earlier warning')
    batch, channels, height, width = x.shape
    d_state = A.shape[1]
    if d_state > MAX_STATE:
        raise ValueError(f'the compiled CPU scan takes d_state <= {MAX_STATE}, got {d_state}')
    f32 = torch.float32
    u = x.to(f32).permute(0, 2, 3, 1).contiguous()  # (b, H, W, C): channels-last rows
    # delta's pre-activation, (b, 4, L, C): one batched GEMM writes it channels-last
    pre = torch.matmul(dt_low.to(f32).transpose(-1, -2),
                       dt_weight.to(f32).transpose(-1, -2).unsqueeze(0))
    bias, a = dt_bias.to(f32).contiguous(), A.to(f32).contiguous()
    b_in, c_in = Bs.to(f32).contiguous(), Cs.to(f32).contiguous()
    skip = D.to(f32).contiguous() if D is not None else None
    y = torch.empty(batch, height, width, channels, dtype=f32)  # the first direction writes it
    threads = torch.get_num_threads()
    # blocks of 64 channels, or smaller ones (multiples of 16) when there would be fewer tasks
    # than four per thread
    block = MAX_BLOCK
    while block > 16 and batch * -(-channels // block) < 4 * threads:
        block //= 2
    tasks = batch * -(-channels // block)
    workers = max(1, min(threads, tasks))
    args = [_pointer(t) for t in (u, pre, bias, a, b_in, c_in, skip, y)]
    sizes = (batch, channels, height, width, d_state, block)
    if workers == 1:
        f(*args, *sizes, 0, tasks)
    else:
        step = -(-tasks // workers)
        pool = _pool(workers, os.getpid())
        jobs = [pool.submit(f, *args, *sizes, i, min(i + step, tasks))
                for i in range(0, tasks, step)]
        for job in jobs:
            job.result()
    return y.permute(0, 3, 1, 2)


def _compiled_output(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D):
    """An empty output of :func:`ss2d_scan_cpu` (float32, stored channels-last), for tracing."""
    batch, channels, height, width = x.shape
    return x.new_empty((batch, height, width, channels), dtype=torch.float32).permute(0, 3, 1, 2)


@opaque_under_compile('ss2d_scan_cpu', _compiled_output)
def ss2d_scan_cpu_compiled(x: torch.Tensor, dt_low: torch.Tensor, dt_weight: torch.Tensor,
                           dt_bias: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor,
                           Cs: torch.Tensor, D: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`ss2d_scan_cpu` as one opaque operator of a ``torch.compile`` graph (positional
    arguments, D may be None): compiled CPU inference calls the C scan instead of tracing the
    torch scan's step loop into the graph."""
    return ss2d_scan_cpu(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D)
