"""Glue between torch 2.13 and the OpenMMLab stack (mmengine 0.10, mmcv 2.1, mmdet 3.3,
mmseg 1.2, mmpretrain 1.2). Every fix found by running them lives here, one reason each.
Imported by ``mmvmamba/__init__.py`` before anything else; each fix is idempotent.
"""
import enum
import importlib.machinery
import sys
import types

import numpy as np
import torch

__all__ = ['apply', 'TORCHVISION_SHIM']

TORCHVISION_SHIM = '0.0.0+mmvmamba.shim'


def _missing(name):

    def fail(*args, **kwargs):
        raise NotImplementedError(
            f'torchvision.{name} is not available: torchvision is not installed (PyPI has no CPU '
            'build for this torch); mmvmamba only provides the names mmpretrain needs at import')

    return fail


def _box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _box_iou(boxes1, boxes2):
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    return inter / (_box_area(boxes1)[:, None] + _box_area(boxes2) - inter)


def _generalized_box_iou(boxes1, boxes2):
    iou = _box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    hull = (rb - lt).clamp(min=0).prod(-1)
    inter_union = _box_area(boxes1)[:, None] + _box_area(boxes2)
    union = inter_union / (1 + iou)  # area1 + area2 - inter, from iou = inter / union
    return iou - (hull - union) / hull


def _pil_to_tensor(pic):
    array = np.array(pic, copy=True)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class _InterpolationMode(enum.Enum):
    NEAREST = 'nearest'
    NEAREST_EXACT = 'nearest-exact'
    BILINEAR = 'bilinear'
    BICUBIC = 'bicubic'
    BOX = 'box'
    HAMMING = 'hamming'
    LANCZOS = 'lanczos'


class _RandomResizedCrop(torch.nn.Module):
    """Base class mmpretrain subclasses at import (MAERandomResizedCrop); unusable here."""

    def __init__(self, *args, **kwargs):
        _missing('transforms.RandomResizedCrop')()


def _install_torchvision_shim():
    """mmpretrain 1.2 imports torchvision at module level (transforms, box ops) although our
    pipelines use none of it; PyPI's torchvision 0.28 (the one for torch 2.13) is a CUDA build whose
    ops fail to load on CPU torch. When torchvision is absent, register a minimal module with real
    implementations of what mmpretrain touches and loud errors for the rest."""
    try:
        import torchvision  # noqa: F401
        return
    except Exception:  # absent, or a CUDA wheel that cannot load its ops
        for name in [m for m in sys.modules if m == 'torchvision' or m.startswith('torchvision.')]:
            del sys.modules[name]
    root = types.ModuleType('torchvision')
    root.__version__ = TORCHVISION_SHIM
    transforms = types.ModuleType('torchvision.transforms')
    functional = types.ModuleType('torchvision.transforms.functional')
    transforms_mod = types.ModuleType('torchvision.transforms.transforms')
    ops = types.ModuleType('torchvision.ops')
    boxes = types.ModuleType('torchvision.ops.boxes')
    functional.pil_to_tensor = _pil_to_tensor
    functional.resized_crop = _missing('transforms.functional.resized_crop')
    functional.InterpolationMode = _InterpolationMode
    transforms_mod.InterpolationMode = _InterpolationMode
    transforms_mod.RandomResizedCrop = _RandomResizedCrop
    transforms.functional = functional
    transforms.transforms = transforms_mod
    transforms.InterpolationMode = _InterpolationMode
    transforms.RandomResizedCrop = _RandomResizedCrop
    boxes.box_area = _box_area
    boxes.box_iou = _box_iou
    boxes.generalized_box_iou = _generalized_box_iou
    boxes._upcast = lambda t: t if t.is_floating_point() else t.float()
    ops.boxes = boxes
    ops.nms = _missing('ops.nms (use mmcv.ops.nms)')
    root.transforms, root.ops = transforms, ops
    for mod in (root, transforms, functional, transforms_mod, ops, boxes):
        # a spec, as imported modules have (importlib.util.find_spec, used by torch.onnx's
        # exporter among others, raises on a module whose __spec__ is None)
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, loader=None)
        sys.modules[mod.__name__] = mod


def _allow_mmengine_checkpoints():
    """torch >= 2.6 loads with weights_only=True; mmengine's own checkpoints carry its message hub
    (HistoryBuffer objects, numpy scalars/arrays, and HistoryBuffer's statistics methods pickled
    as getattr(HistoryBuffer, 'min')) in `message_hub`, so resuming fails. Allow exactly those
    globals instead of turning weights_only off (getattr's results are stored, never called:
    the unpickler still refuses to call anything not allow-listed)."""
    from mmengine.logging import HistoryBuffer
    if int(np.__version__.split('.')[0]) >= 2:
        from numpy._core import multiarray
    else:
        from numpy.core import multiarray
    safe = [HistoryBuffer, getattr, np.ndarray, np.dtype, multiarray._reconstruct,
            multiarray.scalar]
    safe += [type(np.dtype(t)) for t in (np.float64, np.float32, np.int64, np.int32, np.bool_)]
    torch.serialization.add_safe_globals(safe)


def _cpu_distributed_launch():
    """mmengine's pytorch launcher calls torch.cuda.set_device unconditionally, which a CPU build
    of torch lacks: with no GPU, start the process group (gloo) without it, so
    `dist_train.sh CONFIG N` runs N CPU processes on a laptop."""
    import mmengine.dist.utils as dist_utils
    original = dist_utils._init_dist_pytorch
    if getattr(original, '_mmvmamba_cpu', False):
        return

    def init_dist_pytorch(backend, init_backend='torch', **kwargs):
        if torch.cuda.is_available() or init_backend != 'torch':
            return original(backend, init_backend=init_backend, **kwargs)
        torch.distributed.init_process_group(backend='gloo', **kwargs)

    init_dist_pytorch._mmvmamba_cpu = True
    dist_utils._init_dist_pytorch = init_dist_pytorch


def _mmpretrain_multimodal_only_if_it_imports():
    """mmpretrain 1.2 registers its multimodal models (BLIP, Flamingo, ...) whenever transformers
    is installed, and their modules subclass names that recent transformers releases moved
    (``transformers.modeling_utils.apply_chunking_to_forward``, ...): its import swallows the
    ImportError, subclasses None and fails ("NoneType takes no arguments") the first time any
    mmpretrain model is built. Where those names are missing, register the placeholders
    mmpretrain uses when transformers is absent (the multimodal models then say they need
    another transformers; classifiers are unaffected)."""
    import importlib.util
    if importlib.util.find_spec('transformers') is None or importlib.util.find_spec(
            'mmpretrain') is None:
        return
    try:
        from transformers.modeling_utils import (  # noqa: F401
            PreTrainedModel, apply_chunking_to_forward, find_pruneable_heads_and_indices,
            prune_linear_layer)
    except Exception:  # any failure here is the one mmpretrain would hit
        import mmpretrain.utils.dependency as dependency
        dependency.WITH_MULTIMODAL = False


def apply():
    _install_torchvision_shim()
    _allow_mmengine_checkpoints()
    _cpu_distributed_launch()
    _mmpretrain_multimodal_only_if_it_imports()


apply()
