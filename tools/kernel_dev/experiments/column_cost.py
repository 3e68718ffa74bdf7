"""Experiment: cost of the column-major directions in the N=1 forward (timing only, wrong results)."""
import sys
sys.path.insert(0, 'tools/analysis'); sys.path.insert(0, 'tools/kernel_dev')
import torch, triton, triton.language as tl
import benchmark_scan as bs
import vmamba_kernels.ss2d_n1 as n1
mode = sys.argv[1]
if mode == 'rows':
    @triton.jit
    def _row_index(t, k: tl.constexpr, H, W, MERGED: tl.constexpr):
        return t
    n1._scan_index = _row_index
for stage, cfg in ((1, dict(block_c=4, block_l=128, num_warps=4)), (2, dict(block_c=8, block_l=64, num_warps=4))):
    size, ch, rank = bs.TINY_STAGES[stage]
    inp = bs.make_inputs(128, size, ch, rank, 1, torch.bfloat16, 'cuda', 0)
    f = bs.fused_with(cfg)
    print(mode, stage, 'fwd %.3f' % bs.bench(f, inp, False, 10), 'fwd+bwd %.3f' % bs.bench(f, inp, True, 10), flush=True)
if mode == 'rows':
    from triton.testing import do_bench
    for size, ch in ((56, 96), (28, 192)):
        x = torch.randn(128, ch, size, size, device='cuda').bfloat16()
        y = torch.randn(128, ch, size, size, device='cuda')
        yt = torch.randn(128, ch, size, size, device='cuda')
        print(size, 'transpose bf16 copy %.3f' % do_bench(lambda: x.transpose(-1, -2).contiguous(), return_mode='median'),
              'y + yT^T fp32 %.3f' % do_bench(lambda: y + yt.transpose(-1, -2), return_mode='median'), flush=True)
