"""Two forms of one VMamba backbone for CPU inference, in one process: built once from the config
with the same weights, timed in alternating rounds (median of ``--repeats`` forwards each, after
three), so the CPU machine's drift between processes does not enter the comparison. Prints each
round's ms per batch and the largest output difference. ``--variant``: what the model as built
is compared with:

* ``compiled``: the backbone's ``compile`` option (``torch.compile``);
* ``channel-first-weights``: the dense convolutions' weights channel-first (the layout before
  the CPU's channels-last weights; ``VMamba._set_conv_weight_layout``);
* ``channel-first-scan-input``: each SS2D hands the scan a contiguous channel-first map, copied
  from the convolution's channels-last output (what it did before the CPU's C scan took the map
  as it is; ``SS2D._scan_input``).

    python tools/kernel_dev/experiments/cpu_inference_ab.py [CONFIG] --variant compiled \
        --batch 1 8 --threads 2 --rounds 5
"""
import argparse
import copy
import statistics

import torch
from mmengine.config import Config

from mmvmamba.models import VMamba
from mmvmamba.models.ss2d import SS2D
from mmvmamba.models.utils.layers import channel_first
from stem_conv import median_ms

VARIANTS = ('compiled', 'channel-first-weights', 'channel-first-scan-input')


def _channel_first_scan_input(scan_input):
    def call(x, backend):
        x, z = scan_input(x, backend)
        return channel_first(x), z
    return call


def variant(model, backbone, name):
    """The model to compare with ``model`` (eager, as built)."""
    if name == 'compiled':
        other = VMamba(**{**backbone, 'compile': True}).eval()
        other.load_state_dict(model.state_dict())
        return other
    other = copy.deepcopy(model)
    if name == 'channel-first-scan-input':
        for m in other.modules():
            if isinstance(m, SS2D):
                m._scan_input = _channel_first_scan_input(m._scan_input)
    elif name == 'channel-first-weights':
        for m in other.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.data = m.weight.data.contiguous()
    else:
        raise ValueError(f'variant must be one of {VARIANTS}, got {name!r}')
    return other


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('config', nargs='?', default='configs/vmamba/vmamba-tiny_8xb128_in1k.py')
    parser.add_argument('--variant', default='compiled', choices=VARIANTS)
    parser.add_argument('--batch', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--size', type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = dict(Config.fromfile(args.config).model.backbone)
    if backbone.pop('type') != 'VMamba':
        raise SystemExit(f'{args.config}: its backbone is not VMamba')
    torch.manual_seed(0)
    model = VMamba(**backbone).eval()
    models = {'eager': model, args.variant: variant(model, backbone, args.variant)}
    print(f'torch {torch.__version__}, {args.threads} threads, {args.config}')
    for batch in args.batch:
        x = torch.randn(batch, 3, args.size, args.size)
        with torch.no_grad():
            outs = [m(x) for m in models.values()]  # a compiled one compiles here
            diff = max((a - b).abs().max().item() for a, b in zip(*outs))
            rounds = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, m in models.items():
                    rounds[name].append(median_ms(lambda: m(x), args.repeats, 'cpu'))
        print(f'batch {batch}: largest output difference {diff:.1e}')
        for name, times in rounds.items():
            print(f'  {name:21s} ms per batch, by round: ' + ' '.join(f'{t:.1f}' for t in times)
                  + f' (median {statistics.median(times):.1f})', flush=True)


if __name__ == '__main__':
    main()
