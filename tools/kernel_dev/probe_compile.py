"""Time the first (compiling) and a second call of the fused kernel on a small case (GPU)."""
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit('/', 1)[0])
import benchmark_scan as bs  # noqa: E402

from vmamba_kernels import ss2d_scan_triton  # noqa: E402

inp = bs.make_inputs(2, 14, 64, 4, 1, torch.bfloat16, 'cuda', 0)
for v in inp.values():
    v.requires_grad_(True)
for attempt in range(2):
    t0 = time.time()
    y = ss2d_scan_triton(**inp)
    torch.cuda.synchronize()
    t1 = time.time()
    y.sum().backward()
    torch.cuda.synchronize()
    print(f'call {attempt}: forward {t1 - t0:.2f}s backward {time.time() - t1:.2f}s', flush=True)
