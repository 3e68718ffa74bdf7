"""Throughput and peak memory of a config's classifier (backbone + pool + Linear head, as in the
authors' protocol), on GPU or CPU.

    python tools/analysis/benchmark.py CONFIG [--batch 128] [--shape 224 224] [--device cuda]
        [--amp none fp16 bf16] [--modes inference train train-optim] [--warmup 5] [--repeats 20]
        [--launch eager graph compile compile-graph]

Modes: inference (no grad), train (forward + backward, optimizer excluded: the authors'
protocol), train-optim (forward + backward + AdamW step). Median over repeats after warm-up.

Launch (how the model's kernels reach the GPU; each named one is measured):

* ``eager``: plain PyTorch, every kernel launched from Python (the authors' protocol).
* ``graph``: the model's forward (and backward when training) captured once and replayed as CUDA
  graphs (``mmvmamba.analysis.measure_throughput(cuda_graph=True)``), CUDA only.
* ``compile``: ``torch.compile(model)`` (inductor, default mode; compiled in the warm-up steps).
* ``compile-graph``: ``torch.compile(model, mode='reduce-overhead')`` (inductor + CUDA graphs).

Both compile through ``mmvmamba.models.utils.compile_model`` (inductor's layout optimisation off
for VMamba).

Each result is printed as soon as it is measured, then all of them as a table; its last column
is each row's wall time, compilation included.
"""
import argparse
import itertools
import time

import _common
import torch
from mmvmamba.analysis import measure_throughput
from mmvmamba.models.utils import compile_model

MODES = ('inference', 'train', 'train-optim')
LAUNCHES = ('eager', 'graph', 'compile', 'compile-graph')


def build(cfg, device, launch):
    """The classifier on ``device``, compiled when ``launch`` says so."""
    torch.manual_seed(0)
    model = _common.build_plain_classifier(cfg).to(device)
    if launch.startswith('compile'):
        torch._dynamo.reset()
        model = compile_model(model, mode='reduce-overhead' if launch == 'compile-graph' else None)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_model_input_args(parser, batch=128)
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=20)
    parser.add_argument('--launch', nargs='+', default=['eager'], choices=LAUNCHES)
    args = parser.parse_args(argv)
    if 'graph' in args.launch and not args.device.startswith('cuda'):
        parser.error(f"--launch graph needs a CUDA device, got --device {args.device}")
    cfg = _common.load_config(args.config)
    rows = []
    for mode, amp, launch in itertools.product(args.modes, args.amp, args.launch):
        model = build(cfg, args.device, launch)
        optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-4)
                     if mode == 'train-optim' else None)
        start = time.time()
        r = measure_throughput(model, args.batch, tuple(args.shape), args.device,
                               amp, mode != 'inference', optimizer,
                               args.warmup, args.repeats,
                               _common.progress_printer(f'{mode} {amp} {launch}'),
                               cuda_graph=launch == 'graph',
                               # CUDA graph trees: each step may overwrite the last one's outputs
                               before_step=(torch.compiler.cudagraph_mark_step_begin
                                            if launch == 'compile-graph' else None))
        peak = '-' if r['peak_bytes'] is None else f"{r['peak_bytes'] / 2**30:.1f} GiB"
        rows.append((mode, amp, launch, r['images_per_s'], peak, time.time() - start))
        # each result as soon as it is measured: a run cut short keeps the rows it finished
        print(f'{mode} {amp} {launch}: {rows[-1][3]:.1f} img/s, peak {peak}, '
              f'{rows[-1][5]:.0f} s', flush=True)
        del model, optimizer
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
    dev = torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'
    print(f'\n{args.config}: batch {args.batch}, {args.shape[0]}x{args.shape[1]}, {dev}, '
          f'torch {torch.__version__}')
    print('| mode | autocast | launch | img/s | peak memory | wall s |\n|---|---|---|---|---|---|')
    for mode, amp, launch, ips, peak, wall in rows:
        print(f'| {mode} | {amp} | {launch} | {ips:.1f} | {peak} | {wall:.0f} |')
    return rows


if __name__ == '__main__':
    main()
