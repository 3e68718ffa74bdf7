"""Parameters and FLOPs of a config's model (multiply-adds counted once, as in the VMamba/Swin
tables; the selective scan by the Mamba authors' formula 9 * B * L * D * N, plus its D skip and
the in-kernel dt projection; LayerNorm 5 per element as fvcore counts it).

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--backbone-only]
"""
import argparse

import _common
from mmvmamba.analysis import count_flops


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--backbone-only', action='store_true',
                        help='count the backbone alone (default for detection/segmentation)')
    args = parser.parse_args(argv)
    cfg = _common.load_config(args.config)
    classifier = cfg.model.get('type') == 'ImageClassifier' and not args.backbone_only
    model = (_common.build_plain_classifier(cfg) if classifier else _common.build_backbone(cfg))
    r = count_flops(model, tuple(args.shape))
    what = 'classifier' if classifier else 'backbone'
    print(f'{args.config} ({what}, input {args.shape[0]}x{args.shape[1]})')
    print(f"  params: {r['params'] / 1e6:.2f} M")
    print(f"  FLOPs:  {r['total'] / 1e9:.3f} G (conv/linear {r['conv_linear'] / 1e9:.3f} G, "
          f"selective scan {r['scan'] / 1e9:.3f} G, norms {r['norm'] / 1e9:.3f} G)")
    return r


if __name__ == '__main__':
    main()
