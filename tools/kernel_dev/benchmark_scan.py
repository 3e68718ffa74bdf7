"""Benchmark and full-size check of the fused SS2D core (needs a CUDA GPU; torch + triton only).

For each stage shape of VMamba-T at 224x224 (stage 1: 56x56, d_inner 96, ... stage 4: 7x7, 768;
``--arch small`` / ``base``: VMamba-S's, d_inner 192 ... 1536, or VMamba-B's, 256 ... 2048),
batch 128, bf16 inputs (``--dtype``), d_state 1, it times forward and forward+backward of
  fused    - vmamba_kernels.ss2d_scan (Triton: reads the map in 4 orders, merged output; as
             routed by default, so the forward alone of a map below 512 positions runs the
             channels-last kernels, here on a copy of the channel-first x),
  unfused  - materialized cross-scan (torch) + the same scan kernel per direction + torch merge,
  torch    - the torch path (the model's CPU path) on the GPU,
against the byte floor (forward: read x once, write y once; forward+backward adds reading x and
dy and writing dx), and checks the fused path against the float64 torch reference.

    python tools/kernel_dev/benchmark_scan.py [--batch 128] [--stages 1 2 3 4] [--skip-torch]
        [--arch tiny|small|base] [--dtype bf16|fp16|fp32] [--skip-unfused] [--graphs]
        [--out-map-dtype]
    python tools/kernel_dev/benchmark_scan.py --sweep --configs fp16_sums=0 fp16_sums=1 [--check]
"""
import argparse
import json
import math
import sys
import time

import torch

from _kernels import import_kernels  # noqa: E402

vk = import_kernels()
from vmamba_kernels import ss2d_scan_unfused_triton  # noqa: E402

# (H = W, d_inner, dt_rank) of the four stages at 224x224 (the models' SS2D layers; a test checks)
STAGES = {
    'tiny': {1: (56, 96, 6), 2: (28, 192, 12), 3: (14, 384, 24), 4: (7, 768, 48)},
    'small': {1: (56, 192, 6), 2: (28, 384, 12), 3: (14, 768, 24), 4: (7, 1536, 48)},
    'base': {1: (56, 256, 8), 2: (28, 512, 16), 3: (14, 1024, 32), 4: (7, 2048, 64)},
}
DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}


def make_inputs(batch, size, channels, rank, d_state, dtype, device, seed):
    """Inputs of the SS2D core on a size x size map, or (H, W) given as ``size``."""
    g = torch.Generator(device='cpu').manual_seed(seed)
    height, width = size if isinstance(size, tuple) else (size, size)
    length = height * width

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    dt = torch.exp(torch.rand(4, channels, generator=g) * (math.log(0.1) - math.log(1e-3)) +
                   math.log(1e-3))
    return dict(
        x=rnd(batch, channels, height, width).to(dtype),
        dt_low=rnd(batch, 4, rank, length, scale=0.5).to(dtype),
        dt_weight=rnd(4, channels, rank, scale=rank**-0.5),
        dt_bias=(dt + torch.log(-torch.expm1(-dt))).to(device),
        A=-torch.exp(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(
            4 * channels, 1)).to(device),
        Bs=rnd(batch, 4, d_state, length).to(dtype),
        Cs=rnd(batch, 4, d_state, length).to(dtype),
        D=torch.ones(4 * channels, device=device))


def fused(inp, backend='triton', out_dtype=None):
    return vk.ss2d_scan(**inp, backend=backend, out_dtype=out_dtype)


def fused_with(config, out_dtype=None):
    from vmamba_kernels import ss2d_scan_triton
    return lambda inp: ss2d_scan_triton(**inp, **config, out_dtype=out_dtype)


def sweep(args, dev):
    """Time forward+backward of the fused kernel over tile sizes and warps, per stage."""
    import itertools
    for stage in args.stages:
        size, channels, rank = STAGES[args.arch][stage]
        if args.map:  # the stage's channels and rank on another map (e.g. detection's)
            size = tuple(args.map)
        inp = make_inputs(args.batch, size, channels, rank, args.d_state, DTYPES[args.dtype], dev,
                          seed=stage)
        results = []
        grid = [parse_config(c) for c in args.configs] if args.configs else \
            list(itertools.product(args.sweep_c, args.sweep_l, args.sweep_w))
        for values in grid:
            if isinstance(values, dict):
                config = values
            else:
                config = dict(zip(('block_c', 'block_l', 'num_warps', 'bwd_block_c',
                                   'bwd_num_warps', 'transpose_columns'), values))
            for flag in ('transpose_columns', 'whole_map', 'project_first', 'channels_last'):
                if flag in config:
                    config[flag] = bool(config[flag])
            if args.d_state == 1:
                # a config times the channels-last kernels only where it names them: by default
                # the forward-only timing (no gradients) of a small map would go to them
                config.setdefault('channels_last', False)
            fn = fused_with(config, _out_dtype(args, inp))
            # the channels-last kernels get x stored channels-last, as the model hands it
            # them (a channel-first x would add a copy the model does not make)
            run_inp = dict(inp, x=inp['x'].detach().contiguous(memory_format=torch.channels_last)) \
                if config.get('channels_last') else inp
            try:
                errs = check(run_inp, args.check_batch, fn) if args.check else {}
                fwd = bench(fn, run_inp, False, 3, args.graphs)
                both = math.nan if args.forward_only else bench(fn, run_inp, True, 3,
                                                                 args.graphs)
            except Exception as err:  # e.g. out of shared memory / registers
                print(f'stage {stage} {config}: failed ({type(err).__name__}: '
                      f'{str(err)[:800]})', flush=True)
                continue
            results.append((both, fwd, config))
            checked = ''.join(f' {k} {v:.1e}' for k, v in errs.items())
            print(f'stage {stage} {config}: fwd {fwd:.3f} fwd+bwd {both:.3f}'
                  f'{" vs float64:" if errs else ""}{checked}', flush=True)
        both, fwd, config = min(results, key=lambda r: r[1] if args.forward_only else r[0])
        print(f'BEST stage {stage}: {config} fwd {fwd:.3f} ms fwd+bwd {both:.3f} ms', flush=True)
        del inp
        torch.cuda.empty_cache()


def _out_dtype(args, inp):
    """y's dtype asked of the kernels: the map's with ``--out-map-dtype`` (the model's call),
    else None (float32)."""
    return inp['x'].dtype if args.out_map_dtype else None


def parse_config(text):
    """A --configs entry: CxLxWARPS[...] (the chunked kernels' tiles), or comma-separated
    keyword=integer pairs of ``ss2d_scan_n1`` (e.g. whole_map=1,map_block_c=4,map_num_warps=2)."""
    if '=' in text:
        pairs = [item.split('=') for item in text.split(',')]
        return {key: int(value) for key, value in pairs}
    return tuple(int(v) for v in text.split('x'))


def unfused(inp):
    x = inp['x']
    size = x.shape[-1]
    xs = vk.cross_scan(x).contiguous()
    ys = ss2d_scan_unfused_triton(
        xs, vk.to_scan_order(inp['dt_low'], size, size).contiguous(), inp['dt_weight'],
        inp['dt_bias'], inp['A'], vk.to_scan_order(inp['Bs'], size, size).contiguous(),
        vk.to_scan_order(inp['Cs'], size, size).contiguous(), inp['D'], size, size)
    return vk.cross_merge(ys, size, size)


def bench(fn, inp, backward, reps, graphs=False):
    """Median ms of ``fn(inp)`` (with ``backward``: and its backward). ``graphs``: the step is
    captured once in a CUDA graph and its replays are timed, so that small shapes measure the
    GPU rather than the host's launches."""
    from triton.testing import do_bench
    leaves = [v for v in inp.values() if v is not None]
    if backward:
        for v in leaves:
            v.requires_grad_(True)
        grad = torch.randn_like(fn(inp))

        def step():
            for v in leaves:
                v.grad = None
            fn(inp).backward(grad)
    else:
        for v in leaves:
            v.requires_grad_(False)

        def step():
            with torch.no_grad():
                fn(inp)
    if graphs:
        step = _graphed(step)
    return do_bench(step, warmup=reps * 5, rep=reps * 25, return_mode='median')


def _graphed(step):
    """``step`` captured in a CUDA graph (after warm-up runs on a side stream, which compile
    the kernels and settle autograd's buffers); returns the graph's replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def rel_err(a, b):
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check(inp, grad_batch, fn=fused):
    """``fn``'s output (full batch) and all gradients (first grad_batch images) vs float64
    (``fn``: the fused Triton path by default)."""
    with torch.no_grad():
        y = fn(inp)
        ref = vk.ss2d_scan_torch(**{k: v.double() for k, v in inp.items()})
    errs = {'y': rel_err(y, ref)}
    del ref
    sub = {k: (v[:grad_batch] if k in ('x', 'dt_low', 'Bs', 'Cs') else v).detach().clone()
           for k, v in inp.items()}
    sub64 = {k: v.double().requires_grad_(True) for k, v in sub.items()}
    for v in sub.values():
        v.requires_grad_(True)
    y = fn(sub)
    grad = torch.randn_like(y)
    y.backward(grad)
    vk.ss2d_scan_torch(**sub64).backward(grad.double())
    for k in sub:
        errs['d' + k] = rel_err(sub[k].grad, sub64[k].grad)
    return errs


def copy_bandwidth(device):
    from triton.testing import do_bench
    src = torch.empty(1 << 28, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode='median')
    return 2 * src.numel() * 4 / ms / 1e9  # TB/s, read + write


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--stages', type=int, nargs='+', default=[1, 2, 3, 4])
    parser.add_argument('--d-state', type=int, default=1)
    parser.add_argument('--arch', default='tiny', choices=sorted(STAGES),
                        help="whose stage shapes (map size, SSM channels, dt rank)")
    parser.add_argument('--dtype', default='bf16', choices=sorted(DTYPES),
                        help='of the map, dt_low, Bs, Cs (fp32: float32 inference)')
    parser.add_argument('--skip-unfused', action='store_true',
                        help='do not time the unfused pipeline')
    parser.add_argument('--reps', type=int, default=10, help='timing budget scale')
    parser.add_argument('--skip-torch', action='store_true', help='do not time the torch path')
    parser.add_argument('--graphs', action='store_true',
                        help='time replays of each step captured in a CUDA graph (small maps: '
                        'the GPU\'s time rather than the host\'s launches)')
    parser.add_argument('--check-batch', type=int, default=16,
                        help='images in the float64 gradient check (forward uses all)')
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--out-map-dtype', action='store_true',
                        help="y in the map's dtype (the model's call) instead of float32")
    parser.add_argument('--forward-only', action='store_true',
                        help='with --sweep: time the forward (inference) only, and pick the '
                        'best by it')
    parser.add_argument('--check', action='store_true',
                        help='with --sweep: check each config against float64 first (the '
                        'first --check-batch images for the gradients)')
    parser.add_argument('--sweep', action='store_true',
                        help='time the fused kernel over tile sizes / warps instead')
    parser.add_argument('--sweep-c', type=int, nargs='+', default=[16, 32])
    parser.add_argument('--sweep-l', type=int, nargs='+', default=[32, 64])
    parser.add_argument('--sweep-w', type=int, nargs='+', default=[4, 8])
    parser.add_argument('--map', type=int, nargs=2, metavar=('H', 'W'),
                        help='with --sweep: this map instead of the stage\'s (the stage\'s '
                        'channels and rank), e.g. --batch 2 --map 200 334 (Mask R-CNN at '
                        '800 x 1333, stage 1)')
    parser.add_argument('--configs', nargs='+',
                        help='sweep these tiles instead of the product, each '
                        'CxLxWARPS[xBWD_CxBWD_WARPS[xTRANSPOSE_COLUMNS 0/1]], e.g. 4x128x4 '
                        '4x128x4x16x8x1, or keyword=value pairs, e.g. whole_map=0 '
                        'whole_map=1,map_block_c=4,map_num_warps=2 segments=16,bwd_segments=8')
    args = parser.parse_args()
    for option in ('map', 'check', 'forward_only'):
        if getattr(args, option) and not args.sweep:
            parser.error(f'--{option.replace("_", "-")} applies to --sweep only')
    if not torch.cuda.is_available():
        sys.exit('benchmark_scan.py needs a CUDA GPU')
    dev = torch.device('cuda')
    if args.sweep:
        return sweep(args, dev)
    bw = copy_bandwidth(dev)
    print(f'device: {torch.cuda.get_device_name()}, torch {torch.__version__}, '
          f'copy bandwidth {bw:.2f} TB/s (read + write)', flush=True)
    rows = []
    for stage in args.stages:
        size, channels, rank = STAGES[args.arch][stage]
        inp = make_inputs(args.batch, size, channels, rank, args.d_state, DTYPES[args.dtype], dev,
                          seed=stage)
        n_el = args.batch * channels * size * size
        xb = DTYPES[args.dtype].itemsize  # x and dx
        yb = xb if args.out_map_dtype else 4  # y and dy
        row = dict(stage=stage, H=size, C=channels, R=rank,
                   floor_fwd=n_el * (xb + yb) / bw / 1e9,
                   floor_fwdbwd=n_el * (xb + yb + xb + yb + xb) / bw / 1e9)
        t0 = time.time()
        fn = lambda i: fused(i, out_dtype=_out_dtype(args, i))  # noqa: E731
        row['err'] = check(inp, args.check_batch, fn)
        print(f'stage {stage}: check vs float64 done in {time.time() - t0:.1f}s: ' +
              ' '.join(f'{k} {v:.1e}' for k, v in row['err'].items()), flush=True)
        variants = [('fused', fn)] + ([] if args.skip_unfused else [('unfused', unfused)])
        if not args.skip_torch:
            variants.append(('torch', lambda i: fused(i, backend='torch')))
        for name, fn in variants:
            reps = 2 if name == 'torch' else args.reps
            row[name + '_fwd'] = bench(fn, inp, False, reps, args.graphs)
            row[name + '_fwdbwd'] = bench(fn, inp, True, reps, args.graphs)
            print(f'stage {stage} {name}: fwd {row[name + "_fwd"]:.3f} ms, fwd+bwd '
                  f'{row[name + "_fwdbwd"]:.3f} ms', flush=True)
        rows.append(row)
        del inp
        torch.cuda.empty_cache()
    names = (['fused'] + ([] if args.skip_unfused else ['unfused']) +
             ([] if args.skip_torch else ['torch']))
    head = '| stage | H=W | C | ' + ' | '.join(f'{n} fwd | {n} fwd+bwd' for n in names)
    print('\nSS2D core, %s shapes, batch %d, %s inputs, d_state %d, times in ms (median)' %
          (args.arch, args.batch, args.dtype, args.d_state))
    print(head + ' | floor fwd | floor fwd+bwd | fused fwd+bwd / floor |')
    print('|' + '---|' * (head.count('|') + 3))
    for r in rows:
        cells = [f"{r[n + '_fwd']:.3f} | {r[n + '_fwdbwd']:.3f}" for n in names]
        print(f"| {r['stage']} | {r['H']} | {r['C']} | " + ' | '.join(cells) +
              f" | {r['floor_fwd']:.3f} | {r['floor_fwdbwd']:.3f} | "
              f"{r['fused_fwdbwd'] / r['floor_fwdbwd']:.1f}x |")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=torch.cuda.get_device_name(), bandwidth_tbs=bw, rows=rows), f,
                      indent=1)


if __name__ == '__main__':
    main()
