"""What keeping the LayerNorm's output instead of its input costs in gradient accuracy.

``layer_norm_2d(..., save_output=True)`` (the backbone's ``memory_efficient_norm``) recovers the
normalised input in the backward as (y - bias) / weight from the half-precision output y. y's
rounding, about 2^-11 |y| for fp16, is divided by the weight, so the recovered input, and the
gradients built on it, lose accuracy as |bias| / |weight| grows. For channels whose bias is
``ratio`` times their weight (random signs), this prints the largest error of the input and
weight gradients relative to the largest float64 gradient, for the norm that keeps its input and
for the one that keeps its output, median over ``--seeds`` draws.

    python tools/kernel_dev/norm_from_output_error.py [--ratios 0 1 20 100] [--dtype fp16]
        [--shape 2 64 16 16] [--seeds 3]

Runs on a CUDA GPU, else on the CPU through the Triton interpreter (small shapes: seconds).
"""
import argparse
import statistics

import torch

from _kernels import import_kernels  # noqa: E402

layer_norm_2d = import_kernels(interpret_without_cuda=True).layer_norm_2d

DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def gradient_errors(ratio, shape, dtype, seed, device):
    """{keeps: (dx error, dweight error)} for the norm keeping its input and its output, each
    relative to the largest float64 gradient."""
    gen = torch.Generator().manual_seed(seed)
    batch, channels, height, width = shape
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.3
    sign = torch.randint(0, 2, (2, channels), generator=gen) * 2 - 1
    weight = (torch.rand(channels, generator=gen, dtype=torch.float64) * 0.5 + 0.75) * sign[0]
    bias = ratio * weight.abs() * sign[1]
    dy = torch.randn(shape, generator=gen, dtype=torch.float64)

    def grads(precise, save_output=False):
        xx, ww, bb = (t.clone().to(device, None if precise else torch.float32).requires_grad_()
                      for t in (x, weight, bias))
        if precise:
            y = torch.nn.functional.layer_norm(xx.permute(0, 2, 3, 1), (channels, ), ww, bb,
                                               1e-5).permute(0, 3, 1, 2)
        else:
            y = layer_norm_2d(xx, ww, bb, backend='triton', out_dtype=dtype,
                              save_output=save_output)
        (y.to(torch.float64) * dy.to(device)).sum().backward()
        return xx.grad.double().cpu(), ww.grad.double().cpu()

    exact = grads(True)
    errors = {}
    for keeps, save_output in (('input', False), ('output', True)):
        approx = grads(False, save_output)
        errors[keeps] = tuple(((a - e).abs().max() / e.abs().max()).item()
                              for a, e in zip(approx, exact))
    return errors


def error_table(ratios, shape, dtype, seeds, device):
    """Rows (ratio, {keeps: (median dx error, median dweight error)})."""
    rows = []
    for ratio in ratios:
        draws = [gradient_errors(ratio, shape, dtype, seed, device) for seed in range(seeds)]
        rows.append((ratio, {keeps: tuple(statistics.median(d[keeps][i] for d in draws)
                                          for i in range(2)) for keeps in ('input', 'output')}))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--ratios', type=float, nargs='+', default=[0, 1, 20, 100],
                        help='|bias| / |weight| of every channel')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp16',
                        help='of the norm output (what the next linear layer keeps)')
    parser.add_argument('--shape', type=int, nargs=4, default=[2, 64, 16, 16],
                        metavar=('B', 'C', 'H', 'W'))
    parser.add_argument('--seeds', type=int, default=3)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f'--seeds must be at least 1, got {args.seeds}')
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    print(f'LayerNorm2d gradients from a {args.dtype} output, shape {tuple(args.shape)}, '
          f'{device}, median of {args.seeds}: largest error / largest float64 gradient')
    print('| abs(bias) / abs(weight) | dx, keeps input | dx, keeps output | dweight, keeps input '
          '| dweight, keeps output |')
    print('|---|---|---|---|---|')
    for ratio, errors in error_table(args.ratios, args.shape, DTYPES[args.dtype], args.seeds,
                                     device):
        (dx_in, dw_in), (dx_out, dw_out) = errors['input'], errors['output']
        print(f'| {ratio:g} | {dx_in:.1e} | {dx_out:.1e} | {dw_in:.1e} | {dw_out:.1e} |')


if __name__ == '__main__':
    main()
