"""One forward and one backward of the fused d_state 1 scan at a stage shape, for a profiler
(ncu) to attach to: python tools/kernel_dev/experiments/one_scan.py [--arch tiny] [--stage 1]."""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import benchmark_scan as bs  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument('--arch', default='tiny')
parser.add_argument('--stage', type=int, default=1)
parser.add_argument('--batch', type=int, default=128)
args = parser.parse_args()
size, ch, rank = bs.STAGES[args.arch][args.stage]
inp = bs.make_inputs(args.batch, size, ch, rank, 1, torch.bfloat16, 'cuda', seed=0)
for v in inp.values():
    v.requires_grad_(True)
for _ in range(2):  # the first compiles
    y = bs.fused(inp)
    y.backward(torch.ones_like(y))
torch.cuda.synchronize()
print('done', y.shape)
