from .checkpoint import convert_vmamba_checkpoint, load_backbone_checkpoint
from .layers import LayerNorm2d, Linear2d, Mlp

__all__ = ['LayerNorm2d', 'Linear2d', 'Mlp', 'convert_vmamba_checkpoint', 'load_backbone_checkpoint']
