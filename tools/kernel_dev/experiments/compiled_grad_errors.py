"""Experiment: first-step gradients of a small VMamba backbone, eager and compiled
(``compile=dict()`` / ``dict(mode='reduce-overhead')``), in float32 and under fp16 autocast,
each against the eager float32 gradients (relative L2 error per parameter).

    python tools/kernel_dev/experiments/compiled_grad_errors.py [--device cuda] [--size 128]
        [--runs eager16 compile32 compile16 graphs32 graphs16] [--backend aot_eager]
        [--contiguous-convs] [--layout-optimization]

The loss reads the four stages' outputs through fixed random probes (a sum of squared normalised
outputs would be constant); under fp16 it is scaled by 1024 for the backward. Each compiled
model is called twice and the second call's gradients are kept (the first compiles; with CUDA
graphs the second records). ``--backend`` is torch.compile's (``aot_eager``: autograd's
traced graphs run by eager kernels, without inductor's code; not with CUDA graphs).
``--contiguous-convs``: every convolution's input made contiguous (NCHW) first, so that no
convolution (forward or backward) chooses its memory format from a channels-last input: to test
whether the compiled graph and cuDNN disagree about a convolution's output layout (they did
not: the errors stayed). ``--layout-optimization``: inductor's layout optimisation back on (the
backbone's compile turns it off, mmvmamba/models/utils/compile.py), to reproduce the wrong fp16
gradients it gave on the H200."""
import argparse

import torch
from mmvmamba.models import VMamba

RUNS = {'eager16': (None, True), 'compile32': ({}, False), 'compile16': ({}, True),
        'graphs32': (dict(mode='reduce-overhead'), False),
        'graphs16': (dict(mode='reduce-overhead'), True)}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--size', type=int, default=128)
    parser.add_argument('--dims', type=int, default=32)
    parser.add_argument('--runs', nargs='+', default=list(RUNS), choices=list(RUNS))
    parser.add_argument('--backend', default='inductor')
    parser.add_argument('--contiguous-convs', action='store_true')
    parser.add_argument('--layout-optimization', action='store_true',
                        help="inductor's layout optimisation on (VMamba's compile turns it off)")
    args = parser.parse_args()
    if args.backend != 'inductor' and any(r.startswith('graphs') for r in args.runs):
        parser.error(f'--backend {args.backend}: CUDA graphs (the graphs* runs) need inductor')
    if args.contiguous_convs:
        conv_forward = torch.nn.Conv2d.forward
        torch.nn.Conv2d.forward = lambda self, x: conv_forward(self, x.contiguous())
    torch.manual_seed(0)

    def build(compile_cfg=False):
        return VMamba(dict(dims=args.dims, depths=(1, 1, 2, 1)), out_indices=(0, 1, 2, 3),
                      drop_path_rate=0.0, compile=compile_cfg).to(args.device)

    base = build()
    x = torch.randn(2, 3, args.size, args.size, device=args.device)
    probes = [torch.randn(o.shape, device=args.device) for o in base(x)]

    def grads(model, amp):
        scale = 1024. if amp else 1.
        model.zero_grad(set_to_none=True)
        with torch.autocast(args.device, dtype=torch.float16, enabled=amp):
            loss = sum((o.float() * p).mean() for o, p in zip(model(x), probes))
        (loss * scale).backward()
        return {n: p.grad.float() / scale for n, p in model.named_parameters()}

    reference = grads(base, False)
    errors = {}
    for name in args.runs:
        compile_cfg, amp = RUNS[name]
        model = base
        if compile_cfg is not None:
            if args.backend != 'inductor':
                compile_cfg = dict(compile_cfg, backend=args.backend)
            elif args.layout_optimization:
                compile_cfg = dict(compile_cfg, options=dict(layout_optimization=True))
            model = build(compile_cfg)
            model.load_state_dict(base.state_dict())
            grads(model, amp)
        got = grads(model, amp)
        errors[name] = {k: ((got[k] - r).norm() / r.norm().clamp_min(1e-12)).item()
                        for k, r in reference.items()}
    print('| parameter | ' + ' | '.join(errors) + ' |')
    print('|---' * (len(errors) + 1) + '|')
    for k in reference:
        print(f'| {k} | ' + ' | '.join(f'{errors[n][k]:.2e}' for n in errors) + ' |')
    print('| median | ' + ' | '.join(
        f'{torch.tensor(list(e.values())).median().item():.2e}' for e in errors.values()) + ' |')


if __name__ == '__main__':
    main()
