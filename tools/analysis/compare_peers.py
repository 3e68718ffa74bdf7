"""VMamba against the backbones users choose instead (Swin, ConvNeXt), side by side in one
process on one device: images/s of inference and training steps, peak memory, and each model's
ratio to a reference peer.

Every model is a backbone followed by global average pooling and a Linear head (1000 classes).
VMamba comes from our configs; the peers from mmpretrain's registry (``--peers``:
``swin-tiny``, ``convnext-small``, ... as ``<mmpretrain type>-<arch>``) and, where timm is
installed, from timm (``--timm swin_tiny_patch4_window7_224 ...``). The models are measured in
turn, with the same input, protocol and thread count.

    python tools/analysis/compare_peers.py --device cpu --batch 1 8 --threads 2
    python tools/analysis/compare_peers.py configs/vmamba/vmamba-small_8xb128_in1k.py \\
        --peers swin-small convnext-small --device cuda --batch 128 --modes inference train \\
        --amp fp16 --launch eager compile

Prints a markdown table; ``--json FILE`` also writes the rows. Its ``host ms`` column is the
median time until a step's Python returns, before waiting for the GPU: where it nears
``ms/batch`` the step is bound by launching its kernels, not by running them (CUDA graphs or
``torch.compile`` are then the remedy).

``--peer-launch`` times the peers in other launch modes than VMamba, in the same process: a
config's own switch against Swin at its fastest, e.g. ::

    python tools/analysis/compare_peers.py configs/vmamba/vmamba-tiny_8xb128_in1k.py --peers \
        --timm swin_tiny_patch4_window7_224 --device cuda --batch 128 --modes inference train \
        --amp fp16 --launch eager --peer-launch compile-graphs \
        --cfg-options model.backbone.compile.mode=reduce-overhead

The last column compares each row with the reference's fastest launch for the same mode, amp
and batch (``vs best``), the one before with the reference in the row's own launch mode.
"""
import argparse
import importlib.util
import itertools
import json
import os.path as osp
import sys

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import _common  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from mmvmamba.analysis import measure_throughput  # noqa: E402
from mmvmamba.models.utils import compile_model  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'vmamba', 'vmamba-tiny_8xb128_in1k.py')
PEER_TYPES = {'swin': 'SwinTransformer', 'convnext': 'ConvNeXt'}


class PooledClassifier(nn.Module):
    """backbone (last stage) -> global average pool -> Linear, for any backbone returning a
    tuple of maps (or of already pooled vectors, as mmpretrain's ConvNeXt does)."""

    def __init__(self, backbone, channels, num_classes=1000):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        out = self.backbone(x)
        out = out[-1] if isinstance(out, (tuple, list)) else out
        return self.head(out.mean((2, 3)) if out.dim() == 4 else out)


def _last_channels(backbone):
    backbone.eval()  # (some mmpretrain backbones' train() returns None)
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, 224, 224))
    out = out[-1] if isinstance(out, (tuple, list)) else out
    return out.shape[1]


def check_peer_name(name):
    """(family, arch) of a peer's name, ``<family>-<arch>``; ValueError naming it otherwise."""
    family, _, arch = name.partition('-')
    if family not in PEER_TYPES or not arch:
        raise ValueError(f'peer {name!r} is not <family>-<arch> with family in '
                         f'{sorted(PEER_TYPES)} (e.g. swin-tiny, convnext-base)')
    return family, arch


def build_peer(name):
    """``<family>-<arch>`` (family: swin | convnext) from mmpretrain's registry."""
    family, arch = check_peer_name(name)
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    cfg = dict(type=PEER_TYPES[family], arch=arch)
    if family == 'swin':
        cfg.update(img_size=224, out_indices=(3, ))
    # mmpretrain's types, whichever OpenMMLab scope the process set before (mmseg's registry,
    # say, would look for them among its own)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        backbone = MODELS.build(cfg)
    return PooledClassifier(backbone, _last_channels(backbone))


def build_timm(name):
    import timm
    return timm.create_model(name, pretrained=False, num_classes=1000)


def check_peer_packages(args):
    """SystemExit naming the peers asked for whose package (mmpretrain for ``--peers``, timm for
    ``--timm``) is not installed, before any model is built or timed."""
    for flag, names, package in (('--peers', args.peers, 'mmpretrain'),
                                 ('--timm', args.timm, 'timm')):
        if names and importlib.util.find_spec(package) is None:
            raise SystemExit(f'{flag} {" ".join(names)}: {package} is not installed; install it '
                             f'or leave these peers out ({flag} with no names)')


# how the labels of :func:`models_to_compare` name the peers (every other label is a VMamba
# config's), which :func:`launches_of` and :func:`default_reference` tell them apart by
MMPRETRAIN_PEER, TIMM_PEER = 'mmpretrain ', 'timm '
PEER_PREFIXES = (MMPRETRAIN_PEER, TIMM_PEER)


def models_to_compare(args):
    """(label, builder) pairs, VMamba's first (:func:`check_peer_packages` first)."""
    check_peer_packages(args)
    entries = []
    options = _common.options_label(args.cfg_options)
    for path in args.configs:
        cfg = _common.load_config(path, args.cfg_options)
        label = osp.splitext(osp.basename(path))[0].split('_')[0] + options
        entries.append((label, lambda cfg=cfg: _common.build_plain_classifier(cfg)))
    entries += [(MMPRETRAIN_PEER + p, lambda p=p: build_peer(p)) for p in args.peers]
    entries += [(TIMM_PEER + t, lambda t=t: build_timm(t)) for t in args.timm]
    return entries


def launches_of(args, label):
    """The launch modes a model is timed in: ``--launch`` for VMamba, ``--peer-launch`` (when
    given) for the peers of :func:`models_to_compare`."""
    peer_launch = getattr(args, 'peer_launch', None)
    if peer_launch and label.startswith(PEER_PREFIXES):
        return peer_launch
    return args.launch


def default_reference(labels):
    """The model the ratios are taken against when ``--reference`` is not given: the first
    peer (mmpretrain or timm), else the first model."""
    return next((label for label in labels if label.startswith(PEER_PREFIXES)), labels[0])


LAUNCHES = ('eager', 'graph', 'compile', 'compile-graphs')


def _launch(model, launch):
    """The module to measure and the hook to call before each step. ``graph``: CUDA graphs
    captured by :func:`measure_throughput`; ``compile``: ``torch.compile`` (inductor, default
    mode); ``compile-graphs``: ``torch.compile(mode='reduce-overhead')``, inductor's kernels
    replayed from CUDA graphs. Models holding VMamba are compiled through ``compile_model``
    (inductor's layout optimisation off: mmvmamba/models/utils/compile.py)."""
    if launch == 'compile':
        return compile_model(model), None
    if launch == 'compile-graphs':
        return (compile_model(model, mode='reduce-overhead'),
                torch.compiler.cudagraph_mark_step_begin)
    return model, None


def measure_all(args, entries):
    rows = []
    cases = list(itertools.product(args.modes, args.amp, args.batch))
    for label, build in entries:
        for launch in launches_of(args, label):
            # a fresh model per launch mode: capturing training graphs replaces the module's
            # forward (torch.cuda.make_graphed_callables), which a later mode would measure
            model = build()
            params = sum(p.numel() for p in model.parameters())
            run, before_step = _launch(model, launch)  # one wrapper serves every case
            for mode, amp, batch in cases:
                r = measure_throughput(run, batch, tuple(args.shape), args.device, amp=amp,
                                       train=mode == 'train', warmup=args.warmup,
                                       repeats=args.repeats, cuda_graph=launch == 'graph',
                                       before_step=before_step)
                peak = r['peak_bytes'] / 2**30 if r['peak_bytes'] is not None else None
                row = dict(model=label, params=params, launch=launch, mode=mode, amp=amp,
                           batch=batch, images_per_s=r['images_per_s'],
                           ms_per_batch=1e3 * batch / r['images_per_s'],
                           host_ms=1e3 * r['host_s'], peak_gib=peak)
                rows.append(row)
                print(f"{label} {launch} {mode} {amp} batch {batch}: "
                      f"{row['images_per_s']:.1f} img/s, {row['ms_per_batch']:.1f} ms",
                      flush=True)
            del model, run
    return rows


def ratios(rows, reference):
    """Each row's images/s over the reference model's: ``ratio`` in the same
    launch/mode/amp/batch, ``ratio_best`` against the reference's fastest launch for the same
    mode/amp/batch."""
    key = lambda r: (r['launch'], r['mode'], r['amp'], r['batch'])  # noqa: E731
    ref = {key(r): r['images_per_s'] for r in rows if r['model'] == reference}
    best = {}
    for r in rows:
        if r['model'] == reference:
            case = key(r)[1:]
            best[case] = max(best.get(case, 0.0), r['images_per_s'])
    for r in rows:
        base, top = ref.get(key(r)), best.get(key(r)[1:])
        r['ratio'] = r['images_per_s'] / base if base else None
        r['ratio_best'] = r['images_per_s'] / top if top else None
    return rows


def table(rows, reference):
    lines = [f'| model | params | launch | mode | amp | batch | img/s | ms/batch | host ms | '
             f'peak GiB | vs {reference} | vs best |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    show = lambda v: f'{v:.2f}x' if v is not None else '-'  # noqa: E731
    for r in rows:
        peak = f"{r['peak_gib']:.1f}" if r['peak_gib'] is not None else '-'
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['launch']} | {r['mode']} | "
                     f"{r['amp']} | {r['batch']} | {r['images_per_s']:.1f} | "
                     f"{r['ms_per_batch']:.1f} | {r['host_ms']:.1f} | {peak} | "
                     f"{show(r['ratio'])} | {show(r.get('ratio_best'))} |")
    return '\n'.join(lines)


def add_model_arguments(parser, peers):
    """The models to compare (read by :func:`models_to_compare`): VMamba configs, their
    ``--cfg-options``, ``--peers`` (default ``peers``) and ``--timm``."""
    parser.add_argument('configs', nargs='*', default=[DEFAULT_CONFIG],
                        help='VMamba configs (default: VMamba-T)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='overrides of the VMamba configs, e.g. '
                        'model.backbone.recompute_mlp_act=True (shown in the model label)')
    parser.add_argument('--peers', nargs='*', default=list(peers),
                        help='mmpretrain backbones as <family>-<arch>')
    parser.add_argument('--timm', nargs='*', default=[], help='timm model names')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, peers=('swin-tiny', 'convnext-tiny'))
    parser.add_argument('--reference', help='model label the ratios are taken against '
                        '(default: the first peer, else the first model)')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--batch', type=int, nargs='+', default=[1, 8])
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--modes', nargs='+', default=['inference'],
                        choices=['inference', 'train'])
    parser.add_argument('--amp', nargs='+', default=['none'], choices=['none', 'fp16', 'bf16'])
    parser.add_argument('--launch', nargs='+', default=['eager'],
                        choices=LAUNCHES,
                        help='eager; graph: CUDA graphs of the eager kernels; compile: '
                        'torch.compile; compile-graphs: torch.compile(mode="reduce-overhead")')
    parser.add_argument('--peer-launch', nargs='+', choices=LAUNCHES,
                        help='launch modes of the mmpretrain / timm peers (default: --launch)')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--json', help='also write the rows to this file')
    args = parser.parse_args(argv)
    for path in args.configs:
        if not osp.isfile(path):
            parser.error(f'config {path!r} does not exist')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f'torch {torch.__version__}, device {args.device}'
          + (f' ({torch.cuda.get_device_name()})' if args.device.startswith('cuda') else
             f', {torch.get_num_threads()} threads'), flush=True)
    entries = models_to_compare(args)
    labels = [label for label, _ in entries]
    reference = args.reference or default_reference(labels)
    if reference not in labels:
        raise SystemExit(f'--reference {reference!r} is none of {labels}')
    rows = ratios(measure_all(args, entries), reference)
    print(table(rows, reference))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
