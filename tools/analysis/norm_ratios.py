"""Whether ``memory_efficient_norm`` suits a checkpoint: |bias| / |weight| of the norms it acts on.

``model.backbone.memory_efficient_norm=True`` makes the norms that feed linear layers (each
block's ``norm`` and ``norm2`` and the SS2D ``out_norm``) recover their normalised input from
their half-precision output, (y - bias) / weight, so a channel's gradients lose accuracy as its
|bias| / |weight| grows (``tools/kernel_dev/norm_from_output_error.py`` measures how much:
about 1e-3 of the largest gradient at a ratio of 5, 5e-3 at 20, 2e-2 at 100, against 3e-4 for the
plain norm). This reads a checkpoint (ours, mmengine's or the authors' layout) and prints, per
such norm, its largest ratio, then the largest overall.

    python tools/analysis/norm_ratios.py CHECKPOINT [--prefix backbone.] [--limit 5] [--top 10]

Exit status 1 when some channel exceeds ``--limit``.
"""
import argparse
import re
import sys

import _common  # noqa: F401  (mmvmamba from the checkout)
from mmvmamba.models.utils.checkpoint import (_is_authors_layout, convert_vmamba_checkpoint,
                                              read_state_dict)

# the norms memory_efficient_norm acts on (those that feed a linear layer)
NORM = re.compile(r'(?:^|\.)layers\.\d+\.blocks\.\d+\.(?:norm|norm2|op\.out_norm)$')


def norm_ratios(state_dict, prefix=None):
    """{norm name: per-channel |bias| / |weight| (float64)} for the norms of ``state_dict`` that
    memory_efficient_norm acts on. ``prefix`` (e.g. ``backbone.``) is stripped first; None: the
    backbone prefix of a whole detector / classifier when there is one."""
    if prefix is None:
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else ''
    if prefix:
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if _is_authors_layout(state_dict):
        state_dict = convert_vmamba_checkpoint(state_dict)[0]
    ratios = {}
    for key, weight in state_dict.items():
        name = key[:-len('.weight')]
        if key.endswith('.weight') and NORM.search(name) and name + '.bias' in state_dict:
            weight = weight.double().abs().clamp_min(1e-12)
            ratios[name] = state_dict[name + '.bias'].double().abs() / weight
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint')
    parser.add_argument('--prefix', help='of the backbone keys (default: backbone. if present)')
    parser.add_argument('--limit', type=float, default=5.0,
                        help='largest |bias| / |weight| taken as safe (exit status 1 above)')
    parser.add_argument('--top', type=int, default=10, help='norms to list, largest ratio first')
    args = parser.parse_args(argv)
    ratios = norm_ratios(read_state_dict(args.checkpoint), args.prefix)
    if not ratios:
        sys.exit(f'no norm of a VSS block (layers.I.blocks.J.norm / norm2 / op.out_norm) in '
                 f'{args.checkpoint!r}; a VMamba backbone checkpoint was expected')
    worst = sorted(((r.max().item(), name, int((r > args.limit).sum())) for name, r in
                    ratios.items()), reverse=True)
    print(f'{len(ratios)} norms; |bias| / |weight| per channel, largest first:')
    print('| norm | largest ratio | channels above the limit |')
    print('|---|---|---|')
    for largest, name, above in worst[:args.top]:
        print(f'| {name} | {largest:.3g} | {above} |')
    largest, name, _ = worst[0]
    above = sum(count for _, _, count in worst)
    if above:
        print(f'{above} channels above {args.limit:g} (largest {largest:.3g}, {name}): '
              'memory_efficient_norm would add noticeable gradient error; leave it off')
        return 1
    print(f'every channel at or below {args.limit:g} (largest {largest:.3g}): '
          'memory_efficient_norm is safe for this checkpoint')
    return 0


if __name__ == '__main__':
    sys.exit(main())
