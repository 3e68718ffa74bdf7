"""Instructions per element of the d_state 1 scan kernels' chunk loop, from their sm_90 machine
code (no GPU needed: Triton compiles for an H100 target, its bundled ``nvdisasm`` disassembles).

Compiles the forward or backward kernel of ``kernels/ss2d_n1.py`` for one tile configuration (C
marked divisible by 16, and L when ``--length`` is, as a launch specialises them), finds the
first chunk loop (the first direction's) and prints its instruction count per element of a tile,
the most frequent opcodes and the source lines that cost most. A static count: an inner loop
left in the chunk loop (a run-time bound) is counted once.

    python tools/kernel_dev/kernel_sass.py [--kernel fwd|bwd|map-fwd|map-bwd] [--block-c 8]
        [--block-l 64] [--warps 4] [--rank 6] [--pre-given] [--strided-columns] [--length 3136]
        [--map 16x16] [--lines 15]

It also lists every chunk loop's instruction and shuffle counts (one loop per direction: the
directions walked backwards differ from the first).

The whole-map kernels (``kernels/ss2d_n1_map.py``, map-fwd / map-bwd) have no chunk loop: their
whole code is counted, per padded position of the tile. Registers and stack (spills) per thread
come from the bundled ``cuobjdump``.
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _kernels import import_kernels  # noqa: E402

import_kernels()  # vmamba_kernels, installed or from the checkout

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import vmamba_kernels.ss2d_n1 as n1  # noqa: E402
import vmamba_kernels.ss2d_n1_map as m1  # noqa: E402

FWD_POINTERS = ('x_ptr', 'xt_ptr', 'dtl_ptr', 'w_ptr', 'bias_ptr', 'A_ptr', 'B_ptr', 'C_ptr',
                'D_ptr', 'y_ptr', 'yt_ptr', 'yo_ptr', 'hs_ptr', 'hin_ptr', 'sum_ptr')
BWD_POINTERS = ('x_ptr', 'xt_ptr', 'dtl_ptr', 'w_ptr', 'bias_ptr', 'A_ptr', 'B_ptr', 'C_ptr',
                'D_ptr', 'hs_ptr', 'dy_ptr', 'dyt_ptr', 'dx_ptr', 'dxt_ptr', 'dxo_ptr',
                'dpre_ptr', 'dbias_ptr', 'dA_ptr', 'dB_ptr', 'dC_ptr', 'dD_ptr', 'cin_ptr',
                'sum_ptr')
BF16_POINTERS = ('x_ptr', 'xt_ptr', 'B_ptr', 'C_ptr', 'yo_ptr', 'dxo_ptr')  # as under autocast


def compile_map_kernel(args):
    """The whole-map kernel (``kernels/ss2d_n1_map.py``) for ``args``: map-fwd or map-bwd, a
    padded map of ``args.map`` (HPxWP), BLOCK_C channels, bf16 map / B / C as under autocast,
    the pre-activation (``--pre-given``) and its gradient in float32 (bf16 autocast)."""
    fn = m1._ss2d_fwd_map_kernel if args.kernel == 'map-fwd' else m1._ss2d_bwd_map_kernel
    hp, wp = (int(v) for v in args.map.split('x'))
    constants = dict(R=args.rank, HAS_D=True, PRE_GIVEN=args.pre_given, BLOCK_C=args.block_c,
                     HP=hp, WP=wp)
    signature = {}
    for name in fn.arg_names:
        if name in constants:
            signature[name] = 'constexpr'
        elif name.endswith('_ptr'):
            signature[name] = '*bf16' if name in BF16_POINTERS else '*fp32'
        else:
            signature[name] = 'i32'
    signature['dtl_ptr'] = '*fp32' if args.pre_given else '*bf16'
    pointers = [name for name in signature if signature[name].startswith('*')]
    return compile_for_sm90(fn, signature, constants, pointers, args.warps)


def compile_for_sm90(fn, signature, constants, divisible, num_warps, maxnreg=None):
    """``fn`` compiled for an H100 target with the ``constants``, arguments ``divisible`` by 16
    (as a launch specialises them); ``maxnreg``: a cap on the registers per thread (ptxas
    spills to the stack what does not fit)."""
    source = ASTSource(
        fn, signature, constexprs={(fn.arg_names.index(k), ): v for k, v in constants.items()},
        attrs={(fn.arg_names.index(k), ): [['tt.divisibility', 16]] for k in divisible})
    return triton.compile(source, target=GPUTarget('cuda', 90, 32),
                          options=dict(num_warps=num_warps, maxnreg=maxnreg))


def run_on_cubin(tool, options, cubin):
    """The stdout of Triton's bundled CUDA binary tool (nvdisasm, cuobjdump) run on ``cubin``."""
    path = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', tool)
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([path, *options, f.name], capture_output=True, text=True,
                              check=True).stdout


def resources(cubin):
    """(registers, stack bytes) per thread, from ``cuobjdump``."""
    out = run_on_cubin('cuobjdump', ['--dump-resource-usage'], cubin)
    return tuple(int(re.search(key + r':(\d+)', out).group(1)) for key in ('REG', 'STACK'))


def compile_kernel(args):
    """The compiled kernel (Triton's CompiledKernel) for the configuration in ``args``."""
    if args.kernel.startswith('map-'):
        return compile_map_kernel(args)
    fn = n1._ss2d_fwd_n1_kernel if args.kernel == 'fwd' else n1._ss2d_bwd_n1_kernel
    # (yo_ptr / dxo_ptr: the kernels from before y / dx in the map's dtype have none)
    pointers = [name for name in (FWD_POINTERS if args.kernel == 'fwd' else BWD_POINTERS)
                if name in fn.arg_names]
    signature = {name: '*bf16' if name in BF16_POINTERS else '*fp32' for name in pointers}
    # dt_low is bf16 for the forward's in-kernel projection, float32 otherwise
    signature['dtl_ptr'] = '*bf16' if args.kernel == 'fwd' and not args.pre_given else '*fp32'
    # the dB / dC rows per image and direction (named NCB before the rows could be shared)
    scalars = ['CH', 'H', 'W', 'L', 'NCH'] + [n for n in ('NCB', 'NSUM') if n in fn.arg_names]
    constants = dict(HAS_D=True, MERGED=True, COLS_T=not args.strided_columns,
                     PRE_GIVEN=args.pre_given, BLOCK_C=args.block_c, BLOCK_L=args.block_l)
    if 'SEGMENTED' in fn.arg_names:  # segmented walks (the default build: one segment)
        scalars += ['NSEG', 'SEG_CH', 'SUM_STRIDE']
        constants.update(SEGMENTED=args.segment_pass != 'none',
                         SUMMARY=args.segment_pass == 'summary')
    if args.kernel == 'fwd':
        constants['SAVE_STATES'] = False
    if 'ATOMIC_SUMS' in fn.arg_names:
        constants['ATOMIC_SUMS'] = args.atomic_sums
    if 'R_UNROLL' in fn.arg_names:  # the kernels before the rank became a constant
        scalars.append('R')
        constants['R_UNROLL'] = 1
    else:
        constants['R'] = args.rank
    signature.update({name: 'i32' for name in scalars})
    signature.update({name: 'constexpr' for name in constants})
    # a launch specialises integer arguments divisible by 16 (and Triton then knows it)
    divisible = [name for name in signature if signature[name].startswith('*')] + \
        (['L'] if args.length % 16 == 0 else []) + ['CH']
    return compile_for_sm90(fn, signature, constants, divisible, args.warps, args.maxnreg)


def disassemble(cubin):
    return run_on_cubin('nvdisasm', ['-c', '-g'], cubin).split('\n')


def chunk_loops(lines, min_length=150):
    """(first, last) lines of the loops (backward branches) longer than ``min_length``, in code
    order: the chunked kernels' chunk loops, one per direction."""
    labels = {m.group(1): i for i, line in enumerate(lines)
              for m in [re.match(r'^(\.L_x_\d+):', line)] if m}
    loops = [(labels[m.group(1)], i) for i, line in enumerate(lines)
             for m in [re.search(r'BRA `\((\.L_x_\d+)\)', line)]
             if m and m.group(1) in labels and labels[m.group(1)] < i]
    long_loops = sorted(loop for loop in loops if loop[1] - loop[0] > min_length)
    if not long_loops:
        raise RuntimeError('no chunk loop found in the disassembly')
    return long_loops


def first_chunk_loop(lines, min_length=150):
    """(first, last) line of the first chunk loop (:func:`chunk_loops`)."""
    return chunk_loops(lines, min_length)[0]


def count(lines, first, last):
    """Opcode counts and counts per (file, line) of the instructions in lines[first:last+1]."""
    opcodes, by_line, where = collections.Counter(), collections.Counter(), None
    for line in lines[first:last + 1]:
        m = re.search(r'File "(.*?)", line (\d+)', line)
        if m:
            where = (os.path.basename(m.group(1)), int(m.group(2)))
            continue
        m = re.search(r'/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)', line)
        if m:
            opcodes[m.group(2)] += 1
            by_line[where] += 1
    return opcodes, by_line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kernel', choices=['fwd', 'bwd', 'map-fwd', 'map-bwd'], default='fwd',
                        help='the chunked kernels, or the whole-map ones (counted whole)')
    parser.add_argument('--map', default='16x16',
                        help='padded map HPxWP of the whole-map kernels (14 x 14 pads to 16x16)')
    parser.add_argument('--block-c', type=int, default=8)
    parser.add_argument('--block-l', type=int, default=64)
    parser.add_argument('--warps', type=int, default=4)
    parser.add_argument('--rank', type=int, default=6)
    parser.add_argument('--pre-given', action='store_true',
                        help='the projection done before the kernel (ranks >= 16)')
    parser.add_argument('--strided-columns', action='store_true',
                        help='column directions walk the map with a stride (maps < 512)')
    parser.add_argument('--length', type=int, default=3136,
                        help='map positions H x W of the launch (3136: 56 x 56): whether L is '
                        'divisible by 16, which decides the alignment Triton can assume')
    parser.add_argument('--segment-pass', choices=['none', 'summary', 'main'], default='none',
                        help='fwd / bwd: the unsegmented build, or a segmented launch\'s '
                        'pre-pass or main pass')
    parser.add_argument('--maxnreg', type=int, default=None,
                        help='cap the registers per thread (the launch option of that name)')
    parser.add_argument('--atomic-sums', action='store_true',
                        help='bwd: dB / dC channel sums by atomics (bwd_atomic_sums)')
    parser.add_argument('--lines', type=int, default=15, help='source lines to list')
    args = parser.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET') == '1':
        raise SystemExit('kernel_sass.py compiles the kernels: unset TRITON_INTERPRET (it is 1, '
                         'which makes them interpreted Python)')
    cubin = compile_kernel(args).asm['cubin']
    lines = disassemble(cubin)
    registers, stack = resources(cubin)
    if args.kernel.startswith('map-'):
        # straight-line code: the whole kernel, all four directions, per padded position
        opcodes, by_line = count(lines, 0, len(lines) - 1)
        total = sum(opcodes.values())
        hp, wp = (int(v) for v in args.map.split('x'))
        per_thread = args.block_c * hp * wp / (32 * args.warps)
        what = (f'{args.kernel} {args.block_c} channels x {args.map}, {args.warps} warps, rank '
                f'{args.rank}: whole kernel {total} instructions, {total / per_thread:.1f} per '
                f'element ({total / per_thread / 4:.1f} per element and direction; '
                f'{per_thread:g} elements per thread)')
    else:
        first, last = first_chunk_loop(lines)
        opcodes, by_line = count(lines, first, last)
        total = sum(opcodes.values())
        per_thread = args.block_c * args.block_l / (32 * args.warps)
        what = (f'{args.kernel} {args.block_c}x{args.block_l}, {args.warps} warps, rank '
                f'{args.rank}: first chunk loop {total} instructions, {total / per_thread:.1f} '
                f'per element ({per_thread:g} elements per thread)')
    print(f'{what}; {registers} registers, {stack} bytes of stack per thread')
    print('opcodes: ' + ', '.join(f'{k} {v}' for k, v in opcodes.most_common(14)))
    if not args.kernel.startswith('map-'):
        # the directions differ: those walked backwards scan their chunks in reverse
        loops = [count(lines, a, b)[0] for a, b in chunk_loops(lines)]
        print('every chunk loop (instructions, shuffles): ' + ', '.join(
            f"{sum(ops.values())} ({ops['SHFL']})" for ops in loops))
    sources = {}
    for (name, number), n in by_line.most_common(args.lines):
        path = os.path.join(os.path.dirname(n1.__file__), name)  # kernels/ holds them all
        if path not in sources:
            sources[path] = open(path).read().split('\n') if os.path.exists(path) else []
        text = sources[path][number - 1].strip() if number <= len(sources[path]) else ''
        print(f'{n:5d}  {name}:{number}  {text[:80]}')
    return total / per_thread


if __name__ == '__main__':
    main()
