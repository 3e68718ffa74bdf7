"""Check that ``torch.compile`` leaves a config's classifier numerically unchanged: the same
weights and input through the eager model and the compiled one, forward and backward, then the
largest difference of the outputs and of every parameter gradient, relative to the largest
magnitude of the eager value, in eval mode so that stochastic depth draws nothing (the scan
kernels and LayerNorms are custom ops that the compiled graph calls as they are).

    python tools/analysis/compare_compiled.py CONFIG [--batch 8] [--shape 224 224]
        [--device cuda] [--amp none bf16] [--mode default] [--tol 1e-3] [--loss-scale auto]

What a difference is measured against: the eager model's own spread between two precisions it
legitimately runs in, per tensor: under autocast, autocast vs float32; in float32, the default
(cuDNN convolutions in TF32) vs TF32 switched off. A tensor passes when the compiled value is
within ``--tol`` or twice that spread of the more precise eager run: a compiled graph may round
differently, but must not be further from the precise result than twice what the eager model's
own precision costs. (Its distance to the eager run at the same precision is printed too: under
fp16 autocast the small per-channel gradients, dt_projs_bias or A_logs, sums over every
position, were measured 2-3x the spread away from it, old and new kernels alike, because the
two runs round in different places.) Exit status 1 when one does not pass.

Under fp16 autocast the loss is multiplied by 2**16 before the backward and the gradients divided
by it after (``--loss-scale auto``), as fp16 training does (``torch.amp.GradScaler``'s initial
scale, which mmengine's ``AmpOptimWrapper`` uses): unscaled, the small gradients of a model at
initialisation fall into fp16's subnormal range, where eager and compiled graphs lose different
bits. bf16 and float32 runs are not scaled (``--loss-scale 1`` turns scaling off, a number sets
it).
"""
import argparse
import contextlib
import copy
import sys

import _common
import torch
from mmvmamba.analysis import AMP_DTYPES
from mmvmamba.models.utils import compile_model


def relative_difference(ref, other):
    return ((ref.double() - other.double()).abs().max() /
            ref.double().abs().max().clamp_min(1e-12)).item()


def run(model, x, amp, params_of=None, loss_scale=1.0):
    """Output and parameter gradients of ``model`` (parameters named as in ``params_of``, the
    module a compiled model wraps), the loss multiplied by ``loss_scale`` for the backward and
    the gradients divided by it."""
    params_of = params_of or model
    params_of.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        out = model(x)
    (out.float().square().mean() * loss_scale).backward()
    grads = {name: p.grad.detach() / loss_scale for name, p in params_of.named_parameters()
             if p.grad is not None}
    return out.detach().float(), grads


def loss_scale_for(amp, setting):
    """The loss scale of a run under autocast ``amp`` (None: float32): ``setting`` 'auto' is
    GradScaler's initial 2**16 for float16 and 1 otherwise; a number is used as given."""
    if setting != 'auto':
        scale = float(setting)
        if not scale > 0:
            raise ValueError(f'--loss-scale must be "auto" or a positive number, got {setting!r}')
        return scale
    return 2.0**16 if amp == torch.float16 else 1.0


@contextlib.contextmanager
def tf32_disabled():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def allowed(spread, tol):
    """The largest distance to the precise eager run a compiled tensor may have."""
    return max(tol, 2 * spread)


def compare(model, x, amp, mode, tol, loss_scale='auto'):
    """Per tensor (the output, every parameter gradient): the relative difference between
    ``model`` and ``torch.compile(copy of model, mode=mode)``, the eager model's own precision
    spread (module docstring), whether the compiled value is within :func:`allowed` of the more
    precise eager run, and its distance to that run. ``loss_scale``: as :func:`loss_scale_for`
    (the same for every run).
    Returns {name: (difference, spread, passed, distance to the precise run)}."""
    scale = loss_scale_for(amp, loss_scale)
    twin = copy.deepcopy(model)
    compiled = compile_model(twin, mode=mode)
    out_ref, grads_ref = run(model, x, amp, loss_scale=scale)
    if amp is not None:
        out_other, grads_other = run(model, x, None, loss_scale=scale)
    else:
        with tf32_disabled():
            out_other, grads_other = run(model, x, None, loss_scale=scale)
    run(compiled, x, amp, twin, scale)  # the first call compiles (with CUDA graphs: records)
    out, grads = run(compiled, x, amp, twin, scale)
    if grads.keys() != grads_ref.keys():
        raise RuntimeError('the compiled model has no gradient for '
                           f'{sorted(grads_ref.keys() - grads.keys())} and one for '
                           f'{sorted(grads.keys() - grads_ref.keys())} the eager model lacks')
    rows = {}
    for name, ref, other, got in [('output', out_ref, out_other, out)] + [
            (k, grads_ref[k], grads_other[k], grads[k]) for k in grads_ref]:
        diff, spread = relative_difference(ref, got), relative_difference(ref, other)
        to_precise = relative_difference(other, got)
        rows[name] = (diff, spread, to_precise <= allowed(spread, tol), to_precise)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_model_input_args(parser, batch=8)
    parser.add_argument('--mode', default='default',
                        choices=['default', 'reduce-overhead', 'max-autotune-no-cudagraphs'])
    parser.add_argument('--tol', type=float, default=1e-3)
    parser.add_argument('--loss-scale', default='auto',
                        help='"auto" (2**16 under fp16 autocast, else 1) or a positive number')
    args = parser.parse_args(argv)
    for amp in args.amp:  # a bad --loss-scale fails before anything compiles
        loss_scale_for(AMP_DTYPES[amp], args.loss_scale)
    torch.manual_seed(0)
    model = _common.build_plain_classifier(_common.load_config(args.config)).to(args.device)
    model.eval()  # no stochastic depth: both models must compute the same function
    x = torch.randn(args.batch, 3, *args.shape, device=args.device)
    rows, ok = [], True
    for amp in args.amp:
        dtype = AMP_DTYPES[amp]
        torch._dynamo.reset()
        result = compare(model, x, dtype, args.mode, args.tol, args.loss_scale)
        failed = sorted(k for k, (_, _, passed, _) in result.items() if not passed)
        ok &= not failed
        out_diff, out_spread, _, _ = result['output']
        grad_name = max((k for k in result if k != 'output'), key=lambda k: result[k][0])
        grad_diff, grad_spread, _, _ = result[grad_name]
        shares = {k: to_precise / allowed(spread, args.tol)
                  for k, (_, spread, _, to_precise) in result.items()}
        ratio_name = max(shares, key=shares.get)
        spread_kind = 'autocast vs float32' if dtype is not None else 'TF32 vs float32'
        rows.append((amp, out_diff, grad_diff, grad_name, not failed))
        scale = loss_scale_for(dtype, args.loss_scale)
        print(f'{args.config} [{args.mode}, autocast {amp}, loss scale {scale:g}]: output '
              f'{out_diff:.2e} (eager {spread_kind}: {out_spread:.2e}), worst gradient '
              f'{grad_diff:.2e} ({grad_name}; eager {spread_kind}: {grad_spread:.2e}); distance '
              f'to the precise eager run within max({args.tol:.0e}, 2 x spread): ' + (
                  f'ok (closest to the bound: {ratio_name}, {shares[ratio_name]:.2f} of it)'
                  if not failed else 'EXCEEDED by ' + ', '.join(
                      f'{k} {result[k][3]:.2e} (spread {result[k][1]:.2e})' for k in failed)),
              flush=True)
    return rows, ok


if __name__ == '__main__':
    sys.exit(0 if main()[1] else 1)
