"""Experiment: CPU cost per call of the LayerNorm2d paths, a bare Triton launch, the scan wrapper."""
import sys, time
sys.path.insert(0, 'tools/analysis'); sys.path.insert(0, 'tools/kernel_dev')
import torch
import vmamba_kernels as vk
from vmamba_kernels.layernorm2d import layer_norm_2d_triton, _ln2d_fwd_kernel, LayerNorm2dFunction
import benchmark_scan as bs
x = torch.randn(1, 96, 8, 8, device='cuda')
w = torch.ones(96, device='cuda'); b = torch.zeros(96, device='cuda')
y = torch.empty_like(x); mean = torch.empty(1, 64, device='cuda'); rstd = torch.empty_like(mean)
def timeit(name, fn, n=2000):
    for _ in range(50): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(n): fn()
    cpu = (time.perf_counter() - t) / n
    torch.cuda.synchronize()
    print(f'{name}: {cpu*1e6:.1f} us/call (CPU)', flush=True)
with torch.no_grad():
    timeit('torch add', lambda: x + x)
    timeit('torch LN path (permute, layer_norm, permute)', lambda: vk.layer_norm_2d(x, w, b, backend='torch'))
    timeit('bare triton launch (_ln2d_fwd_kernel[grid])', lambda: _ln2d_fwd_kernel[(1, 1)](x, w, b, y, mean, rstd, 96, 64, 1e-5, 64, 1, 64, 1, BLOCK_C=128, BLOCK_P=32, num_warps=4))
    timeit('LayerNorm2dFunction.apply', lambda: LayerNorm2dFunction.apply(x, w, b, 1e-5, torch.float32, False))
    timeit('layer_norm_2d_triton', lambda: layer_norm_2d_triton(x, w, b))
    timeit('vk.layer_norm_2d triton', lambda: vk.layer_norm_2d(x, w, b, backend='triton'))
    inp = bs.make_inputs(1, 8, 96, 6, 1, torch.bfloat16, 'cuda', 0)
    timeit('ss2d_scan triton (8x8, strided)', lambda: vk.ss2d_scan(**inp, backend='triton'), 500)
    inp = bs.make_inputs(1, 24, 96, 6, 1, torch.bfloat16, 'cuda', 0)
    timeit('ss2d_scan triton (24x24, transposed cols)', lambda: vk.ss2d_scan(**inp, backend='triton'), 500)
    from vmamba_kernels.checks import check_ss2d_inputs
    timeit('check_ss2d_inputs', lambda: check_ss2d_inputs(*[inp[k] for k in ('x','dt_low','dt_weight','dt_bias','A','Bs','Cs','D')]), 500)
