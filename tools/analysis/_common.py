"""Helpers shared by the analysis tools: build a config's model or backbone."""
import os.path as osp
import sys

import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
import mmvmamba  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402


def add_model_input_args(parser, batch):
    """The arguments benchmark.py and compare_compiled.py share: the config, and the batch, image
    shape, device and autocast modes (``--amp``, names of ``mmvmamba.analysis.AMP_DTYPES``) of
    the random input they run it on."""
    import torch
    parser.add_argument('config')
    parser.add_argument('--batch', type=int, default=batch)
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', nargs='+', default=['none'], choices=['none', 'fp16', 'bf16'])


def load_config(path, cfg_options=None):
    if not osp.isfile(path):
        raise FileNotFoundError(f'config {path!r} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def options_label(cfg_options):
    """`` KEY=VALUE`` for each of a config's ``--cfg-options`` (appended to its label)."""
    return ''.join(f' {k}={v}' for k, v in (cfg_options or {}).items())


def build_backbone(cfg, **overrides):
    """The config's VMamba backbone (registered in mmengine's root registry: no task library
    needed, so this also runs where only torch, triton and mmengine are installed)."""
    from mmvmamba.registry import MODELS
    backbone = dict(cfg.model.backbone)
    backbone.update(overrides)
    backbone.pop('init_cfg', None)
    return MODELS.build(backbone)


class PlainClassifier(nn.Module):
    """backbone -> global average pool -> Linear: the authors' classifier, without mmpretrain."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features[-1], num_classes)

    def forward(self, x):
        return self.head(self.backbone(x)[-1].mean((2, 3)))


def build_plain_classifier(cfg):
    head = cfg.model.get('head') or {}
    num_classes = head.get('num_classes', 1000) if isinstance(head, dict) else 1000
    return PlainClassifier(build_backbone(cfg, out_indices=(3, )), num_classes)


def progress_printer(label):
    def show(done, total):
        print(f'\r{label}: {done}/{total}', end='\n' if done == total else '', flush=True)
    return show


def load_weights(model, checkpoint):
    """A backbone from our checkpoints (a full model: keys under ``backbone.``) or the authors'."""
    from mmvmamba.models.utils.checkpoint import load_backbone_checkpoint, read_state_dict
    state_dict = read_state_dict(checkpoint)
    prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else None
    load_backbone_checkpoint(model, checkpoint, prefix=prefix, state_dict=state_dict)
