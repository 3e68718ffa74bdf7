from .backbones import VMamba
from .ss2d import SS2D
from .vss_block import VSSBlock

__all__ = ['VMamba', 'SS2D', 'VSSBlock']
