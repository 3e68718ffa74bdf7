"""tools/kernel_dev: the SASS instruction counter compiles the d_state 1 kernels without a GPU."""
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
KERNEL_DEV = osp.join(ROOT, 'tools', 'kernel_dev')
sys.path.insert(0, KERNEL_DEV)


def test_kernel_sass_counts_the_chunk_loop_of_both_kernels():
    # compiled for sm_90 without a GPU (in a process of its own: the tests run the kernels in
    # Triton's interpreter); the counted loop is the first direction's chunk loop, whose
    # instructions are attributed to the scan's source lines
    import os
    import re
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    tool = osp.join(KERNEL_DEV, 'kernel_sass.py')

    def per_element(*args):
        out = subprocess.run([sys.executable, tool, '--lines', '40', *args], env=env,
                             capture_output=True, text=True, check=True).stdout
        assert 'first chunk loop' in out and 'ss2d_n1.py:' in out and 'MUFU' in out, out
        return float(re.search(r'([0-9.]+) per element', out).group(1))

    forward = per_element()
    assert 20 < forward < 1000
    # and every direction's loop, the first one's count first
    out = subprocess.run([sys.executable, tool], env=env, capture_output=True, text=True,
                         check=True).stdout
    first = int(re.search(r'first chunk loop (\d+) instructions', out).group(1))
    loops = re.findall(r'(\d+) \((\d+)\)', out.split('every chunk loop')[1])
    assert len(loops) == 4 and int(loops[0][0]) == first, out
    # the backward does more per element than the forward (it recomputes it)
    backward = per_element('--kernel', 'bwd', '--block-c', '2', '--warps', '1')
    assert backward > forward
    # the passes of a segmented launch compile for the GPU too (the interpreter accepts code
    # that the compiler does not); a backward pre-pass only solves the carried gradient
    for kernel, tiles in (('fwd', ()), ('bwd', ('--block-c', '2', '--warps', '1'))):
        counts = {p: per_element('--kernel', kernel, *tiles, '--segment-pass', p)
                  for p in ('summary', 'main')}
        assert 20 < counts['summary'] and 20 < counts['main'] < 1.1 * max(forward, backward)
    assert counts['summary'] < 0.8 * backward
    with pytest.raises(SystemExit, match='unset TRITON_INTERPRET'):
        import kernel_sass
        kernel_sass.main([])


def test_kernel_sass_counts_the_whole_map_kernels():
    # the whole-map kernels are straight-line code: counted whole, per padded position; their
    # registers and stack come from cuobjdump
    import os
    import re
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    tool = osp.join(KERNEL_DEV, 'kernel_sass.py')
    found = {}
    for kernel in ('map-fwd', 'map-bwd'):
        out = subprocess.run([sys.executable, tool, '--kernel', kernel, '--map', '8x8',
                              '--block-c', '4', '--warps', '1', '--rank', '3', '--lines', '40'],
                             env=env, capture_output=True, text=True, check=True).stdout
        assert 'whole kernel' in out and 'ss2d_n1_map.py:' in out and 'MUFU' in out, out
        per_element, registers = re.search(
            r'([0-9.]+) per element \(.*; (\d+) registers', out).groups()
        assert 0 < int(registers) <= 255
        found[kernel] = float(per_element)
    assert 20 < found['map-fwd'] < found['map-bwd'] < 4000


def test_benchmark_scan_configs():
    import benchmark_scan
    assert benchmark_scan.parse_config('4x32x1x2x1x0') == (4, 32, 1, 2, 1, 0)
    assert benchmark_scan.parse_config('whole_map=1,map_block_c=4,map_num_warps=2') == dict(
        whole_map=1, map_block_c=4, map_num_warps=2)


def test_norm_from_output_error_grows_with_bias_over_weight():
    # the trade-off README states for memory_efficient_norm: recovering the normalised input from
    # the fp16 output costs nothing while |bias| / |weight| is small and grows with it; the
    # input-keeping norm is unaffected by the ratio
    import torch
    from norm_from_output_error import error_table
    rows = dict(error_table([0, 100], (1, 32, 8, 8), torch.float16, seeds=1, device='cpu'))
    for ratio in (0, 100):
        assert max(rows[ratio]['input']) < 1e-3, rows
    assert max(rows[0]['output']) < 2 * max(rows[0]['input']) + 1e-4, rows
    dx_error, dweight_error = rows[100]['output']
    assert dweight_error > 10 * rows[100]['input'][1], rows
    assert dx_error > 3 * rows[100]['input'][0], rows


def test_benchmark_norm_compiled_checks_every_variant_on_the_cpu():
    # the GPU experiment's variants, compiled (aot_eager), each within fp16 rounding of float64
    from benchmark_norm_compiled import VARIANTS, main
    rows = main(['--batch', '2', '--size', '5', '--channels', '12', '--backend', 'aot_eager'])
    assert {(name, variant) for name, variant, _, _ in rows} == {
        (name, variant) for name in ('residual stream (channels-last)',
                                     'scan output (channel-first)') for variant in VARIANTS}
    for name, variant, ms, error in rows:
        assert ms is None and error < 1e-2, (name, variant, error)


def test_benchmark_norm_compiled_loss_keeps_fp16_gradients_above_underflow():
    # a loss averaged over all 2.4 M outputs gave gradients of ~1e-7, below fp16's normal range:
    # every variant then showed a 2e-2 (at batch 128: 3e-1) error that was the benchmark's own
    from benchmark_norm_compiled import main
    rows = main(['--batch', '8', '--size', '56', '--channels', '96', '--backend', 'aot_eager',
                 '--variants', 'inductor'])
    assert all(error < 2e-3 for _, _, _, error in rows), rows


@pytest.mark.parametrize('variant', ['compiled', 'channel-first-weights',
                                     'channel-first-scan-input'])
def test_cpu_inference_ab_times_both_forms_of_one_model(variant):
    # the experiment behind the CPU inference A/B figures: both forms from the config, one set
    # of weights (their outputs agree), a time per round for each
    import re
    import subprocess
    tool = osp.join(KERNEL_DEV, 'experiments', 'cpu_inference_ab.py')
    config = osp.join(ROOT, 'configs', 'vmamba', 'vmamba-nano_1xb32_digits.py')
    out = subprocess.run([sys.executable, tool, config, '--variant', variant, '--batch', '2',
                          '--rounds', '2', '--repeats', '1', '--size', '32'],
                         capture_output=True, text=True, check=True).stdout
    assert float(re.search(r'largest output difference ([0-9.e+-]+)', out).group(1)) < 1e-4
    for name in ('eager', variant):
        times = re.search(rf'{name} +ms per batch, by round: ([0-9. ]+) \(median', out).group(1)
        assert len(times.split()) == 2 and all(float(t) > 0 for t in times.split()), out


def test_benchmark_scan_sweep_times_the_kernels_its_configs_name(monkeypatch):
    # the forward-only timing runs without gradients, which by default sends a small map to the
    # channels-last kernels: a sweep config times them only where it names them
    import argparse
    import benchmark_scan
    import torch
    from vmamba_kernels import ss2d_n1
    routed = []
    monkeypatch.setattr(ss2d_n1, 'ss2d_scan_n1_channels_last',
                        lambda *args, **kw: routed.append('channels-last') or args[0])
    monkeypatch.setattr(ss2d_n1.SS2DScanN1Function, 'apply',
                        lambda *args: routed.append('chunked') or args[0])
    monkeypatch.setattr(benchmark_scan, 'STAGES', {'tiny': {3: (5, 4, 2)}})

    def bench(fn, inp, backward, reps, graphs=False):
        with torch.no_grad():
            fn(inp)
        return 1.0

    monkeypatch.setattr(benchmark_scan, 'bench', bench)
    monkeypatch.delenv('VMAMBA_SCAN_CHANNELS_LAST', raising=False)
    args = argparse.Namespace(stages=[3], arch='tiny', map=None, batch=1, d_state=1,
                              dtype='fp32', configs=['4x32x1', 'fp16_sums=1', 'channels_last=1'],
                              out_map_dtype=False, check=False, check_batch=1, forward_only=True,
                              graphs=False)
    benchmark_scan.sweep(args, torch.device('cpu'))
    assert routed == ['chunked', 'chunked', 'channels-last']
