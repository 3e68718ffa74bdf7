import pytest
import torch

from mmvmamba.models import VMamba
from mmvmamba.models.utils import compile_model, vmamba_compile_kwargs


def test_layout_optimisation_is_turned_off_and_a_mode_becomes_options():
    assert vmamba_compile_kwargs() == {'options': {'layout_optimization': False}}
    got = vmamba_compile_kwargs(mode='reduce-overhead', dynamic=False)
    assert got == {'dynamic': False,
                   'options': {'triton.cudagraphs': True, 'layout_optimization': False}}
    # inductor refuses mode and options together: the mode's options are merged with the caller's
    got = vmamba_compile_kwargs(mode='max-autotune-no-cudagraphs',
                                options={'coordinate_descent_tuning': False})
    assert got['options'] == {'max_autotune': True, 'coordinate_descent_tuning': False,
                              'layout_optimization': False}
    assert 'mode' not in got


def test_an_explicit_layout_option_and_other_backends_are_left_alone():
    assert vmamba_compile_kwargs(options={'layout_optimization': True}) == {
        'options': {'layout_optimization': True}}
    assert vmamba_compile_kwargs(backend='aot_eager', mode='default') == {
        'backend': 'aot_eager', 'mode': 'default'}


def test_an_unknown_mode_is_named():
    with pytest.raises(ValueError, match="'fastest'"):
        vmamba_compile_kwargs(mode='fastest')


def test_an_unknown_compile_argument_is_named_when_the_backbone_is_built():
    with pytest.raises(ValueError, match=r"\['mood'\].*'mode'"):
        vmamba_compile_kwargs(mood='reduce-overhead')
    # from a config (model.backbone.compile.mood=...): refused at build, not at the first forward
    with pytest.raises(ValueError, match="'mood'"):
        VMamba(dict(dims=8, depths=(1, 1, 1, 1)), compile=dict(mood='reduce-overhead'))
    with pytest.raises(ValueError, match="'fastest'"):
        VMamba(dict(dims=8, depths=(1, 1, 1, 1)), compile=dict(mode='fastest'))
    VMamba(dict(dims=8, depths=(1, 1, 1, 1)), compile=dict(mode='reduce-overhead', dynamic=False))


def test_compile_model_turns_the_option_on_only_for_models_holding_vmamba(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, 'compile', lambda model, **kw: calls.append(kw) or model)
    backbone = VMamba(dict(dims=8, depths=(1, 1, 1, 1)))
    compile_model(torch.nn.Sequential(backbone, torch.nn.Identity()), mode='reduce-overhead')
    compile_model(torch.nn.Linear(2, 2), mode='reduce-overhead')
    assert calls == [{'options': {'triton.cudagraphs': True, 'layout_optimization': False}},
                     {'mode': 'reduce-overhead'}]


@pytest.mark.parametrize('value, expected', [
    ('True', {'options': {'layout_optimization': False}}),
    ({'mode': 'reduce-overhead'},
     {'options': {'triton.cudagraphs': True, 'layout_optimization': False}}),
])
def test_mmengine_compile_switch_of_a_vmamba_config_gets_the_option(value, expected, tmp_path):
    # `tools/train.py CONFIG --cfg-options compile=True`: mmengine's runner compiles the whole
    # train step with cfg.compile; for a VMamba model that must not use layout optimisation
    import os.path as osp
    import sys
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    sys.path.insert(0, osp.join(root, 'tools'))
    from mmengine.config import Config
    from train import build_config, parse_args
    config = osp.join(root, 'configs', 'vmamba', 'vmamba-nano_1xb32_digits.py')
    if isinstance(value, dict):
        options = [f'compile.{k}={v}' for k, v in value.items()]
    else:
        options = [f'compile={value}']
    cfg = build_config(parse_args([config, '--work-dir', str(tmp_path), '--cfg-options',
                                   *options]))
    assert cfg.compile == expected
    cfg.dump(str(tmp_path / 'dumped.py'))  # what the runner writes to the work dir
    assert Config.fromfile(str(tmp_path / 'dumped.py')).compile == expected
    # another backbone's compile switch is left as mmengine takes it
    other = build_config(parse_args([config, '--work-dir', str(tmp_path), '--cfg-options',
                                     'model.backbone.type=ResNet', *options]))
    assert other.compile == (True if value == 'True' else value)
