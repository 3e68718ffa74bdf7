"""The stem's two convolutions (VMamba-T: 3 -> 48 at 224 -> 112, 48 -> 96 at 112 -> 56), forward
+ backward under fp16 autocast, in the layouts cuDNN could be handed: NCHW tensors (as the model
passed them before commit 16016b9), channels-last ones (converted on the way in and back out, or
kept), the image padded to 4 or 8 channels, and the first convolution as unfold + GEMM. Prints
median ms per variant; checks each variant's output and gradients against the NCHW one.

    python tools/kernel_dev/experiments/stem_conv.py [--batch 128] [--dim 96]
"""
import argparse
import time

import torch
import torch.nn.functional as F

CL = torch.channels_last


def conv1_variants(x, w, b):
    """Forward functions of the first convolution; each returns an NCHW-shaped output (in the
    layout named) from the image ``x`` (NCHW)."""
    def nchw():
        return F.conv2d(x, w, b, 2, 1)

    def cl_back():
        return F.conv2d(x.contiguous(memory_format=CL), w.contiguous(memory_format=CL), b, 2,
                        1).contiguous()

    def cl_keep():
        return F.conv2d(x.contiguous(memory_format=CL), w.contiguous(memory_format=CL), b, 2, 1)

    def padded(channels, layout):
        def run():
            xp = F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))
            wp = F.pad(w, (0, 0, 0, 0, 0, channels - w.shape[1]))
            if layout == 'cl':
                xp, wp = xp.contiguous(memory_format=CL), wp.contiguous(memory_format=CL)
            return F.conv2d(xp, wp, b, 2, 1).contiguous()
        return run

    def unfold_gemm():
        n, _, h, wd = x.shape
        cols = F.unfold(x, 3, padding=1, stride=2)  # (N, 27, L)
        y = torch.matmul(w.reshape(w.shape[0], -1), cols) + b[:, None]
        return y.view(n, w.shape[0], (h + 1) // 2, (wd + 1) // 2)

    return dict(nchw=nchw, cl_back=cl_back, cl_keep=cl_keep, pad4=padded(4, 'nchw'),
                pad8_cl=padded(8, 'cl'), unfold_gemm=unfold_gemm)


def conv2_variants(x, w, b):
    def nchw():
        return F.conv2d(x, w, b, 2, 1)

    def cl_back():
        return F.conv2d(x.contiguous(memory_format=CL), w.contiguous(memory_format=CL), b, 2,
                        1).contiguous()

    xc = x.detach().contiguous(memory_format=CL).requires_grad_(True)

    def cl_in_cl_out():  # the input already channels-last (as a channels-last norm would give)
        return F.conv2d(xc, w.contiguous(memory_format=CL), b, 2, 1)

    return dict(nchw=nchw, cl_back=cl_back, cl_in_cl_out=cl_in_cl_out)


def median_ms(fn, reps, device):
    """Median wall-clock ms of ``fn()`` over ``reps`` runs after three warm-up runs (each run
    synchronised on CUDA). Also used by ``stem_layouts.py``."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if device == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[reps // 2]


def difference(out, grads, ref):
    """Largest difference of ``out`` (absolute) and of ``grads`` (relative to each reference
    gradient's largest entry) from ``ref`` = (output, gradients), all float32. Also used by
    ``stem_layouts.py``."""
    return max([(out - ref[0]).abs().max().item()] +
               [(g - r).abs().max().item() / max(r.abs().max().item(), 1e-6)
                for g, r in zip(grads, ref[1])])


def layout_name(t):
    return 'NCHW' if t.is_contiguous() else 'channels-last'


def run(name, variants, params, grad, reps):
    ref = None
    for key, fn in variants.items():
        for p in params:
            p.grad = None
        with torch.autocast(grad.device.type, torch.float16):
            out = fn()
            out.backward(grad)
            grads = [p.grad.float().clone() for p in params]
            ms = median_ms(lambda: fn().backward(grad), reps, grad.device.type)
        if ref is None:
            ref = (out.float(), grads)
        err = difference(out.float(), grads, ref)
        print(f'{name} {key}: {ms:.3f} ms forward + backward (max difference from nchw '
              f'{err:.1e}, output {layout_name(out)})')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--dim', type=int, default=96)
    parser.add_argument('--reps', type=int, default=20)
    parser.add_argument('--device', default='cuda')
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = args.device
    print(torch.cuda.get_device_name() if dev == 'cuda' else dev, torch.__version__,
          'cudnn', torch.backends.cudnn.version())
    half = args.dim // 2
    x = torch.randn(args.batch, 3, 224, 224, device=dev)
    w1 = (torch.randn(half, 3, 3, 3, device=dev) * 0.2).requires_grad_(True)
    b1 = torch.zeros(half, device=dev, requires_grad=True)
    g1 = torch.randn(args.batch, half, 112, 112, device=dev, dtype=torch.float16)
    run('conv1 3->%d' % half, conv1_variants(x, w1, b1), [w1, b1], g1, args.reps)
    x2 = torch.randn(args.batch, half, 112, 112, device=dev, dtype=torch.float16,
                     requires_grad=True)
    w2 = (torch.randn(args.dim, half, 3, 3, device=dev) * 0.05).requires_grad_(True)
    b2 = torch.zeros(args.dim, device=dev, requires_grad=True)
    g2 = torch.randn(args.batch, args.dim, 56, 56, device=dev, dtype=torch.float16)
    run('conv2 %d->%d' % (half, args.dim), conv2_variants(x2, w2, b2), [w2, b2], g2, args.reps)


if __name__ == '__main__':
    main()
