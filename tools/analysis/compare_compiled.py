"""Check that ``torch.compile`` leaves a config's classifier numerically unchanged: the same
weights and input through the eager model and the compiled one, forward and backward, then the
largest difference of the outputs and of every parameter gradient, relative to the largest
magnitude of the eager value, in eval mode so that stochastic depth draws nothing (scan kernels
included: dynamo traces through their autograd
Functions and Triton launches).

    python tools/analysis/compare_compiled.py CONFIG [--batch 8] [--shape 224 224]
        [--device cuda] [--amp none bf16] [--mode default] [--tol 1e-3]

Exit status 1 when a difference exceeds ``--tol`` (scaled by 10 under autocast, whose half
precision rounding the compiled graph may place differently).
"""
import argparse
import copy
import sys

import _common
import torch
from mmvmamba.analysis import AMP_DTYPES


def relative_difference(ref, other):
    return ((ref.double() - other.double()).abs().max() /
            ref.double().abs().max().clamp_min(1e-12)).item()


def run(model, x, amp, params_of=None):
    """Output and parameter gradients of ``model`` (parameters named as in ``params_of``, the
    module a compiled model wraps)."""
    params_of = params_of or model
    params_of.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        out = model(x)
    out.float().square().mean().backward()
    grads = {name: p.grad.detach().clone() for name, p in params_of.named_parameters()
             if p.grad is not None}
    return out.detach().float(), grads


def compare(model, x, amp, mode):
    """Largest relative differences (output, gradient, name of that gradient) between ``model``
    and ``torch.compile(copy of model, mode=mode)``, and for scale the difference between the
    eager model under ``amp`` and in float32 at that same gradient (autocast's own rounding)."""
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, mode=mode)
    out_ref, grads_ref = run(model, x, amp)
    run(compiled, x, amp, twin)  # a first call compiles (and, with CUDA graphs, records)
    out, grads = run(compiled, x, amp, twin)
    if grads.keys() != grads_ref.keys():
        raise RuntimeError('the compiled model has no gradient for '
                           f'{sorted(grads_ref.keys() - grads.keys())} and one for '
                           f'{sorted(grads.keys() - grads_ref.keys())} the eager model lacks')
    worst = max((relative_difference(grads_ref[k], grads[k]), k) for k in grads_ref)
    spread = 0.0
    if amp is not None:
        _, grads_fp32 = run(model, x, None)
        spread = relative_difference(grads_fp32[worst[1]], grads_ref[worst[1]])
    return relative_difference(out_ref, out), worst[0], worst[1], spread


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_model_input_args(parser, batch=8)
    parser.add_argument('--mode', default='default',
                        choices=['default', 'reduce-overhead', 'max-autotune-no-cudagraphs'])
    parser.add_argument('--tol', type=float, default=1e-3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = _common.build_plain_classifier(_common.load_config(args.config)).to(args.device)
    model.eval()  # no stochastic depth: both models must compute the same function
    x = torch.randn(args.batch, 3, *args.shape, device=args.device)
    rows, ok = [], True
    for amp in args.amp:
        dtype = AMP_DTYPES[amp]
        torch._dynamo.reset()
        out_diff, grad_diff, grad_name, spread = compare(model, x, dtype, args.mode)
        tol = args.tol * (1 if dtype is None else 10)
        passed = out_diff <= tol and grad_diff <= tol
        ok &= passed
        rows.append((amp, out_diff, grad_diff, grad_name, passed))
        print(f'{args.config} [{args.mode}, autocast {amp}]: output {out_diff:.2e}, worst gradient '
              f'{grad_diff:.2e} ({grad_name}; eager autocast vs float32 there: {spread:.2e}), '
              f'tolerance {tol:.0e}: '
              f'{"ok" if passed else "EXCEEDED"}', flush=True)
    return rows, ok


if __name__ == '__main__':
    sys.exit(0 if main()[1] else 1)
