"""Helpers shared by the profiling tools: device time of a torch.profiler run, by kernel and by
family of kernels (the SS2D scan, matrix products, normalisation, ...)."""
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
    print(f'\n| kernel (top {top}) | ms / step | share |\n|---|---|---|')
    for name, (us, _) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]:
        short = name if len(name) < 90 else name[:87] + '...'
        print(f'| {short} | {us / steps / 1e3:.2f} | {100 * us / steps / step_us:.1f}% |')
