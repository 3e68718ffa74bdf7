"""``torch.compile`` arguments for graphs that hold VMamba: inductor's layout optimisation off.

Inductor's layout optimisation (chosen per graph by a heuristic over its convolutions; on the
GPU it makes them and their neighbours channels-last) made the first-step gradients of a
compiled VMamba wrong under fp16 autocast on the H200 (torch 2.11): up to 17% from the float32
ones (22% with CUDA graphs) below the last stage, where eager fp16 is within 0.7% (median 0.13%)
(docs/notes/2026-12-02.md). With it off the same model is right; so is each of its modules
compiled alone with it forced on, and so were float32 graphs. Every compile of VMamba in this
repository therefore goes through :func:`vmamba_compile_kwargs`, and :func:`compile_model`
offers the same to users who compile a whole classifier, detector or segmentor.
"""
import inspect

import torch
import torch.nn as nn

__all__ = ['vmamba_compile_kwargs', 'compile_model']

# the keyword arguments torch.compile takes besides the model
COMPILE_ARGUMENTS = frozenset(inspect.signature(torch.compile).parameters) - {'model'}


def vmamba_compile_kwargs(**cfg) -> dict:
    """``cfg`` (torch.compile's keyword arguments) with ``layout_optimization=False`` among
    inductor's options. Inductor takes ``mode`` or ``options``, not both: a ``mode`` is
    turned into its options (``torch._inductor.list_mode_options``) so that the two can be
    merged; an option the caller sets wins. Other backends get ``cfg`` unchanged. A key
    torch.compile does not take, or an unknown ``mode``, is a ValueError naming it."""
    unknown = sorted(set(cfg) - COMPILE_ARGUMENTS)
    if unknown:
        raise ValueError(f'unknown torch.compile argument(s) {unknown}; torch.compile takes '
                         f'{sorted(COMPILE_ARGUMENTS)}')
    cfg = dict(cfg)
    if cfg.get('backend', 'inductor') != 'inductor':
        return cfg
    mode = cfg.pop('mode', None)
    options = dict(cfg.pop('options', None) or {})
    if mode is not None:
        if mode not in torch._inductor.list_mode_options():
            raise ValueError(f'torch.compile mode must be one of '
                             f'{sorted(torch._inductor.list_mode_options())}, got {mode!r}')
        options = {**torch._inductor.list_mode_options(mode, cfg.get('dynamic')), **options}
    options.setdefault('layout_optimization', False)
    cfg['options'] = options
    return cfg


def compile_model(model: nn.Module, **cfg) -> nn.Module:
    """``torch.compile(model, **cfg)``, through :func:`vmamba_compile_kwargs` when ``model``
    holds a VMamba backbone (other models are compiled as asked)."""
    from ..backbones.vmamba import VMamba
    if any(isinstance(m, VMamba) for m in model.modules()):
        cfg = vmamba_compile_kwargs(**cfg)
    return torch.compile(model, **cfg)
