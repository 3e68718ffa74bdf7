"""Throughput and peak memory of a config's classifier (backbone + pool + Linear head, as in the
authors' protocol), on GPU or CPU.

    python tools/analysis/benchmark.py CONFIG [--batch 128] [--shape 224 224] [--device cuda]
        [--amp none fp16 bf16] [--modes inference train train-optim] [--warmup 5] [--repeats 20]

Modes: inference (no grad), train (forward + backward, optimizer excluded: the authors'
protocol), train-optim (forward + backward + AdamW step). Median over repeats after warm-up.
"""
import argparse
import time

import _common
import torch
from mmvmamba.analysis import measure_throughput

MODES = ('inference', 'train', 'train-optim')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', nargs='+', default=['none'], choices=['none', 'fp16', 'bf16'])
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=20)
    args = parser.parse_args(argv)
    cfg = _common.load_config(args.config)
    rows = []
    for mode in args.modes:
        for amp in args.amp:
            torch.manual_seed(0)
            model = _common.build_plain_classifier(cfg)
            train = mode != 'inference'
            optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-4)
                         if mode == 'train-optim' else None)
            start = time.time()
            r = measure_throughput(model.to(args.device), args.batch, tuple(args.shape),
                                   args.device, None if amp == 'none' else amp, train, optimizer,
                                   args.warmup, args.repeats,
                                   _common.progress_printer(f'{mode} {amp}'))
            peak = '-' if r['peak_bytes'] is None else f"{r['peak_bytes'] / 2**30:.1f} GiB"
            rows.append((mode, amp, r['images_per_s'], peak, time.time() - start))
            del model, optimizer
            if args.device.startswith('cuda'):
                torch.cuda.empty_cache()
    dev = torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'
    print(f'\n{args.config}: batch {args.batch}, {args.shape[0]}x{args.shape[1]}, {dev}, '
          f'torch {torch.__version__}')
    print('| mode | autocast | img/s | peak memory |\n|---|---|---|---|')
    for mode, amp, ips, peak, _ in rows:
        print(f'| {mode} | {amp} | {ips:.1f} | {peak} |')
    return rows


if __name__ == '__main__':
    main()
