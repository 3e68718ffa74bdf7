"""Detection and segmentation at their real resolution, VMamba against Swin in one process:
time of a training step (forward, backward and the config's AdamW step through mmengine's
AmpOptimWrapper), inference images/s, and peak GPU memory, on synthetic inputs of the shapes the
COCO / ADE20K pipelines produce.

    python tools/analysis/downstream_steps.py                       # both tasks, T vs Swin-T
    python tools/analysis/downstream_steps.py --tasks det --amp none --repeats 10
    python tools/analysis/downstream_steps.py --tasks det --profile 3    # where the step goes
    python tools/analysis/downstream_steps.py --tasks seg --host-profile 3  # the host's side
    python tools/analysis/downstream_steps.py --tasks det --rounds 4 \
        --variants default VMAMBA_SCAN_SEGMENT_PROGRAMS=2048             # A/B in one process

Defaults: Mask R-CNN 1x at batch 2 of 800 x 1333 (our VMamba-T config and mmdet's own Swin-T
config), UperNet 160k at batch 4 of 512 x 512 (ours and mmseg's Swin-T); fp16 autocast with a
dynamic loss scale. Backbones start from random weights (no checkpoint is read). Any configs can
be compared with ``--det-configs`` / ``--seg-configs`` (``mmdet::`` / ``mmseg::`` paths work);
``--cfg-options`` change our configs only (e.g. ``model.backbone.compile=True``).
``backbone forward host ms`` is the time the host spends in the backbone's forward of a training
step (on a GPU: launching its kernels, which it does not wait for). ``--profile STEPS`` adds,
per config, the kernels' share of the training step's wall time (the rest is the GPU waiting on
the host: Python, data structures, synchronisations), kernel launches per step, and device time
by family and by kernel. ``--host-profile STEPS`` adds the host's side of the training step
(cProfile): own time by package (our model, our kernel launchers, Triton's launch path, torch's
operators, the task library) and by function.
"""
import argparse
import contextlib
import os
import os.path as osp
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
import mmvmamba  # noqa: E402,F401  (compat fixes and registration before any mm* import)
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DET_CONFIGS = [osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_vmamba-tiny_fpn_1x_coco.py'),
               'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py']
SEG_CONFIGS = [osp.join(ROOT, 'configs/upernet/upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'),
               'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
AMP = {'none': None, 'fp16': 'float16', 'bf16': 'bfloat16'}


def load_config(path):
    """A config file, or a task library's own (``mmdet::swin/...``), which mmengine resolves
    only as a ``_base_``: read through a one-line config inheriting it."""
    if '::' not in path:
        return Config.fromfile(path)
    import tempfile
    with tempfile.NamedTemporaryFile('w', suffix='.py', delete=False) as f:
        f.write(f'_base_ = {path!r}\n')
    try:
        return Config.fromfile(f.name)
    finally:
        os.unlink(f.name)


def takes_options(path):
    """Whether ``--cfg-options`` apply to a config: our files do, the task libraries' own
    (``mmdet::``, ``mmseg::``: the Swin peers) do not."""
    return '::' not in path


def build(path, amp, cfg_options=None):
    """Model (random weights, on the GPU when there is one) and its config's optimizer wrapper,
    switched to AmpOptimWrapper for ``amp``; ``cfg_options`` merged into our configs."""
    from mmengine.optim import build_optim_wrapper
    cfg = load_config(path)
    if cfg_options and takes_options(path):
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.default_scope)
    from mmengine.registry import MODELS
    cfg.model.backbone.init_cfg = None
    cfg.model.pop('pretrained', None)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model = model.to('cuda' if torch.cuda.is_available() else 'cpu')
    wrapper = dict(cfg.optim_wrapper)
    if amp != 'none':
        wrapper.update(type='AmpOptimWrapper', dtype=AMP[amp], loss_scale='dynamic')
    return model, build_optim_wrapper(model, Config(dict(w=wrapper)).w)


def _rng_boxes(rng, count, height, width):
    x1 = rng.uniform(0, width * 0.7, count)
    y1 = rng.uniform(0, height * 0.7, count)
    w = rng.uniform(32, width * 0.3, count)
    h = rng.uniform(32, height * 0.3, count)
    return np.stack([x1, y1, np.minimum(x1 + w, width - 1), np.minimum(y1 + h, height - 1)], 1)


def detection_batch(batch, height, width, instances=6, seed=0):
    """What mmdet's COCO pipeline hands the model: uint8 images and DetDataSamples with boxes,
    labels and bitmap masks."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8)))
        boxes = _rng_boxes(rng, instances, height, width)
        masks = np.zeros((instances, height, width), dtype=np.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, boxes.astype(int)):
            m[y1:y2, x1:x2] = 1
        sample = DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             scale_factor=(1.0, 1.0), img_id=0))
        sample.gt_instances = InstanceData(
            bboxes=torch.from_numpy(boxes).float(),
            labels=torch.from_numpy(rng.integers(0, 80, instances)),
            masks=BitmapMasks(masks, height, width))
        sample.ignored_instances = InstanceData(bboxes=torch.zeros(0, 4),
                                                labels=torch.zeros(0, dtype=torch.long))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def segmentation_batch(batch, height, width, classes=150, seed=0):
    """What mmseg's ADE20K pipeline hands the model: uint8 crops and SegDataSamples."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    rng = np.random.default_rng(seed)
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8)))
        sample = SegDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                             pad_shape=(height, width), scale_factor=(1.0, 1.0),
                                             flip=False))
        sample.gt_sem_seg = PixelData(
            data=torch.from_numpy(rng.integers(0, classes, (1, height, width))).long())
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _step_times(step, count):
    """Wall seconds of ``count`` calls of ``step`` (synchronised), and the last one's output."""
    times, out = [], None
    for _ in range(count):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, out


def parse_variant(spec):
    """A ``--variants`` entry: ``default`` (the environment as it is) or ``NAME=VALUE[,...]``,
    environment variables the kernels read at each call (e.g. VMAMBA_SCAN_SEGMENT_PROGRAMS)."""
    if spec == 'default':
        return {}
    env = {}
    for item in spec.split(','):
        name, sep, value = item.partition('=')
        if not sep or not name.strip():
            raise ValueError(f'variant {spec!r}: expected "default" or NAME=VALUE[,NAME=VALUE...],'
                             f' got the item {item!r}')
        env[name.strip()] = value
    return env


@contextlib.contextmanager
def environment(env):
    """``env`` set in os.environ inside the block, the previous values restored after."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ForwardClock:
    """Host time of every call of ``module``'s forward, from its pre-hook to its hook. On a GPU
    that is the time to launch its kernels (the host does not wait for them unless the launch
    queue fills or something synchronises); on the CPU, the time to run it."""

    def __init__(self, module):
        self.times, self._start = [], None
        self._hooks = [module.register_forward_pre_hook(self._begin),
                       module.register_forward_hook(self._end)]

    def _begin(self, module, args):
        self._start = time.perf_counter()

    def _end(self, module, args, output):
        self.times.append(time.perf_counter() - self._start)

    def remove(self):
        for hook in self._hooks:
            hook.remove()


class CudaPeakMemory:
    """Peak GPU memory allocated since the last ``reset()``, in GiB."""

    def reset(self):
        torch.cuda.reset_peak_memory_stats()

    def peak_gib(self):
        return torch.cuda.max_memory_allocated() / 2**30


def _alternate(step, variants, warmup, repeats, rounds, memory=None, clock=None):
    """Per variant: the step's times over ``rounds`` rounds of ``repeats`` calls, the variants
    taking turns each round (drift of the machine spreads over all of them), after ``warmup``
    calls each; the peak memory of its calls, warm-up included (``memory``: a
    :class:`CudaPeakMemory` or None; a CUDA graph allocates its memory once, while it is
    recorded in the warm-up, and its replays allocate nothing); the last output; with a
    ``ForwardClock``, the forward times it took during the variant's timed calls."""
    results = {spec: dict(times=[], peak=0.0, out=None, clock=[]) for spec in variants}
    envs = {spec: parse_variant(spec) for spec in variants}

    def calls(spec, count):
        with environment(envs[spec]):
            if memory is not None:
                memory.reset()
            if clock is not None:
                clock.times.clear()
            times, out = _step_times(step, count)
        if memory is not None:
            results[spec]['peak'] = max(results[spec]['peak'], memory.peak_gib())
        return times, out

    for spec in variants:
        calls(spec, warmup)
    for _ in range(rounds):
        for spec in variants:
            times, out = calls(spec, repeats)
            result = results[spec]
            result['times'] += times
            result['clock'] += clock.times if clock is not None else []
            result['out'] = out
    return results


def profile_train(model, wrapper, data, steps):
    """``steps`` training steps under torch.profiler (CUDA): dict(wall_ms and kernel_ms per
    step, kernel launches per step, totals: {kernel: (device us, launches)} over the steps). A
    step whose kernels fill much less than its wall time waits on the host."""
    from _profiling import kernel_totals, step_device_us
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            model.train_step(data, wrapper)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    totals = kernel_totals(prof)
    return dict(wall_ms=wall * 1e3 / steps, totals=totals, steps=steps,
                kernel_ms=step_device_us(totals, steps) / 1e3,
                launches=sum(n for _, n in totals.values()) / steps)


def measure(path, data, amp='fp16', warmup=2, repeats=6, profile_steps=0,
            variants=('default', ), rounds=1, cfg_options=None, host_profile_steps=0):
    """One config, one row per variant (``parse_variant``; they take turns in each of
    ``rounds`` rounds): dict(variant, train_s and inference images/s (medians), losses (of
    the last step), peak_gib), and with ``profile_steps`` (CUDA) a profile of that many training
    steps (``profile_train``), with ``host_profile_steps`` a cProfile of that many
    (``_profiling.host_profile``: pstats.Stats). ``cfg_options``: see :func:`build`."""
    # a malformed variant fails before the model is built
    envs = {spec: parse_variant(spec) for spec in variants}
    model, wrapper = build(path, amp, cfg_options)
    batch = len(data['inputs'])
    on_gpu = torch.cuda.is_available()
    model.train()
    clock = ForwardClock(model.backbone) if hasattr(model, 'backbone') else None
    train = _alternate(lambda: model.train_step(data, wrapper), variants, warmup, repeats,
                       rounds, CudaPeakMemory() if on_gpu else None, clock)
    if clock is not None:
        clock.remove()
    profiles, host_profiles = {}, {}
    for spec in variants:
        with environment(envs[spec]):
            if profile_steps:
                profiles[spec] = profile_train(model, wrapper, data, profile_steps)
            if host_profile_steps:
                from _profiling import host_profile
                host_profiles[spec] = host_profile(lambda: model.train_step(data, wrapper),
                                                   host_profile_steps)
    model.eval()
    dtype = getattr(torch, AMP[amp]) if amp != 'none' else None
    device = 'cuda' if on_gpu else 'cpu'

    def infer():
        with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            return model.test_step(data)

    infer = _alternate(infer, variants, warmup, repeats, rounds)
    params = sum(p.numel() for p in model.parameters())
    options = ' '.join(f'{k}={v}' for k, v in (cfg_options or {}).items()
                       if takes_options(path))
    rows = []
    for spec in variants:
        losses = {k: float(v) for k, v in train[spec]['out'].items()}
        rows.append(dict(config=path, variant=spec, options=options, train_s=statistics.median(
            train[spec]['times']), infer_img_s=batch / statistics.median(infer[spec]['times']),
            peak_gib=train[spec]['peak'] if on_gpu else None, losses=losses, params=params,
            backbone_host_s=(statistics.median(train[spec]['clock']) if train[spec]['clock']
                             else None),
            profile=profiles.get(spec), host_profile=host_profiles.get(spec),
            host_profile_steps=host_profile_steps))
    return rows


def run(tasks, det_configs=DET_CONFIGS, seg_configs=SEG_CONFIGS, det_shape=(800, 1333),
        seg_shape=(512, 512), det_batch=2, seg_batch=4, amp='fp16', warmup=2, repeats=6,
        profile_steps=0, top=15, variants=('default', ), rounds=1, cfg_options=None,
        host_profile_steps=0):
    rows = []
    for task in tasks:
        if task == 'det':
            data = detection_batch(det_batch, *det_shape)
            configs, shape, batch = det_configs, det_shape, det_batch
        else:
            data = segmentation_batch(seg_batch, *seg_shape)
            configs, shape, batch = seg_configs, seg_shape, seg_batch
        for path in configs:
            for row in measure(path, data, amp, warmup, repeats, profile_steps, variants,
                               rounds, cfg_options, host_profile_steps):
                row.update(task=task, shape=shape, batch=batch, amp=amp)
                rows.append(row)
                print(f"{task} {_label(row)}: train step {row['train_s'] * 1e3:.1f} ms, "
                      f"inference {row['infer_img_s']:.1f} img/s, peak "
                      f"{row['peak_gib'] or 0:.1f} GiB", flush=True)
                if row['profile']:
                    print_profile(row['profile'], top)
                if row['host_profile']:
                    from _profiling import print_host_tables
                    print_host_tables(row['host_profile'], row['host_profile_steps'], top)
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return rows


def _label(row):
    name = osp.basename(row['config']) + (f" {row['options']}" if row['options'] else '')
    return name if row['variant'] == 'default' else f"{name} [{row['variant']}]"


def print_profile(profile, top):
    from _profiling import print_kernel_tables
    busy = profile['kernel_ms'] / profile['wall_ms']
    print(f"  profiled {profile['steps']} training steps: {profile['wall_ms']:.1f} ms per step, "
          f"kernels {profile['kernel_ms']:.1f} ms ({100 * busy:.0f}% of it; the rest the GPU "
          f"waits on the host), {profile['launches']:.0f} kernel launches per step")
    print_kernel_tables(profile['totals'], profile['steps'], top)


def table(rows):
    lines = ['| task | config | batch x shape | train step ms | vs first | backbone forward '
             'host ms | inference img/s | vs first | peak train GiB |',
             '|---|---|---|---|---|---|---|---|---|']
    first = {}
    for r in rows:
        base = first.setdefault(r['task'], r)
        peak = f"{r['peak_gib']:.1f}" if r['peak_gib'] is not None else '-'
        host = f"{r['backbone_host_s'] * 1e3:.1f}" if r['backbone_host_s'] is not None else '-'
        lines.append(
            f"| {r['task']} | {_label(r)} | {r['batch']} x {r['shape'][0]}x"
            f"{r['shape'][1]} | {r['train_s'] * 1e3:.1f} | {base['train_s'] / r['train_s']:.2f}x |"
            f" {host} | {r['infer_img_s']:.1f} | "
            f"{r['infer_img_s'] / base['infer_img_s']:.2f}x | {peak} |")
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', nargs='+', default=['det', 'seg'], choices=['det', 'seg'])
    parser.add_argument('--det-configs', nargs='+', default=DET_CONFIGS)
    parser.add_argument('--seg-configs', nargs='+', default=SEG_CONFIGS)
    parser.add_argument('--det-shape', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--seg-shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--det-batch', type=int, default=2)
    parser.add_argument('--seg-batch', type=int, default=4)
    parser.add_argument('--amp', default='fp16', choices=sorted(AMP))
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=6)
    parser.add_argument('--profile', type=int, default=0, metavar='STEPS',
                        help='also profile this many training steps per config (CUDA): kernel '
                             'time against wall time, by family and by kernel')
    parser.add_argument('--host-profile', type=int, default=0, metavar='STEPS',
                        help='also cProfile this many training steps per config: host time by '
                             'package and by function')
    parser.add_argument('--top', type=int, default=15,
                        help='kernels (functions) listed with --profile (--host-profile)')
    parser.add_argument('--variants', nargs='+', default=['default'], metavar='SPEC',
                        help='environment settings to compare on each model in one process, '
                             'taking turns: "default" or NAME=VALUE[,NAME=VALUE...]')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='overrides of our configs (not of the mmdet::/mmseg:: peers), e.g. '
                             'model.backbone.compile=True (shown in the row label)')
    parser.add_argument('--rounds', type=int, default=1,
                        help='turns of the variants (--repeats steps each per round)')
    args = parser.parse_args(argv)
    if args.profile < 0 or args.host_profile < 0:
        parser.error(f'--profile and --host-profile must be numbers of steps >= 0, got '
                     f'{args.profile}, {args.host_profile}')
    if args.rounds < 1 or args.repeats < 1:
        parser.error(f'--rounds and --repeats must be >= 1, got {args.rounds}, {args.repeats}')
    for spec in args.variants:
        try:
            parse_variant(spec)
        except ValueError as err:
            parser.error(str(err))
    if args.profile and not torch.cuda.is_available():
        parser.error('--profile times CUDA kernels: it needs a CUDA GPU')
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'
    print(f'torch {torch.__version__} on {device}', flush=True)
    rows = run(args.tasks, args.det_configs, args.seg_configs, tuple(args.det_shape),
               tuple(args.seg_shape), args.det_batch, args.seg_batch, args.amp, args.warmup,
               args.repeats, args.profile, args.top, args.variants, args.rounds,
               args.cfg_options, args.host_profile)
    print(table(rows))
    return rows


if __name__ == '__main__':
    main()
