"""Kernel launches that ``torch.compile`` treats as opaque operators.

Left to itself, dynamo traces into a Triton launch and inductor decides from the kernel's code
which of its arguments it writes. Our kernels write their outputs through helper functions and
computed pointers, and with VMamba-T under ``torch.compile`` (torch 2.11, H100) the gradient of
``A_logs`` came out wrong (relative difference 1.1 to the eager model, in float32 too; the
forward matched). Each launch function below is therefore registered as a
``torch.library.custom_op`` that allocates and returns its outputs and mutates nothing, with a
fake (meta) implementation giving their shapes: compiled graphs call it as one operator and
fuse what lies around it. In eager mode the function is called directly (a custom op's
dispatch costs CPU time per call, and eager training steps are launch-bound on the H100).
"""
import functools

import torch

__all__ = ['opaque_under_compile']


def opaque_under_compile(name, fake):
    """Decorator: ``fn`` runs as is in eager mode and as the custom op ``vmamba_kernels::name``
    (outputs freshly allocated, no argument mutated; ``fake`` returns empty outputs of the right
    shapes, dtypes and layouts) while ``torch.compile`` traces. ``fn`` must carry type
    annotations (they give the operator's schema)."""

    def wrap(fn):
        op = torch.library.custom_op(f'vmamba_kernels::{name}', fn, mutates_args=())
        op.register_fake(fake)

        @functools.wraps(fn)
        def call(*args):
            if torch.compiler.is_compiling():
                return op(*args)
            return fn(*args)

        call.op = op
        return call

    return wrap
