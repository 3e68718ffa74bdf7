"""Loading the authors' released VMamba checkpoints (and our own) into the backbone.

Our backbone uses the authors' parameter names (``patch_embed.N``, ``layers.i.blocks.j.op.*``,
``layers.i.downsample.N``, ``outnorm{i}``), so the final models' weights load by name. What differs:
their classifier (``classifier.norm`` is our ``outnorm3``; ``classifier.head`` is mmpretrain's
``head.fc``), and the v0 releases' older names, renamed here as the authors' own loader does.
"""
import os
import re

import torch
from mmengine.logging import MMLogger

__all__ = ['convert_vmamba_checkpoint', 'load_backbone_checkpoint', 'read_state_dict']

# v0 releases: (pattern, replacement) applied in order
_V0_RENAMES = [
    (r'^patch_embed\.proj\.', 'patch_embed.0.'),
    (r'^patch_embed\.norm\.', 'patch_embed.2.'),
    (r'^(layers\.\d+\.blocks\.\d+)\.ln_1\.', r'\1.norm.'),
    (r'^(layers\.\d+\.blocks\.\d+)\.self_attention\.', r'\1.op.'),
    (r'^norm\.', 'classifier.norm.'),
    (r'^head\.', 'classifier.head.'),
]


def convert_vmamba_checkpoint(state_dict, last_stage=3):
    """Authors' layout (final or v0) -> (backbone state dict, classification head state dict).

    The head dict uses mmpretrain's LinearClsHead names (``fc.weight``, ``fc.bias``)."""
    backbone, head = {}, {}
    for key, value in state_dict.items():
        for pattern, repl in _V0_RENAMES:
            key = re.sub(pattern, repl, key)
        if key.startswith('classifier.norm.'):
            backbone[key.replace('classifier.norm.', f'outnorm{last_stage}.')] = value
        elif key.startswith('classifier.head.'):
            head[key.replace('classifier.head.', 'fc.')] = value
        else:
            backbone[key] = value
    return backbone, head


def read_state_dict(filename):
    """Read a checkpoint file with ``weights_only=True``; return its state dict.

    Accepts a bare state dict or one under ``state_dict`` (mmengine) or ``model`` (the authors')."""
    if not os.path.isfile(filename):
        raise FileNotFoundError(f'checkpoint file {filename!r} does not exist')
    try:
        ckpt = torch.load(filename, map_location='cpu', weights_only=True)
    except Exception as err:  # corrupt, truncated, or not a torch file
        raise RuntimeError(f'could not read checkpoint {filename!r} ({type(err).__name__}: '
                           f'{err}); expected a file written by torch.save') from err
    if isinstance(ckpt, dict):
        for key in ('state_dict', 'model'):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not ckpt or not all(
            isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f'checkpoint {filename!r} holds no state dict of tensors (looked at the '
                         "top level and under 'state_dict' and 'model')")
    return ckpt


def _is_authors_layout(state_dict):
    return any(k.startswith(('classifier.', 'patch_embed.proj.')) or '.self_attention.' in k
               or k in ('norm.weight', 'head.weight') for k in state_dict)


def load_backbone_checkpoint(model, filename, prefix=None, logger=None, state_dict=None):
    """Load ``filename`` into ``model`` (a VMamba backbone): strict about shapes, reports missing
    and unexpected keys, refuses a file that matches nothing. ``state_dict``: the file's contents
    when the caller has already read them with :func:`read_state_dict`."""
    logger = logger or MMLogger.get_current_instance()
    if state_dict is None:
        state_dict = read_state_dict(filename)
    if prefix:
        prefix = prefix if prefix.endswith('.') else prefix + '.'
        stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not stripped:
            sample = ', '.join(list(state_dict)[:5])
            raise ValueError(f'no key of checkpoint {filename!r} starts with prefix {prefix!r} '
                             f'(first keys: {sample})')
        state_dict = stripped
    if _is_authors_layout(state_dict):
        state_dict, _ = convert_vmamba_checkpoint(state_dict)
    own = model.state_dict()
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f'checkpoint {filename!r} does not fit the model (wrong arch?): ' +
                         '; '.join(mismatched[:10]) +
                         (f' ... and {len(mismatched) - 10} more' if len(mismatched) > 10 else ''))
    if not any(k in own for k in state_dict):
        raise ValueError(f'no parameter of checkpoint {filename!r} matches the model')
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys:
        logger.warning(f'missing keys in {filename}: {", ".join(result.missing_keys)}')
    if result.unexpected_keys:
        logger.warning(f'unexpected keys in {filename}: {", ".join(result.unexpected_keys)}')
    logger.info(f'loaded {len(state_dict) - len(result.unexpected_keys)} tensors from {filename}')
    return result
