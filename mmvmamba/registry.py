"""mmvmamba registers its modules in mmengine's root registries.

mmpretrain's, mmdet's and mmseg's ``MODELS`` registries are children of mmengine's root ``MODELS``;
a lookup that misses in a child goes up to the root. Registering there once makes
``dict(type='VMamba')`` build under each of the three default scopes without the model code
importing any of the three libraries.
"""
from mmengine.registry import MODELS

__all__ = ['MODELS']
