"""The kernels package for the scripts of this folder: installed (``vmamba_kernels``) or, in a
checkout without ``pip install -e .``, loaded from ``kernels/`` under that name."""
import importlib.util
import os
import sys


def import_kernels(interpret_without_cuda=False):
    """``vmamba_kernels``. ``interpret_without_cuda``: with no CUDA GPU, run Triton kernels
    through the interpreter (chosen here, before triton is first imported)."""
    if interpret_without_cuda:
        import torch
        if not torch.cuda.is_available():
            os.environ.setdefault('TRITON_INTERPRET', '1')
    try:
        import vmamba_kernels
        return vmamba_kernels
    except ImportError:
        root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'kernels')
        spec = importlib.util.spec_from_file_location(
            'vmamba_kernels', os.path.join(root, '__init__.py'), submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules['vmamba_kernels'] = module
        spec.loader.exec_module(module)
        return module
