"""VMamba backbone (final and v0 architectures) for mmpretrain, mmdet and mmseg."""
from copy import deepcopy
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_

from mmvmamba.registry import MODELS

from ..embed import PatchMerging2d, conv_downsample, conv_stem, patchify_stem
from ..utils.checkpoint import load_backbone_checkpoint
from ..utils.compile import vmamba_compile_kwargs
from ..utils.layers import LayerNorm2d
from ..utils.recompute import run_recomputed
from ..vss_block import VSSBlock

_FINAL = dict(d_state=1, mlp_ratio=4.0, conv_bias=False, gate=False, stem='conv',
              downsample='conv')
_V0 = dict(d_state=16, ssm_ratio=2.0, mlp_ratio=0.0, conv_bias=True, gate=True, stem='patchify',
           downsample='merging')


class VMambaStage(nn.Module):
    """``blocks`` then ``downsample`` (the authors' layout: the stage's output feature is taken
    before its downsample)."""

    def __init__(self, blocks, downsample):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample


@MODELS.register_module()
class VMamba(BaseModule):
    """VMamba: Visual State Space Model (Liu et al., NeurIPS 2024).

    Args:
        arch (str | dict): 'tiny', 'small', 'base' (final models) or 'v0-tiny', 'v0-small',
            'v0-base' (first version); or a dict with keys ``dims`` (int or 4 ints), ``depths``,
            ``d_state``, ``ssm_ratio``, ``mlp_ratio``, ``conv_bias``, ``gate``, ``stem``
            ('conv' | 'patchify'), ``downsample`` ('conv' | 'merging') and ``drop_path_rate``.
            Default: 'tiny'.
        in_channels (int): input image channels. Default: 3.
        out_indices (Sequence[int]): stages whose outputs are returned (strides 4, 8, 16, 32).
            Default: (3, ).
        norm_outputs (bool): apply a LayerNorm (``outnorm{i}``) to each returned stage; for
            classification ``outnorm3`` is the final norm. Default: True.
        frozen_stages (int): -1 freezes nothing; 0 freezes the stem; i > 0 also freezes stages
            0..i-1 (and their output norms). Default: -1.
        drop_path_rate (float, optional): stochastic depth, linear over blocks; None uses the
            arch's value. Default: None.
        with_cp (bool): activation checkpointing per block. Default: False.
        recompute_mlp_act (bool): the blocks' MLPs keep only fc1's output for the backward and
            recompute the GELU there: less activation memory (VMamba-T at batch 128: about
            1.5 GiB, 4 of every ~20 bytes a block holds per pixel and channel) for one
            elementwise pass per block in the backward. Default: False.
        recompute_stem (bool): while training, the stem keeps only the image for the backward
            and recomputes its maps there (activation checkpointing of the stem, eagerly and
            under ``torch.compile``): its half-resolution map (C / 2 channels) and what follows
            it are not held between forward and backward. VMamba-T at 224 x 224 keeps ~5 MiB per
            image less eagerly, ~3 MiB compiled (0.6 / 0.4 GiB at batch 128, counted on the
            CPU: docs/notes/2026-12-06.md) for one more stem forward per step. Default: False.
        memory_efficient_norm (bool): the LayerNorms whose output feeds a linear layer (the
            blocks' two norms and the SS2D output norm) keep that output, which the linear
            layer holds anyway, instead of their input for the backward (on the Triton path and
            under ``torch.compile``, see :class:`LayerNorm2d`): VMamba-T at batch 128, fp16,
            eager, peaks at 7.2 GiB instead of 9.5 (H200). The gradients lose accuracy as a
            norm's |bias| / |weight| grows (README). Default: False.
        recompute_ssm_input (bool): while training, each SS2D's in_proj -> depthwise conv ->
            SiLU runs under activation checkpointing (see :class:`SS2D`, ``recompute_input``):
            two d_inner-wide maps per block (the conv's input and output) are not held between
            forward and backward, for one more in_proj GEMM, conv and SiLU per block in the
            backward; under ``torch.compile`` a third, the scan's input, is recomputed too.
            Most useful at ssm_ratio 2 (S, B), where those maps are twice the block's width
            (docs/notes/2026-12-06.md). Default: False.
        scan_backend (str, optional): 'auto' | 'triton' | 'torch' for the selective scan and
            the channel-first LayerNorms (None: ``$VMAMBA_SCAN_BACKEND`` or auto: Triton on
            CUDA, torch on CPU).
        compile (bool | dict): run the forward (and so the backward) through
            ``torch.compile``, compiled at the first call of each model instance; a dict gives
            its keyword arguments (``{}``: the defaults, like True), e.g.
            ``dict(mode='reduce-overhead')`` (CUDA graphs as well: the host no longer launches
            each kernel; UperNet training steps on the H200 1.5x faster than eager, README).
            The Triton kernels stay as they are and inductor fuses the ops around them: VMamba-T
            training on the H100 +16-24% (README, model zoo). Each input size is compiled on its own
            (``dynamic=False`` unless the dict sets it): fixed sizes (classification,
            segmentation crops) compile once; detection's many sizes each compile at first
            sight, up to torch's recompile limit, beyond which new sizes run eagerly.
            Inductor's layout optimisation is turned off (an option the dict sets wins): with
            it, the compiled fp16 gradients were wrong on the H200
            (``mmvmamba/models/utils/compile.py``). Default: False.
        init_cfg (dict, optional): e.g. ``dict(type='Pretrained', checkpoint=PATH,
            prefix='backbone.')``; loads our checkpoints and the authors' released files
            (strict about shapes, missing/unexpected keys reported). Default: None.
    """
    arch_settings = {
        'tiny': dict(dims=96, depths=(2, 2, 8, 2), ssm_ratio=1.0, drop_path_rate=0.2, **_FINAL),
        'small': dict(dims=96, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.3, **_FINAL),
        'base': dict(dims=128, depths=(2, 2, 15, 2), ssm_ratio=2.0, drop_path_rate=0.6, **_FINAL),
        'v0-tiny': dict(dims=96, depths=(2, 2, 9, 2), drop_path_rate=0.2, **_V0),
        'v0-small': dict(dims=96, depths=(2, 2, 27, 2), drop_path_rate=0.3, **_V0),
        'v0-base': dict(dims=128, depths=(2, 2, 27, 2), drop_path_rate=0.5, **_V0),
    }
    arch_settings.update(t=arch_settings['tiny'], s=arch_settings['small'],
                         b=arch_settings['base'])
    _ARCH_KEYS = {'dims', 'depths', 'd_state', 'ssm_ratio', 'mlp_ratio', 'conv_bias', 'gate',
                  'stem', 'downsample', 'drop_path_rate'}

    def __init__(self, arch: Union[str, dict] = 'tiny', in_channels: int = 3,
                 out_indices: Sequence[int] = (3, ), norm_outputs: bool = True,
                 frozen_stages: int = -1, drop_path_rate: Optional[float] = None,
                 with_cp: bool = False, recompute_mlp_act: bool = False,
                 recompute_stem: bool = False, memory_efficient_norm: bool = False,
                 recompute_ssm_input: bool = False, scan_backend: Optional[str] = None,
                 compile: Union[bool, dict] = False, init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(compile, (bool, dict)):
            raise TypeError('compile must be a bool or a dict of torch.compile arguments, got '
                            f'{compile!r}')
        # a dict, even an empty one, means "compile with these arguments"; False means eager
        self.compile_cfg = (dict(compile) if isinstance(compile, dict) else
                            {} if compile else None)
        if self.compile_cfg is not None:  # a bad argument fails here, not at the first forward
            vmamba_compile_kwargs(**self.compile_cfg)
        cfg = self._arch_config(arch)
        dims = cfg['dims']
        dims = [dims * 2**i for i in range(len(cfg['depths']))] if isinstance(dims, int) else list(
            dims)
        depths = list(cfg['depths'])
        if len(dims) != len(depths):
            raise ValueError(f'arch dims {dims} and depths {depths} must have the same length')
        num_stages = len(depths)
        out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        for i in out_indices:
            if not -num_stages <= i < num_stages:
                raise ValueError(f'out_indices entry {i} is out of range for {num_stages} stages')
        self.out_indices = sorted(i % num_stages for i in out_indices)
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages must be in [-1, {num_stages}], got {frozen_stages}')
        self.frozen_stages, self.with_cp, self.norm_outputs = frozen_stages, with_cp, norm_outputs
        self.recompute_stem = recompute_stem
        self.dims, self.depths = dims, depths
        self.num_features = [dims[i] for i in self.out_indices]
        rate = cfg['drop_path_rate'] if drop_path_rate is None else drop_path_rate
        rates = torch.linspace(0, rate, sum(depths)).tolist()

        stem = {'conv': conv_stem, 'patchify': patchify_stem}[cfg['stem']]
        down = {'conv': conv_downsample, 'merging': PatchMerging2d}[cfg['downsample']]
        self.patch_embed = stem(in_channels, dims[0])
        # the 4x4 patchify stem pads to a multiple of 4 so every stem gives ceil(H / 4)
        self.stem_multiple = 4 if cfg['stem'] == 'patchify' else 1
        ssm_cfg = dict(d_state=cfg['d_state'], ssm_ratio=cfg['ssm_ratio'],
                       conv_bias=cfg['conv_bias'], gate=cfg['gate'], scan_backend=scan_backend,
                       recompute_input=recompute_ssm_input)
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            blocks = [VSSBlock(dims[i], rates[start + j], cfg['mlp_ratio'], ssm_cfg,
                               recompute_mlp_act)
                      for j in range(depth)]
            last = i == num_stages - 1
            self.layers.append(VMambaStage(blocks, nn.Identity() if last else down(dims[i],
                                                                                    dims[i + 1])))
        if norm_outputs:
            for i in self.out_indices:
                self.add_module(f'outnorm{i}', LayerNorm2d(dims[i]))
        for m in self.modules():
            if isinstance(m, LayerNorm2d):
                m.backend = scan_backend
                m.memory_efficient = memory_efficient_norm and m.feeds_linear
        self._freeze_stages()
        self._set_conv_weight_layout()

    def _arch_config(self, arch):
        if isinstance(arch, str):
            if arch not in self.arch_settings:
                raise ValueError(f'unknown VMamba arch {arch!r}; choose one of '
                                 f'{sorted(self.arch_settings)} or pass a dict')
            return deepcopy(self.arch_settings[arch])
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')
        unknown = set(arch) - self._ARCH_KEYS
        if unknown:
            raise ValueError(f'unknown keys {sorted(unknown)} in arch dict; allowed: '
                             f'{sorted(self._ARCH_KEYS)}')
        cfg = dict(drop_path_rate=0.2, ssm_ratio=1.0, **_FINAL)
        cfg.update(arch)
        for key in ('dims', 'depths'):
            if key not in cfg:
                raise ValueError(f'arch dict needs {key!r}')
        return cfg

    def init_weights(self):
        cfg = self.init_cfg
        self._default_init()
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if not cfg.get('checkpoint'):
                raise ValueError('init_cfg of type Pretrained needs a checkpoint path')
            load_backbone_checkpoint(self, cfg['checkpoint'], prefix=cfg.get('prefix'))
        elif cfg is not None:
            super().init_weights()
        self._is_init = True

    def _default_init(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _freeze_stages(self):
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        for i in range(max(0, self.frozen_stages)):
            frozen.append(self.layers[i])
            if i in self.out_indices and self.norm_outputs:
                frozen.append(getattr(self, f'outnorm{i}'))
        for module in frozen:
            module.eval()
            for p in module.parameters():
                p.requires_grad = False

    def _set_conv_weight_layout(self):
        """The dense convolutions' weights (stem, downsampling) channels-last on the CPU,
        channel-first elsewhere. On the CPU those convolutions get channels-last maps, and
        oneDNN converted a channel-first weight at every call: VMamba-T's last downsampling
        weight (768 x 384 x 3 x 3) cost 3.5 ms of a 150 ms forward on one core; at batch 1 on
        2 threads the forward went 127 -> 118 ms (docs/notes/2026-12-07.md). The GPU keeps the
        channel-first weights its measurements were made with. Shapes, values and state-dict
        keys are unchanged."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:
                fmt = (torch.channels_last if m.weight.device.type == 'cpu' else
                       torch.contiguous_format)
                if not m.weight.is_contiguous(memory_format=fmt):
                    m.weight.data = m.weight.data.contiguous(memory_format=fmt)

    def _apply(self, fn, recurse=True):
        # moving or casting the model (.to, .cuda, .cpu, .half, ...) decides the layout of its
        # convolution weights again, for the device they are on now
        super()._apply(fn, recurse)
        self._set_conv_weight_layout()
        return self

    def train(self, mode: bool = True) -> 'VMamba':
        super().train(mode)
        self._freeze_stages()
        return self

    def _run_blocks(self, blocks, x):
        if self.with_cp and self.training and x.requires_grad:
            for block in blocks:
                x = cp.checkpoint(block, x, use_reentrant=False)
            return x
        return blocks(x)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(f'VMamba expects (batch, channels, H, W) input, got shape '
                             f'{tuple(x.shape)}')
        if self.compile_cfg is None:
            return self._forward(x)
        return _compiled_forward(self.compile_cfg)(self, x)

    def _forward(self, x):
        m = self.stem_multiple
        if m > 1 and (x.shape[2] % m or x.shape[3] % m):
            x = F.pad(x, (0, -x.shape[3] % m, 0, -x.shape[2] % m))
        # the stem runs channels-last: NHWC convolution kernels (cuDNN's, oneDNN's), norms over a
        # contiguous channel axis, no layout conversions on the network's largest maps. VMamba-T,
        # H100, compiled fp16 training at batch 128: 2.6 / 1.8 ms off a 53 ms step; CPU, batch 1:
        # the stem's forward 5.4 -> 2.5 ms (docs/notes/2026-12-07.md). Its last norm hands
        # stage 1 the layout it always did
        x = x.contiguous(memory_format=torch.channels_last)
        if self.recompute_stem:
            x = run_recomputed(self.patch_embed, x, self.patch_embed.parameters())
        else:
            x = self.patch_embed(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = self._run_blocks(layer.blocks, x)
            if i in self.out_indices:
                out = getattr(self, f'outnorm{i}')(x) if self.norm_outputs else x
                # channel-first and contiguous for the necks and heads: mmcv's RoIAlign reads a
                # channels-last-strided map (what a permuted LayerNorm returns) as garbage
                outs.append(out.contiguous())
            if i == self.out_indices[-1]:
                break
            x = layer.downsample(x)
        return tuple(outs)


_COMPILED = {}


def _compiled_forward(cfg):
    """``torch.compile(VMamba._forward, **cfg)``, one per distinct ``cfg``. The unbound function
    is compiled, not a bound method kept on the module: a deep copy of the model (mmengine's EMA)
    must not call back into the original; dynamo guards on ``self`` and compiles per instance.

    Unless ``cfg`` says otherwise, ``dynamic=False``: each input size gets a graph of its own.
    With torch's default a second size is compiled with symbolic sizes, which inductor (torch
    2.13) fails to lower for this model ("cannot determine truth value of Relational" while
    ordering the strides of a channels-last view)."""
    cfg = dict(dict(dynamic=False), **cfg)
    key = repr(sorted(cfg.items()))
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(VMamba._forward, **vmamba_compile_kwargs(**cfg))
    return _COMPILED[key]
