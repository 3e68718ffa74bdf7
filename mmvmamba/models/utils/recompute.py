"""Activation checkpointing of a part of the model where a gradient is wanted."""
import torch
import torch.utils.checkpoint as cp


def run_recomputed(fn, x, watched):
    """``fn(x)``, under non-reentrant activation checkpointing (what ``fn`` computes is not held
    for the backward, which recomputes it) when grad mode is on and one of ``watched`` (the
    tensors and parameters whose gradients would flow through ``fn``) requires a gradient;
    plainly otherwise, where there would be nothing to recompute for."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in watched):
        return cp.checkpoint(fn, x, use_reentrant=False)
    return fn(x)
