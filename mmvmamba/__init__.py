"""mmvmamba: VMamba for OpenMMLab (mmpretrain, mmdet, mmseg) on a Triton selective scan.

Importing the package applies the torch compatibility fixes (:mod:`mmvmamba.compat`) and registers
the models in mmengine's root registries, where the mmpretrain, mmdet and mmseg scopes find them.
"""
from . import compat  # noqa: F401,I001  (first: fixes must be in place before mm* imports)
from . import engine  # noqa: F401  (registers RandomStateHook)
from . import models  # noqa: F401  (registers VMamba)
from .version import __version__

__all__ = ['__version__']
