"""VMamba's stem (conv 3x3 s2 -> LayerNorm2d -> GELU -> conv 3x3 s2 -> LayerNorm2d; the largest
maps of the network: 48 x 112 x 112 per image for VMamba-T) in NCHW, as the model ran it before
commit 16016b9, and channels-last, as it runs it since (image, weights and every map; the output
turned back to NCHW for stage 1, or kept), eager and under torch.compile, fp16 autocast
(``--amp none``: float32). Prints median ms of the forward and of forward + backward per variant
and each variant's largest difference from the NCHW eager one.

    python tools/kernel_dev/experiments/stem_layouts.py [--batch 128] [--dim 96]
    python tools/kernel_dev/experiments/stem_layouts.py --device cpu --batch 1 --amp none \
        --no-compile
"""
import argparse
import copy

import torch

from mmvmamba.models.embed import conv_stem
from mmvmamba.models.utils.compile import compile_model
from stem_conv import difference, layout_name, median_ms

CL = torch.channels_last


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--dim', type=int, default=96)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--reps', type=int, default=20)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--no-compile', action='store_true')
    parser.add_argument('--amp', default='fp16', choices=['fp16', 'none'],
                        help='none: float32 (as CPU inference runs)')
    args = parser.parse_args()
    dev = args.device
    torch.manual_seed(0)
    print(torch.cuda.get_device_name() if dev == 'cuda' else dev, torch.__version__)
    stem = conv_stem(3, args.dim).to(dev)
    stem_cl = copy.deepcopy(stem).to(memory_format=CL)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    x_cl = x.contiguous(memory_format=CL)
    out_side = args.size // 4
    grad = torch.randn(args.batch, args.dim, out_side, out_side, device=dev)

    variants = {
        'nchw': (stem, lambda m: m(x)),
        'channels_last, NCHW out': (stem_cl, lambda m: m(x_cl).contiguous()),
        'channels_last kept': (stem_cl, lambda m: m(x_cl)),
    }
    ref = None
    for compiled in ([False] if args.no_compile else [False, True]):
        for name, (module, call) in variants.items():
            run = compile_model(copy.deepcopy(module)) if compiled else module
            params = list(run.parameters())

            def forward():
                with torch.autocast(dev, torch.float16, enabled=args.amp == 'fp16'):
                    return call(run)

            def step():
                for p in params:
                    p.grad = None
                forward().float().backward(grad)

            step()
            out = forward().float()
            grads = [p.grad.float().clone() for p in params]
            if ref is None:
                ref = (out, grads)
            diff = difference(out, grads, ref)
            with torch.no_grad():
                fwd = median_ms(forward, args.reps, dev)
            both = median_ms(step, args.reps, dev)
            print(f'{"compiled" if compiled else "eager"} {name}: forward {fwd:.3f} ms, '
                  f'forward + backward {both:.3f} ms (output {layout_name(out)}; largest '
                  f'difference from NCHW eager {diff:.1e})')


if __name__ == '__main__':
    main()
