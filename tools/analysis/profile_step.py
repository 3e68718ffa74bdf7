"""Where a step of a config's classifier spends its GPU time (torch.profiler), grouped by kernel.

    python tools/analysis/profile_step.py CONFIG [--batch 128] [--amp fp16] [--mode train]
        [--steps 3] [--top 25] [--by-op] [--compile] [--cfg-options KEY=VALUE ...]
    python tools/analysis/profile_step.py --peer swin-tiny ...
    python tools/analysis/profile_step.py --timm swin_tiny_patch4_window7_224 ...

Instead of a VMamba config, ``--peer`` profiles one of mmpretrain's backbones
(``<family>-<arch>``, as ``compare_peers.py --peers`` builds them) and ``--timm`` a timm model
(where timm is installed), under the same step: where Swin's step spends its time beside
VMamba's, family by family.

With ``--by-op`` it also prints the PyTorch operators (aten::add, aten::copy_, ...) whose own
kernels take the most device time, with their input shapes: which call in the model launched a
kernel the table above only names.

With ``--compile`` the model runs under ``torch.compile`` (inductor, default mode; compiled in the
warm-up steps), as ``benchmark.py --launch compile`` times it: its fused kernels are named
``triton_*``.

Prints the kernels with the largest total device time over ``--steps`` profiled steps (after two
warm-up steps), with their share of the step, and a summary by family (the SS2D scan kernels,
matrix products, normalisation, elementwise, convolutions, copies/transposes).
"""
import argparse

import _common
import torch
from _profiling import device_us, kernel_totals, print_kernel_tables, step_device_us
from compare_peers import build_peer, build_timm, check_peer_name
from mmengine.config import DictAction
from mmvmamba.analysis import AMP_DTYPES
from mmvmamba.models.utils import compile_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', help='a VMamba config (or --peer / --timm)')
    parser.add_argument('--peer', help="one of mmpretrain's backbones, e.g. swin-tiny")
    parser.add_argument('--timm', help='a timm model name, e.g. swin_tiny_patch4_window7_224')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='overrides of the VMamba config, KEY=VALUE')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224])
    parser.add_argument('--amp', default='fp16', choices=['none', 'fp16', 'bf16'])
    parser.add_argument('--mode', default='train', choices=['train', 'inference'])
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--top', type=int, default=25)
    parser.add_argument('--by-op', action='store_true',
                        help='also list operators (with input shapes) by own device time')
    parser.add_argument('--compile', action='store_true',
                        help='profile the torch.compile-d model (compiled in the warm-up steps)')
    args = parser.parse_args(argv)
    named = [n for n in (args.config, args.peer, args.timm) if n]
    if len(named) != 1:
        parser.error('one model to profile: a config, --peer NAME or --timm NAME '
                     f'(got {len(named)}: {named})')
    if args.cfg_options and not args.config:
        parser.error(f'--cfg-options {args.cfg_options} applies to a VMamba config only')
    if args.peer:
        try:
            check_peer_name(args.peer)
        except ValueError as e:
            parser.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    label, build = model_to_profile(args)
    if not torch.cuda.is_available():
        raise SystemExit('profile_step.py needs a CUDA GPU')
    model = build().cuda()
    model.train(args.mode == 'train')
    if args.compile:
        model = compile_model(model)
    images = torch.randn(args.batch, 3, *args.shape, device='cuda')
    dtype = AMP_DTYPES[args.amp]

    def step():
        with torch.autocast('cuda', dtype=dtype or torch.float32, enabled=dtype is not None):
            if args.mode == 'train':
                model(images).float().sum().backward()
            else:
                with torch.no_grad():
                    model(images)

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    if args.by_op:
        activities.append(torch.profiler.ProfilerActivity.CPU)
    with torch.profiler.profile(activities=activities, record_shapes=args.by_op) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    totals = kernel_totals(prof)
    step_us = step_device_us(totals, args.steps)
    launch = ' compiled' if args.compile else ''
    print(f'{label}: {args.mode} {args.amp}{launch}, batch {args.batch}: device time per '
          f'step {step_us / 1e3:.2f} ms (sum of kernel times)')
    print_kernel_tables(totals, args.steps, args.top)
    if args.by_op:
        print_operators(prof, args.steps, step_us, args.top)


def model_to_profile(args):
    """(label, builder) of the model the arguments name: a VMamba config (with
    ``--cfg-options``), ``--peer`` or ``--timm``."""
    if args.config:
        cfg = _common.load_config(args.config, args.cfg_options)
        label = args.config + _common.options_label(args.cfg_options)
        return label, lambda: _common.build_plain_classifier(cfg)
    if args.peer:
        return f'mmpretrain {args.peer}', lambda: build_peer(args.peer)
    return f'timm {args.timm}', lambda: build_timm(args.timm)


def print_operators(prof, steps, step_us, top):
    """Operators by the device time of the kernels they launched themselves, per input shape."""
    rows = []
    for event in prof.key_averages(group_by_input_shape=True):
        if event.device_type != torch.autograd.DeviceType.CPU:
            continue
        own_us = device_us(event, own=True)
        if own_us > 0:
            rows.append((own_us, event.key, event.count // steps, str(event.input_shapes)))
    print(f'\n| operator (top {top}) | calls / step | ms / step | share | input shapes |\n'
          '|---|---|---|---|---|')
    for own_us, key, calls, shapes in sorted(rows, reverse=True)[:top]:
        shapes = shapes if len(shapes) < 100 else shapes[:97] + '...'
        print(f'| {key} | {calls} | {own_us / steps / 1e3:.2f} | '
              f'{100 * own_us / steps / step_us:.1f}% | {shapes} |')


if __name__ == '__main__':
    main()
