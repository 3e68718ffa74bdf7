"""What one training forward keeps for its backward, by module: VMamba against the peers.

The activations held between forward and backward set most of a training step's peak memory.
This counts every tensor autograd saves during one forward of each model (``--peers``,
``--timm``: as in ``compare_peers.py``), once per storage, and gives it to the innermost module
running when it was saved; module paths lose their indices, so the rows add up the blocks of
all stages (``backbone.layers.blocks.op.in_proj``). Parameters, and tensors computed from
parameters alone (autocast's half-precision copies of the weights), are counted apart: they do
not grow with the batch.

    python tools/analysis/saved_activations.py --device cuda --amp fp16 --batch 8 \\
        --peers swin-tiny
    python tools/analysis/saved_activations.py configs/vmamba/vmamba-small_8xb128_in1k.py \\
        --peers swin-small --device cuda --amp fp16

``--compile``: what the forward compiled by ``torch.compile`` keeps instead (inductor's
partitioner decides what to keep and what the backward recomputes): the tensors each compiled
forward graph passes to its backward, by the module their operation came from. What is saved
depends on the device: on the CPU the norms, the scan and autocast's casts take other paths than
on CUDA (``VMAMBA_SCAN_BACKEND=triton`` with ``TRITON_INTERPRET=1`` runs VMamba's GPU paths on
the CPU, slowly: use a small ``--shape``), so compare models on the device they train on.
"""
import argparse
import collections
import contextlib
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import compare_peers  # noqa: E402

from mmvmamba.analysis import AMP_DTYPES  # noqa: E402
from mmvmamba.models.utils import compile_model  # noqa: E402


def _group(name):
    """A module path without its indices: 'backbone.layers.0.blocks.1.op' and dynamo's
    "L['self'].backbone.layers[0].blocks[1].op" -> 'backbone.layers.blocks.op'."""
    if name.startswith("L['"):
        name = name.split('.', 1)[1] if '.' in name else ''
    name = name.replace('[', '.').replace(']', '')
    return '.'.join(part for part in name.split('.') if part and not part.isdigit()) or '(model)'


class _InputReach:
    """Whether a tensor's value depends on the input: its autograd graph reaches the input's
    gradient accumulator (memoised per graph node)."""

    def __init__(self, x):
        self.x = x
        self.memo = {}

    def __call__(self, t):
        if t is self.x:
            return True
        if t.grad_fn is None:
            return None  # not tracked by autograd: decided by its shape
        stack = [(t.grad_fn, False)]
        while stack:  # post-order without recursion: graphs are deeper than its limit
            node, expanded = stack.pop()
            if node in self.memo:
                continue
            children = [n for n, _ in node.next_functions if n is not None]
            variable = getattr(node, 'variable', None)
            if variable is not None:  # an accumulator: the input's, or a parameter's
                self.memo[node] = variable is self.x
            elif expanded:
                self.memo[node] = any(self.memo[n] for n in children)
            else:
                stack.append((node, True))
                stack.extend((n, False) for n in children if n not in self.memo)
        return self.memo[t.grad_fn]


def saved_by_module(model, x, amp=None):
    """One training forward of ``model`` on ``x``: dict(activations={(module group, dtype):
    bytes}, weights=bytes): every tensor autograd saved, once per storage. Activations depend on
    the input (or, untracked, have the batch as first dimension); weights are the parameters'
    storages and tensors computed from parameters alone."""
    device = x.device
    x = x.detach().requires_grad_(True)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    stack = ['(model)']
    hooks = []

    def leave(module, args, out):
        stack.pop()  # returns None: a forward hook's return value would replace the output

    for name, module in model.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, group=_group(name): stack.append(group)))
            hooks.append(module.register_forward_hook(leave))
    reach = _InputReach(x)
    seen, activations, weights = set(), collections.Counter(), 0

    def pack(t):
        nonlocal weights
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in seen or storage.nbytes() == 0:
            return t
        seen.add(key)
        depends = reach(t)
        if depends is None:
            depends = t.dim() > 0 and t.shape[0] == x.shape[0]
        if key in params or not depends:
            weights += storage.nbytes()
        else:
            activations[(stack[-1], str(t.dtype).replace('torch.', ''))] += storage.nbytes()
        return t

    dtype = AMP_DTYPES[amp]
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    del out
    return dict(activations=dict(activations), weights=weights)


@contextlib.contextmanager
def compiled_partitions():
    """The (forward graph, tensors it saves for the backward) of every graph inductor
    partitions meanwhile; its caches off, so that nothing is skipped."""
    import torch._functorch.config as functorch_config
    import torch._inductor.compile_fx as compile_fx
    import torch._inductor.config as inductor_config
    real = compile_fx.min_cut_rematerialization_partition
    found = []

    def spy(joint, inputs, *args, **kwargs):
        forward, backward = real(joint, inputs, *args, **kwargs)
        output, = [n for n in forward.graph.nodes if n.op == 'output']
        found.append((forward, output.args[0][kwargs['num_fwd_outputs']:]))
        return forward, backward

    saved_config = (functorch_config.enable_autograd_cache, inductor_config.fx_graph_cache)
    compile_fx.min_cut_rematerialization_partition = spy  # inductor calls it by this name
    functorch_config.enable_autograd_cache = inductor_config.fx_graph_cache = False
    try:
        yield found
    finally:
        compile_fx.min_cut_rematerialization_partition = real
        functorch_config.enable_autograd_cache, inductor_config.fx_graph_cache = saved_config


def _node_bytes(node):
    value = node.meta.get('val')
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def _like_maps(value, x):
    return value.dim() >= 3 and value.shape[0] == x.shape[0]


def _module_of(node):
    """The module group of a graph node's operation; for nodes without dynamo's module stack
    (views the partitioner adds) that of the nearest input that has one."""
    queue, seen = [node], {node}
    while queue:
        current = queue.pop(0)
        stack = current.meta.get('nn_module_stack')
        if stack:
            return _group(list(stack.values())[-1][0])
        for n in current.all_input_nodes:
            if n not in seen:
                seen.add(n)
                queue.append(n)
    return '(model)'


def saved_by_compiled_module(model, x, amp=None, **compile_cfg):
    """As :func:`saved_by_module`, for ``model`` compiled by ``torch.compile`` (through
    ``compile_model``, with ``compile_cfg``): the tensors each compiled forward graph keeps for
    its backward, given to the module their operation came from (dynamo's module stack).
    Activations depend on the graph input shaped like ``x`` or, in a graph without one (after a
    graph break), on the inputs shaped like a batch of maps; weights on parameters alone."""
    dtype = AMP_DTYPES[amp]
    activations, weights = collections.Counter(), 0
    model.train()
    with compiled_partitions() as found:
        compiled = compile_model(model, **compile_cfg)
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            out = compiled(x)
    del out
    if not found:
        raise RuntimeError('torch.compile partitioned no graph: nothing was traced for training')
    for forward, saved in found:
        inputs = [n for n in forward.graph.nodes if n.op == 'placeholder'
                  and isinstance(n.meta.get('val'), torch.Tensor)]
        data = ({n for n in inputs if n.meta['val'].shape == x.shape}
                or {n for n in inputs if _like_maps(n.meta['val'], x)})
        depends = {}
        for node in forward.graph.nodes:  # in topological order
            depends[node] = node in data or any(depends[n] for n in node.all_input_nodes)
        for node in saved:
            if not hasattr(node, 'op') or not _node_bytes(node):
                continue  # sizes and other non-tensor values
            if not depends[node]:
                weights += _node_bytes(node)
                continue
            group = _module_of(node)
            dtype_name = str(node.meta['val'].dtype).replace('torch.', '')
            activations[(group, dtype_name)] += _node_bytes(node)
    return dict(activations=dict(activations), weights=weights)


def table(label, result, batch, scale_batch, top, compiled=False):
    per_image = {k: v / batch for k, v in result['activations'].items()}
    total = sum(per_image.values())
    label += ' (compiled)' if compiled else ''
    lines = [f'### {label}: {total / 2**20:.1f} MiB of activations per image (at batch '
             f'{scale_batch}: {total * scale_batch / 2**30:.2f} GiB); weights and their copies '
             f"{result['weights'] / 2**20:.1f} MiB", '',
             '| module | dtype | MiB / image | share |', '|---|---|---|---|']
    for (group, dtype), nbytes in sorted(per_image.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f'| {group} | {dtype} | {nbytes / 2**20:.2f} | '
                     f'{nbytes / total:.1%} |')
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    compare_peers.add_model_arguments(parser, peers=('swin-tiny', ))
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', choices=sorted(k for k in AMP_DTYPES if k), default=None,
                        help='autocast dtype (default: none)')
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--shape', type=int, nargs=2, default=(224, 224), metavar=('H', 'W'))
    parser.add_argument('--scale-batch', type=int, default=128,
                        help='also state the total at this batch (default: 128)')
    parser.add_argument('--top', type=int, default=20, help='rows per model (default: 20)')
    parser.add_argument('--compile', action='store_true',
                        help='what the forward compiled by torch.compile keeps')
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f'--batch must be at least 1, got {args.batch}')
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, *args.shape, device=device)
    results = {}
    for label, build in compare_peers.models_to_compare(args):
        model = build().to(device)
        measure = saved_by_compiled_module if args.compile else saved_by_module
        results[label] = measure(model, x, args.amp)
        print(table(label, results[label], args.batch, args.scale_batch, args.top,
                    args.compile) + '\n', flush=True)
        del model
    return results


if __name__ == '__main__':
    main()
