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


def test_compile_model_turns_the_option_on_only_for_models_holding_vmamba(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, 'compile', lambda model, **kw: calls.append(kw) or model)
    backbone = VMamba(dict(dims=8, depths=(1, 1, 1, 1)))
    compile_model(torch.nn.Sequential(backbone, torch.nn.Identity()), mode='reduce-overhead')
    compile_model(torch.nn.Linear(2, 2), mode='reduce-overhead')
    assert calls == [{'options': {'triton.cudagraphs': True, 'layout_optimization': False}},
                     {'mode': 'reduce-overhead'}]
