"""A LayerNorm2d feeding a linear layer, inside ``torch.compile``, three ways, timed forward +
backward at a stage's shape: which norm the compiled VMamba step should run.

    inductor     - ``layer_norm_2d`` as the model runs it under compile (F.layer_norm, fused by
                   inductor with the casts and permutes around it)
    from-output  - the same with ``save_output=True`` (the torch Function whose backward works
                   from the output, ``kernels/layernorm_from_output.py``)
    triton       - the Triton kernels as opaque operators (``layer_norm_2d_triton``, as eager)

for the two inputs a VSS block's norms get: the residual stream (float32, channels-last, as the
linear layers leave it) and the SS2D output (float32, channel-first, as the scan writes it).
Each step: y = norm(x) in the autocast dtype, channels-last; out = y @ W (W: C x C); loss =
out.float().square().mean(-1).sum() (a mean over every element would underflow the fp16
gradients); backward to x, the norm's parameters and W. Also checks every variant's gradients
against the float64 formula.

    python tools/kernel_dev/benchmark_norm_compiled.py [--batch 128] [--size 56] [--channels 96]
        [--dtype fp16] [--backend inductor]

On the CPU (no GPU) it runs through the Triton interpreter and, with ``--backend aot_eager``,
checks the variants without timing anything meaningful.
"""
import argparse
import statistics
import time

import torch

from _kernels import import_kernels  # noqa: E402

vk = import_kernels(interpret_without_cuda=True)
from vmamba_kernels.layernorm2d import layer_norm_2d_triton  # noqa: E402

DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}
VARIANTS = ('inductor', 'from-output', 'triton')
INPUTS = {'residual stream (channels-last)': torch.channels_last,
          'scan output (channel-first)': torch.contiguous_format}


def norm_then_linear(variant, dtype):
    """The compiled-step body for one variant: (x, weight, bias, proj) -> loss."""
    def step(x, weight, bias, proj):
        if variant == 'triton':
            y = layer_norm_2d_triton(x, weight, bias, 1e-5, dtype, True)
        else:
            y = vk.layer_norm_2d(x, weight, bias, 1e-5, backend='triton', out_dtype=dtype,
                                 channels_last_out=True, save_output=variant == 'from-output')
        out = torch.nn.functional.linear(y.permute(0, 2, 3, 1), proj)
        return out.float().square().mean(-1).sum()
    return step


def in_float64(x, weight, bias, proj):
    y = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1], ), weight, bias, 1e-5)
    return torch.nn.functional.linear(y, proj).square().mean(-1).sum()


def leaves(batch, size, channels, layout, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(batch, channels, size, size, generator=g) * 2 + 0.5)
    weight = torch.rand(channels, generator=g) + 0.5
    bias = torch.randn(channels, generator=g) * 0.1
    proj = torch.randn(channels, channels, generator=g) * channels**-0.5
    x = x.to(device).contiguous(memory_format=layout)
    return [t.to(device).requires_grad_(True) for t in (x, weight, bias)] + [proj.to(device)]


def run(variant, layout, args, device):
    """(median ms per forward + backward or None on the CPU, largest gradient error relative to
    the largest float64 gradient)."""
    dtype = DTYPES[args.dtype]
    torch._dynamo.reset()
    fn = torch.compile(norm_then_linear(variant, dtype), backend=args.backend, fullgraph=True)
    x, weight, bias, proj = leaves(args.batch, args.size, args.channels, layout, device)
    proj = proj.to(dtype).requires_grad_(True)
    inputs = (x, weight, bias, proj)
    exact = torch.autograd.grad(in_float64(*(t.double() for t in inputs)), inputs)
    grads = torch.autograd.grad(fn(*inputs), inputs)
    error = max(((g.double() - e).abs().max() / e.abs().max()).item()
                for g, e in zip(grads, exact))
    if device == 'cpu':
        return None, error
    times = []
    for i in range(args.warmup + args.repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch.autograd.grad(fn(*inputs), inputs)
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), error


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--size', type=int, default=56, help='H = W (VMamba-T stage 1: 56)')
    parser.add_argument('--channels', type=int, default=96)
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp16')
    parser.add_argument('--backend', default='inductor', help='torch.compile backend')
    parser.add_argument('--variants', nargs='+', choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=20)
    args = parser.parse_args(argv)
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    print(f'LayerNorm2d -> linear, compiled ({args.backend}), forward + backward, batch '
          f'{args.batch}, {args.channels} x {args.size} x {args.size}, {args.dtype}, {device}'
          + (f' ({torch.cuda.get_device_name()})' if device == 'cuda' else ''))
    print('| input | norm | ms (median) | gradient error vs float64 |')
    print('|---|---|---|---|')
    rows = []
    for name, layout in INPUTS.items():
        for variant in args.variants:
            ms, error = run(variant, layout, args, device)
            rows.append((name, variant, ms, error))
            shown = '-' if ms is None else f'{ms:.3f}'
            print(f'| {name} | {variant} | {shown} | {error:.1e} |', flush=True)
    return rows


if __name__ == '__main__':
    main()
