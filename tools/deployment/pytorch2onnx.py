"""Export a config's model to ONNX and check the file with onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG [CHECKPOINT] --shape H W --out FILE
        [--batch N] [--opset 18] [--eval] [--benchmark]

What is exported:
  * classification configs (mmpretrain): the classifier, a normalised image batch
    (N, 3, H, W) in, logits (N, classes) out;
  * detection / segmentation configs (mmdet, mmseg): the VMamba backbone, a normalised image
    batch in, its multi-scale feature maps out (``feat0`` ... at strides 4, 8, 16, 32): what
    deployment toolkits graft onto their heads.
The input is normalised as the config's data preprocessor does it; its mean, std and channel
order are written into the file's metadata (``mean``, ``std``, ``to_rgb``).

The selective scan is exported in the torch form that solves it along the map's rows and columns
(standard ONNX operators, no custom op), unrolled for the map sizes of ``--shape``: the file is
static in its spatial size and batch (``--dynamic`` is refused with that explanation; export one
file per input size).

After export the file is run in onnxruntime on a random input and compared with PyTorch: the
largest absolute difference and its size relative to the largest output are printed, and the
tool fails when the relative difference exceeds ``--rtol`` (1e-4). ``--eval`` (classification)
also evaluates the config's test set through onnxruntime and prints top-1; ``--benchmark``
times onnxruntime against PyTorch eager on the CPU.
"""
import argparse
import json
import os.path as osp
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
import mmvmamba  # noqa: E402,F401  (compat fixes and registration before any mm* import)
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402


class _Classifier(nn.Module):
    """A classifier's logits from a normalised batch (mmpretrain's ``mode='tensor'``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x, mode='tensor')


class _Backbone(nn.Module):
    """The backbone's feature maps as a tuple."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return tuple(self.backbone(x))


def load_model(config, checkpoint=None, cfg_options=None):
    """(config, full model on CPU in eval mode). The checkpoint is loaded strictly: a missing or
    unexpected key is an error that lists them."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    if scope not in ('mmpretrain', 'mmdet', 'mmseg'):
        raise ValueError(f'config {config} has default_scope={scope!r}; expected mmpretrain, '
                         'mmdet or mmseg')
    init_default_scope(scope)
    from mmengine.registry import MODELS
    cfg.model.backbone.init_cfg = None  # weights come from CHECKPOINT (or stay random)
    model = MODELS.build(cfg.model)
    if checkpoint:
        from mmengine.runner import load_checkpoint
        if not osp.isfile(checkpoint):
            raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist')
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return cfg, model.eval()


def exportable(cfg, model):
    """(module to export, output names)."""
    if cfg.default_scope == 'mmpretrain':
        return _Classifier(model), ['logits']
    backbone = model.backbone
    return _Backbone(backbone), [f'feat{i}' for i in backbone.out_indices]


def normalisation(cfg):
    pre = cfg.get('data_preprocessor') or cfg.model.get('data_preprocessor') or {}
    mean, std = pre.get('mean'), pre.get('std')
    to_rgb = bool(pre.get('to_rgb', pre.get('bgr_to_rgb', False)))
    return (list(mean) if mean is not None else None, list(std) if std is not None else None,
            to_rgb)


def export(module, shape, batch, out, output_names, opset=18, metadata=None):
    """Export ``module`` for a (batch, 3, H, W) input; returns the example input."""
    import onnx
    x = torch.randn(batch, 3, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.onnx.export(module, (x, ), out, input_names=['input'], output_names=output_names,
                          opset_version=opset, dynamo=True, external_data=False)
    if metadata:
        proto = onnx.load(out)
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(value)
        onnx.save(proto, out)
    return x


def ort_session(path, threads=None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def verify(module, path, x, rtol=1e-4):
    """Largest absolute difference between onnxruntime and PyTorch over all outputs, and that
    difference relative to the largest PyTorch output; raises above ``rtol``."""
    sess = ort_session(path)
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        refs = module(x)
    refs = refs if isinstance(refs, tuple) else (refs, )
    if len(outs) != len(refs):
        raise RuntimeError(f'{path} has {len(outs)} outputs, PyTorch gives {len(refs)}')
    worst_abs = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, refs))
    scale = max(float(np.abs(r.numpy()).max()) for r in refs)
    rel = worst_abs / max(scale, 1e-30)
    if rel > rtol:
        raise RuntimeError(f'onnxruntime differs from PyTorch by {worst_abs:.3g} (relative '
                           f'{rel:.3g} > {rtol:g}): {path} is not faithful')
    return worst_abs, rel


def evaluate_classification(cfg, path):
    """Top-1 (%) of the ONNX classifier on the config's test set, with the config's pipeline
    and the data preprocessor's normalisation done in numpy."""
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(cfg.test_dataloader)
    mean, std, to_rgb = normalisation(cfg)
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    batch = sess.get_inputs()[0].shape[0]
    correct = total = 0
    for data in loader:
        for image, sample in zip(data['inputs'], data['data_samples']):
            img = image.float().numpy()
            if to_rgb:
                img = img[::-1]
            if mean is not None:
                img = (img - np.array(mean, np.float32)[:, None, None]) / np.array(
                    std, np.float32)[:, None, None]
            logits = sess.run(None, {name: np.repeat(img[None], batch, 0).astype(np.float32)})
            correct += int(logits[0][0].argmax() == int(sample.gt_label))
            total += 1
    return 100.0 * correct / total, total


def benchmark(module, path, x, repeats=5, threads=None):
    """Median ms per batch: onnxruntime and PyTorch eager, same input and thread count."""
    sess = ort_session(path, threads)
    feed = {sess.get_inputs()[0].name: x.numpy()}

    def median(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    with torch.no_grad():
        torch_ms = median(lambda: module(x))
    return median(lambda: sess.run(None, feed)), torch_ms


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint', nargs='?', help='weights (default: random)')
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'))
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--opset', type=int, default=18)
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic spatial size (not supported: see the description)')
    parser.add_argument('--rtol', type=float, default=1e-4)
    parser.add_argument('--eval', action='store_true',
                        help='classification: top-1 on the config\'s test set in onnxruntime')
    parser.add_argument('--benchmark', action='store_true',
                        help='time onnxruntime against PyTorch eager on the CPU')
    parser.add_argument('--threads', type=int, help='CPU threads for both (default: torch\'s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if args.dynamic:
        parser.error('--dynamic: the exported VMamba solves its scan with loops unrolled for one '
                     'map size, so the ONNX file is static in H and W; export one file per input '
                     'size with --shape H W')
    if min(args.shape) < 1 or args.batch < 1:
        parser.error(f'--shape and --batch must be positive, got {args.shape} and {args.batch}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, model = load_model(args.config, args.checkpoint, args.cfg_options)
    module, names = exportable(cfg, model)
    mean, std, to_rgb = normalisation(cfg)
    start = time.time()
    x = export(module, tuple(args.shape), args.batch, args.out, names, args.opset,
               dict(mean=mean, std=std, to_rgb=to_rgb, outputs=names, config=args.config))
    print(f'exported {args.out} ({osp.getsize(args.out) / 2**20:.1f} MiB) in '
          f'{time.time() - start:.0f} s: input (batch {args.batch}, 3, {args.shape[0]}, '
          f'{args.shape[1]}), outputs {names}')
    worst_abs, rel = verify(module, args.out, x, args.rtol)
    print(f'onnxruntime vs PyTorch: max abs difference {worst_abs:.3g}, relative {rel:.3g} '
          f'(bound {args.rtol:g})')
    result = dict(out=args.out, max_abs_diff=worst_abs, rel_diff=rel)
    if args.eval:
        if cfg.default_scope != 'mmpretrain':
            raise SystemExit('--eval evaluates classifiers; this config is '
                             f'{cfg.default_scope}')
        top1, count = evaluate_classification(cfg, args.out)
        print(f'onnxruntime top-1 on the test set: {top1:.2f}% ({count} images)')
        result.update(top1=top1, images=count)
    if args.benchmark:
        ort_ms, torch_ms = benchmark(module, args.out, x, threads=args.threads)
        print(f'CPU latency at batch {args.batch}, {torch.get_num_threads()} threads: '
              f'onnxruntime {ort_ms:.1f} ms, PyTorch eager {torch_ms:.1f} ms')
        result.update(onnxruntime_ms=ort_ms, torch_ms=torch_ms)
    return result


if __name__ == '__main__':
    main()
