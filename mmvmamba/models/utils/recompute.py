"""Activation checkpointing of a part of the model where a gradient is wanted."""
import torch.utils.checkpoint as cp
from vmamba_kernels.checks import wants_grad


def run_recomputed(fn, x, watched):
    """``fn(x)``, under non-reentrant activation checkpointing (what ``fn`` computes is not held
    for the backward, which recomputes it) when autograd would track a call on one of
    ``watched`` (the tensors and parameters whose gradients would flow through ``fn``;
    :func:`vmamba_kernels.checks.wants_grad`); plainly otherwise, where there would be nothing
    to recompute for."""
    if wants_grad(*watched):
        return cp.checkpoint(fn, x, use_reentrant=False)
    return fn(x)
