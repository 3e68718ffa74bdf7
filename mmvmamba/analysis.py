"""Model analysis shared by tools/analysis/: FLOPs, throughput, effective receptive field."""
import contextlib
import statistics
import time
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mmvmamba.models.ss2d as ss2d_module
import mmvmamba.models.utils.layers as layers_module

__all__ = ['count_flops', 'scan_flops', 'measure_throughput', 'effective_receptive_field',
           'AMP_DTYPES']

# autocast dtype by name (None and 'none': no autocast), as the analysis tools' --amp takes them
AMP_DTYPES = {None: None, 'none': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def scan_flops(batch: int, length: int, channels: int, d_state: int, rank: int) -> int:
    """FLOPs of one fused SS2D scan over ``channels`` = 4 * d_inner sequences: the Mamba
    authors' 9 * B * L * D * N for the recurrence, B * L * D for the D skip, and the rank-R dt
    projection our kernel does inside (B * L * D * R multiply-adds)."""
    return batch * length * channels * (9 * d_state + 1 + rank)


@contextlib.contextmanager
def _counting_hooks(counter):
    """Count the scan by formula and LayerNorm as fvcore does (5 per element with affine)."""
    scan, layer_norm = ss2d_module.ss2d_scan, layers_module.F.layer_norm

    def counted_scan(x, dt_low, dt_weight, dt_bias, A, Bs, Cs, D=None, backend=None,
                     out_dtype=None):
        batch, channels, height, width = x.shape
        counter['scan'] += scan_flops(batch, height * width, 4 * channels, A.shape[1],
                                      dt_weight.shape[2])
        # FLOPs depend on shapes only
        return x.new_zeros(x.shape, dtype=out_dtype or torch.float32)

    def counted_layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        counter['norm'] += x.numel() * (5 if weight is not None else 4)
        return layer_norm(x, shape, weight, bias, eps)

    ss2d_module.ss2d_scan, layers_module.F.layer_norm = counted_scan, counted_layer_norm
    try:
        yield
    finally:
        ss2d_module.ss2d_scan, layers_module.F.layer_norm = scan, layer_norm


def count_flops(model: torch.nn.Module, shape: Tuple[int, int] = (224, 224), batch: int = 1,
                forward: Optional[Callable] = None) -> Dict[str, int]:
    """FLOPs (multiply-adds counted once, the convention of the VMamba/Swin tables) of
    ``forward(model, inputs)`` (default ``model(inputs)``) on a (batch, 3, H, W) input.

    Returns dict(total, conv_linear, scan, norm, params)."""
    counter = {'scan': 0, 'norm': 0}
    inputs = torch.zeros(batch, 3, *shape)
    was_training = model.training
    model.eval()
    with _counting_hooks(counter), FlopCounterMode(display=False) as mode, torch.no_grad():
        (forward or (lambda m, x: m(x)))(model, inputs)
    model.train(was_training)
    dense = mode.get_total_flops() // 2  # FlopCounterMode counts a multiply-add as 2
    total = dense + counter['scan'] + counter['norm']
    return dict(total=total, conv_linear=dense, scan=counter['scan'], norm=counter['norm'],
                params=sum(p.numel() for p in model.parameters()))


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _graphed_step(model, x, autocast, train):
    """One step of ``model`` on ``x`` replayed from CUDA graphs: the whole forward (inference), or
    the forward and backward through ``torch.cuda.make_graphed_callables`` (training; the loss,
    its gradient and the optimizer stay eager). Capturing warms the kernels up first, so Triton
    compiles outside the graph."""
    if not train:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad(), autocast():
            for _ in range(3):
                model(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad(), autocast():
            model(x)
        return graph.replay
    with autocast(cache_enabled=False):
        graphed = torch.cuda.make_graphed_callables(model, (x, ), num_warmup_iters=3)
    model.zero_grad(set_to_none=True)
    return graphed


def measure_throughput(model: torch.nn.Module, batch: int, shape: Tuple[int, int] = (224, 224),
                       device: Union[str, torch.device] = 'cpu', amp: Optional[str] = None,
                       train: bool = False,
                       optimizer=None, warmup=3, repeats=10, progress=None, cuda_graph=False,
                       before_step: Optional[Callable[[], None]] = None):
    """Images per second (median over ``repeats`` timed steps after ``warmup``) and peak memory
    (bytes, CUDA only) of inference, or of training steps (forward + backward, plus the
    optimizer step when ``optimizer`` is given). ``amp``: a key of :data:`AMP_DTYPES`.
    ``cuda_graph``: replay the model from CUDA graphs (see :func:`_graphed_step`): no per-kernel
    launch cost on the CPU, for steps that are launch-bound. ``before_step`` is called before
    each step (e.g. ``torch.compiler.cudagraph_mark_step_begin`` for a model compiled with
    ``mode='reduce-overhead'``)."""
    device = torch.device(device)
    model = model.to(device).train(train)
    x = torch.randn(batch, 3, *shape, device=device)
    dtype = AMP_DTYPES[amp]
    if cuda_graph and device.type != 'cuda':
        raise ValueError(f'cuda_graph=True needs a CUDA device, got {device}')

    def autocast(**kwargs):
        return (torch.autocast(device.type, dtype=dtype, **kwargs) if dtype else
                contextlib.nullcontext())

    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    forward = model
    if cuda_graph:
        forward = _graphed_step(model, x, autocast, train)

    def step():
        if before_step is not None:
            before_step()
        if not train:
            if cuda_graph:
                forward()
                return
            with torch.no_grad(), autocast():
                forward(x)
            return
        with autocast():
            loss = forward(x).float().mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True) if optimizer else model.zero_grad(set_to_none=True)

    times, host_times = [], []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        host = time.perf_counter() - start
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            host_times.append(host)
        if progress:
            progress(i + 1, warmup + repeats)
    peak = torch.cuda.max_memory_allocated(device) if device.type == 'cuda' else None
    return dict(images_per_s=batch / statistics.median(times), peak_bytes=peak,
                median_s=statistics.median(times), host_s=statistics.median(host_times))


def effective_receptive_field(backbone: torch.nn.Module, images: torch.Tensor, stage: int = -1,
                              progress: Optional[Callable] = None) -> torch.Tensor:
    """Mean over images of |d (centre of the stage's feature map, summed over channels) / d input|,
    summed over input channels: an (H, W) map (RepLKNet / the VMamba paper's ERF)."""
    backbone.eval()
    total = torch.zeros(images.shape[-2:])
    for i, image in enumerate(images):
        x = image[None].clone().requires_grad_(True)
        feat = backbone(x)[stage]
        h, w = feat.shape[-2:]
        F.relu(feat[0, :, h // 2, w // 2]).sum().backward()
        total += x.grad[0].abs().sum(0)
        if progress:
            progress(i + 1, len(images))
    return total / len(images)
