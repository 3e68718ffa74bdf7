"""Weight decay per parameter, as each config's optimizer builds it: the ImageNet, COCO and ADE20K
configs follow the authors' runs, the embedded digits configs Mamba's rule (one shared fragment,
configs/_base_/schedules/mamba_no_decay.py)."""
import glob
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASK_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs/mask_rcnn/*_coco.py')) +
                      glob.glob(osp.join(ROOT, 'configs/upernet/*_ade20k-512x512.py')))
DIGITS = {'mmpretrain': 'configs/vmamba/vmamba-nano_1xb32_digits.py',
          'mmdet': 'configs/mask_rcnn/mask-rcnn_vmamba-nano_fpn_digits.py',
          'mmseg': 'configs/upernet/upernet_vmamba-nano_digits-96x96.py'}


def backbone_decay(path, scope):
    """{backbone parameter name: (weight decay its optimizer group gets, parameter)}."""
    import mmvmamba  # noqa: F401
    cfg = Config.fromfile(osp.join(ROOT, path))
    models = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    with DefaultScope.overwrite_default_scope(scope):
        model = models.build(cfg.model)
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {id(p): g['weight_decay'] for g in optim.optimizer.param_groups for p in g['params']}
    return ({n: (decay[id(p)], p) for n, p in model.backbone.named_parameters()},
            cfg.optim_wrapper.optimizer.weight_decay)


def test_imagenet_recipe_decays_as_the_authors_code():
    # every parameter with ndim >= 2 decayed except module biases: A_logs and dt_projs_bias too
    groups, base = backbone_decay('configs/vmamba/vmamba-tiny_8xb128_in1k.py', 'mmpretrain')
    for name, (decay, p) in groups.items():
        spared = p.dim() == 1 or name.split('.')[-1] == 'bias'
        assert decay == (0.0 if spared else base), name
    assert groups['layers.0.blocks.0.op.A_logs'][0] == base
    assert groups['layers.0.blocks.0.op.dt_projs_bias'][0] == base


@pytest.mark.parametrize('scope', sorted(DIGITS))
def test_digits_configs_use_mambas_rule(scope):
    groups, base = backbone_decay(DIGITS[scope], scope)
    for name, (decay, p) in groups.items():
        spared = (p.dim() == 1 or name.split('.')[-1] in ('bias', 'A_logs', 'Ds'))
        assert decay == (0.0 if spared else base), name
    assert any(decay == base for decay, _ in groups.values())


@pytest.mark.parametrize('path', TASK_CONFIGS, ids=osp.basename)
def test_coco_and_ade20k_recipes_keep_the_swin_rule(path):
    # the authors' detection / segmentation runs inherit mmdet's / mmseg's Swin recipes: no
    # weight decay only on parameters whose name contains 'norm'
    paramwise = Config.fromfile(path).optim_wrapper.paramwise_cfg
    assert paramwise.custom_keys['norm'] == dict(decay_mult=0.0)
    assert not {'bias_decay_mult', 'flat_decay_mult', 'norm_decay_mult'} & set(paramwise)
    assert not {'.A_logs', '.Ds'} & set(paramwise.custom_keys)
