"""CPU: the torch path's chunked selective scan vs a per-time-step Python loop (same recurrence,
float32), at VMamba-T stage 1 (L = 56 * 56, 4 x 96 sequences, N = 1) and v0-T stage 1
(4 x 192 sequences, N = 16), batch 1, forward and forward+backward.

    python tools/kernel_dev/benchmark_scan_cpu.py [--repeats 3]
"""
import argparse
import statistics
import time

import torch

from vmamba_kernels import selective_scan_torch


def loop_scan(u, delta, A, B, C, D):
    """Reference recurrence, one Python iteration per time step."""
    batch, channels, length = u.shape
    per_group = channels // B.shape[1]
    Bx, Cx = B.repeat_interleave(per_group, 1), C.repeat_interleave(per_group, 1)
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((h * Cx[..., t]).sum(-1))
    return torch.stack(ys, -1) + D[:, None] * u


def timed(fn, backward, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if backward:
            out.sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads')
    print('| case | pass | per-step loop s | chunked s | speed-up |\n|---|---|---|---|---|')
    for name, channels, d_state in (('T stage 1', 4 * 96, 1), ('v0-T stage 1', 4 * 192, 16)):
        g = torch.Generator().manual_seed(0)
        length = 56 * 56
        u = torch.randn(1, channels, length, generator=g)
        delta = torch.rand(1, channels, length, generator=g) * 0.1
        A = -torch.rand(channels, d_state, generator=g)
        B = torch.randn(1, 4, d_state, length, generator=g)
        C = torch.randn(1, 4, d_state, length, generator=g)
        D = torch.ones(channels)
        for backward in (False, True):
            leaves = [t.clone().requires_grad_(backward) for t in (u, delta, A, B, C, D)]
            with torch.set_grad_enabled(backward):
                slow = timed(lambda: loop_scan(*leaves), backward, args.repeats)
                fast = timed(lambda: selective_scan_torch(*leaves), backward, args.repeats)
            label = 'fwd+bwd' if backward else 'fwd'
            print(f'| {name} | {label} | {slow:.3f} | {fast:.3f} | {slow / fast:.1f}x |',
                  flush=True)


if __name__ == '__main__':
    main()
