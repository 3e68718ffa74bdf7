"""Experiment: CPU enqueue time vs GPU time of a VMamba-T train step, for LayerNorm2d variants."""
import sys, time, statistics
sys.path.insert(0, 'tools/analysis'); sys.path.insert(0, 'tools/kernel_dev')
import torch
import _common
from mmvmamba.models.utils.layers import LayerNorm2d
cfg = _common.load_config('configs/vmamba/vmamba-tiny_8xb128_in1k.py')
model = _common.build_plain_classifier(cfg).cuda().train()
x = torch.randn(128, 3, 224, 224, device='cuda')
variants = {'torch-ln': ('torch', None), 'triton-cl': ('triton', True)}
for name, (backend, feeds) in variants.items():
    for m in model.modules():
        if isinstance(m, LayerNorm2d):
            m.backend = backend
            if feeds is not None and not hasattr(m, '_orig'):
                m._orig = m.feeds_linear
            if feeds is not None:
                m.feeds_linear = m._orig and feeds
    for amp in ('fp16', 'none'):
        def step():
            with torch.autocast('cuda', dtype=torch.float16, enabled=amp == 'fp16'):
                loss = model(x).float().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        walls, cpus, gpus = [], [], []
        for _ in range(8):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter(); e0.record()
            step()
            t1 = time.perf_counter(); e1.record()
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            walls.append(t2 - t0); cpus.append(t1 - t0); gpus.append(e0.elapsed_time(e1) / 1e3)
        med = statistics.median
        print(f'{name} {amp}: wall {med(walls)*1e3:.1f} ms ({128/med(walls):.0f} img/s), cpu enqueue {med(cpus)*1e3:.1f} ms, gpu events {med(gpus)*1e3:.1f} ms', flush=True)
    with torch.no_grad():
        for amp in ('fp16', 'none'):
            def inf():
                with torch.autocast('cuda', dtype=torch.float16, enabled=amp == 'fp16'):
                    model(x)
            for _ in range(3): inf()
            torch.cuda.synchronize()
            walls, cpus = [], []
            for _ in range(8):
                torch.cuda.synchronize(); t0 = time.perf_counter(); inf(); t1 = time.perf_counter(); torch.cuda.synchronize(); t2 = time.perf_counter()
                walls.append(t2 - t0); cpus.append(t1 - t0)
            print(f'{name} inference {amp}: wall {statistics.median(walls)*1e3:.1f} ms ({128/statistics.median(walls):.0f} img/s), cpu enqueue {statistics.median(cpus)*1e3:.1f} ms', flush=True)
