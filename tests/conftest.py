import os

# The Triton kernels run on CPU tensors through Triton's interpreter; it must be switched on
# before triton is first imported.
os.environ.setdefault('TRITON_INTERPRET', '1')

import mmvmamba  # noqa: E402,F401  (applies mmvmamba.compat before any OpenMMLab import)
