from .checkpoint import convert_vmamba_checkpoint, load_backbone_checkpoint
from .compile import compile_model, vmamba_compile_kwargs
from .layers import LayerNorm2d, Linear2d, Mlp

__all__ = ['LayerNorm2d', 'Linear2d', 'Mlp', 'compile_model', 'convert_vmamba_checkpoint',
           'load_backbone_checkpoint', 'vmamba_compile_kwargs']
