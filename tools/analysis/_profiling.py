"""Helpers shared by the profiling tools: device time of a torch.profiler run, by kernel and by
family of kernels (the SS2D scan, matrix products, normalisation, ...); host time of a cProfile
run, by package and by function."""
import re

import torch

FAMILIES = (
    ('ss2d scan (triton)', r'_ss2d_'),
    ('layernorm2d (triton)', r'_ln2d_'),
    ('inductor fusions', r'^triton_'),
    ('matmul / 1x1 conv (gemm)', r'gemm|sm90|cutlass|cublas|xmma|matmul'),
    ('depthwise / other conv', r'conv|depthwise|implicit'),
    ('layernorm / reductions', r'norm|reduce|welford'),
    ('copies / transposes', r'copy|transpose|cat|stack|permute'),
    ('elementwise', r'elementwise|vectorized|unrolled|silu|gelu|add|mul'),
)


def family(name):
    lower = name.lower()
    for label, pattern in FAMILIES:
        if re.search(pattern, lower):
            return label
    return 'other'


def device_us(event, own=False):
    """An event's device time (``own``: of the kernels it launched itself), in microseconds:
    ``device_time_total`` in current torch, ``cuda_time_total`` in older releases."""
    prefix = 'self_' if own else ''
    value = getattr(event, prefix + 'device_time_total', None)
    return value if value is not None else getattr(event, prefix + 'cuda_time_total')


def kernel_totals(prof):
    """{kernel name: (device microseconds, launches)} over a profile, operators left out (their
    device time is that of their kernels)."""
    totals = {}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CPU:
            continue
        us = device_us(event)
        if us > 0:
            old_us, old_count = totals.get(event.key, (0.0, 0))
            totals[event.key] = (old_us + us, old_count + event.count)
    return totals


def step_device_us(totals, steps):
    """Device time per step, in microseconds: the sum of ``kernel_totals``' kernel times."""
    return sum(us for us, _ in totals.values()) / steps


def print_kernel_tables(totals, steps, top):
    """Families, then the ``top`` kernels, by device time per step and share of the step's."""
    step_us = step_device_us(totals, steps)
    by_family = {}
    for name, (us, _) in totals.items():
        by_family[family(name)] = by_family.get(family(name), 0.0) + us
    print('| family | ms / step | share |\n|---|---|---|')
    for label, us in sorted(by_family.items(), key=lambda kv: -kv[1]):
        print(f'| {label} | {us / steps / 1e3:.2f} | {100 * us / steps / step_us:.1f}% |')
    print(f'\n| kernel (top {top}) | ms / step | share | launches / step | us / launch |'
          f'\n|---|---|---|---|---|')
    for name, (us, count) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]:
        short = name if len(name) < 90 else name[:87] + '...'
        print(f'| {short} | {us / steps / 1e3:.2f} | {100 * us / steps / step_us:.1f}% | '
              f'{count / steps:g} | {us / max(count, 1):.1f} |')


# Where a Python function's own host time is counted: the first pattern its file matches.
HOST_PACKAGES = (
    ('mmvmamba (model)', r'[/\\]mmvmamba[/\\]'),
    ('vmamba_kernels (launchers)', r'[/\\](kernels|vmamba_kernels)[/\\]'),
    ('triton (JIT launch)', r'[/\\]triton[/\\]'),
    ('torch (Python)', r'[/\\]torch[/\\]'),
    ('mmdet / mmseg / mmpretrain', r'[/\\](mmdet|mmseg|mmpretrain)[/\\]'),
    ('mmengine / mmcv', r'[/\\](mmengine|mmcv)[/\\]'),
)


def host_package(filename):
    """The group a profiled function's own time goes to: a package by its file, or
    'C functions (torch ops, ...)' for built-ins (file ``~``: torch's operators, launches, ...)."""
    if filename == '~' or filename.startswith('<built-in'):
        return 'C functions (torch ops, launches, ...)'
    for label, pattern in HOST_PACKAGES:
        if re.search(pattern, filename):
            return label
    return 'other Python'


def host_profile(step, steps):
    """cProfile of ``steps`` calls of ``step``: a ``pstats.Stats``. On a GPU this is the host's
    side of the step (Python and the calls that launch kernels; the host waits on the device
    only where something synchronises)."""
    import cProfile
    import pstats
    profiler = cProfile.Profile()
    # the autograd engine runs a CUDA backward on a thread of its own, which cProfile does not
    # follow: keep it on this one, so the backward's Python (custom Functions' launches) counts
    with torch.autograd.set_multithreading_enabled(False):
        profiler.enable()
        for _ in range(steps):
            step()
        profiler.disable()
    return pstats.Stats(profiler)


def host_rows(stats):
    """[(package, 'file:line(function)', calls, own s, cumulative s)] of a ``pstats.Stats``."""
    rows = []
    for (filename, line, function), (_, calls, own, cumulative, _) in stats.stats.items():
        short = f'{function}' if filename == '~' else (
            f"{'/'.join(filename.replace(chr(92), '/').split('/')[-2:])}:{line}({function})")
        rows.append((host_package(filename), short, calls, own, cumulative))
    return rows


def print_host_tables(stats, steps, top):
    """Own host time per step by package, then the ``top`` functions by own time."""
    rows = host_rows(stats)
    total = sum(r[3] for r in rows)
    by_package = {}
    for package, _, _, own, _ in rows:
        by_package[package] = by_package.get(package, 0.0) + own
    print(f'host time under cProfile: {total / steps * 1e3:.1f} ms per step (the profiler '
          f'slows Python; compare shares)')
    print('| package (own time) | ms / step | share |\n|---|---|---|')
    for package, own in sorted(by_package.items(), key=lambda kv: -kv[1]):
        print(f'| {package} | {own / steps * 1e3:.2f} | {100 * own / total:.1f}% |')
    print(f'\n| function (top {top} by own time) | calls / step | own ms / step | '
          f'cumulative ms / step |\n|---|---|---|---|')
    for package, name, calls, own, cumulative in sorted(rows, key=lambda r: -r[3])[:top]:
        name = name if len(name) < 90 else name[:87] + '...'
        print(f'| {name} | {calls / steps:.0f} | {own / steps * 1e3:.2f} | '
              f'{cumulative / steps * 1e3:.2f} |')
