"""Eager against ``torch.compile`` (the backbone's ``compile`` option) for CPU inference, in one
process: both backbones built once from the config with the same weights, timed in alternating
rounds (median of ``--repeats`` forwards each, after three), so the CPU machine's drift between
processes does not enter the comparison. Prints each round's ms per batch and the largest output
difference.

    python tools/kernel_dev/experiments/cpu_compiled_inference.py [CONFIG] --batch 1 8 \
        --threads 2 --rounds 5
"""
import argparse
import statistics

import torch
from mmengine.config import Config

from mmvmamba.models import VMamba
from stem_conv import median_ms


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('config', nargs='?', default='configs/vmamba/vmamba-tiny_8xb128_in1k.py')
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
    models = {'eager': VMamba(**backbone).eval()}
    models['compiled'] = VMamba(**{**backbone, 'compile': True}).eval()
    models['compiled'].load_state_dict(models['eager'].state_dict())
    print(f'torch {torch.__version__}, {args.threads} threads, {args.config}')
    for batch in args.batch:
        x = torch.randn(batch, 3, args.size, args.size)
        with torch.no_grad():
            outs = [models[name](x) for name in models]  # the compiled one compiles here
            diff = max((a - b).abs().max().item() for a, b in zip(*outs))
            rounds = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, model in models.items():
                    rounds[name].append(median_ms(lambda: model(x), args.repeats, 'cpu'))
        print(f'batch {batch}: largest output difference {diff:.1e}')
        for name, times in rounds.items():
            print(f'  {name:9s} ms per batch, by round: ' + ' '.join(f'{t:.1f}' for t in times)
                  + f' (median {statistics.median(times):.1f})', flush=True)


if __name__ == '__main__':
    main()
