"""The three digits demos end to end through the real launchers: classification, then Mask R-CNN
and UperNet starting from the classifier's weights; each trained with ``tools/dist_train.sh
CONFIG N`` (torchrun; NCCL on GPUs, gloo on CPUs) and evaluated with ``tools/test.py``. Prints
each task's metrics and median time per training iteration.

    python tools/digits_pipelines.py --gpus 1 --amp            # on a GPU machine
    python tools/digits_pipelines.py --tasks cls --gpus 2      # two CPU processes elsewhere

Data are written by tools/dataset_converters (no download) unless already there.
"""
import argparse
import glob
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TASKS = {
    'cls': dict(config='configs/vmamba/vmamba-nano_1xb32_digits.py', data='data/digits',
                convert='digits_to_folder.py', metric='accuracy/top1'),
    'det': dict(config='configs/mask_rcnn/mask-rcnn_vmamba-nano_fpn_digits.py',
                data='data/digits_coco', convert='digits_to_coco.py', metric='coco/bbox_mAP'),
    'seg': dict(config='configs/upernet/upernet_vmamba-nano_digits-96x96.py',
                data='data/digits_ade', convert='digits_to_ade.py', metric='mIoU'),
}


def run(cmd, env=None):
    print('+', ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


def data_options(task, data):
    opts = [f'{split}_dataloader.dataset.data_root={data}' for split in ('train', 'val', 'test')]
    if task == 'det':
        opts += [f'{split}_evaluator.ann_file={data}/annotations/instances_val.json'
                 for split in ('val', 'test')]
    return opts


def last_checkpoint(work_dir):
    with open(osp.join(ROOT, work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def iteration_times(work_dir):
    """(iterations trained, seconds per iteration at each logging step) from mmengine's
    scalars.json of the newest run."""
    logs = sorted(glob.glob(osp.join(ROOT, work_dir, '*', 'vis_data', 'scalars.json')))
    times, last = [], 0
    if logs:
        with open(logs[-1]) as f:
            for line in f:
                entry = json.loads(line)
                if 'time' in entry and 'loss' in entry:
                    times.append(entry['time'])
                    last = max(last, entry.get('iter', entry.get('step', 0)))
    return last, times


def run_task(task, args, pretrained=None):
    spec = TASKS[task]
    data = osp.join(args.data_root, osp.basename(spec['data']))
    if not osp.isdir(osp.join(ROOT, data)):
        run([sys.executable, osp.join('tools', 'dataset_converters', spec['convert']), data])
    work_dir = osp.join(args.work_dir, task)
    opts = data_options(task, data)
    if pretrained:
        opts.append(f'model.backbone.init_cfg.checkpoint={pretrained}')
    extra = ['--amp'] if args.amp else []
    env = dict(os.environ, PORT=str(args.port))
    start = time.time()
    run(['bash', 'tools/dist_train.sh', spec['config'], str(args.gpus), '--work-dir', work_dir]
        + extra + ['--cfg-options'] + opts + list(args.cfg_options or []), env=env)
    train_s = time.time() - start
    ckpt = last_checkpoint(work_dir)
    out = osp.join(work_dir, 'test_metrics.json')
    run([sys.executable, 'tools/test.py', spec['config'], ckpt, '--work-dir', work_dir,
         '--metrics-json', out, '--cfg-options'] + opts)
    with open(osp.join(ROOT, out)) as f:
        metrics = json.load(f)
    iterations, times = iteration_times(work_dir)
    return dict(task=task, config=spec['config'], checkpoint=ckpt, train_s=train_s,
                iterations=iterations, s_per_iter=statistics.median(times) if times else None,
                metric=spec['metric'], value=metrics.get(spec['metric']), metrics=metrics)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', nargs='+', default=['cls', 'det', 'seg'], choices=list(TASKS))
    parser.add_argument('--gpus', type=int, default=1,
                        help='processes (one per GPU; CPU processes where there is no GPU)')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--work-dir', default='work_dirs/digits_pipelines')
    parser.add_argument('--data-root', default='data')
    parser.add_argument('--port', type=int, default=29500)
    parser.add_argument('--cfg-options', nargs='+', help='passed to every training run')
    parser.add_argument('--json', help='write the summary here')
    args = parser.parse_args(argv)
    rows, pretrained = [], None
    for task in args.tasks:
        if task != 'cls' and pretrained is None:
            cls_ckpt = osp.join(ROOT, args.work_dir, 'cls', 'last_checkpoint')
            pretrained = last_checkpoint(osp.join(args.work_dir, 'cls')) if osp.isfile(
                cls_ckpt) else None
            if pretrained is None:
                sys.exit(f'{task} starts from the digits classifier: run --tasks cls first')
        row = run_task(task, args, pretrained)
        if task == 'cls':
            pretrained = row['checkpoint']
        rows.append(row)
    print('\n| task | config | iterations | s / iteration | training s | metric |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        per_iter = f"{r['s_per_iter']:.4f}" if r['s_per_iter'] else '-'
        print(f"| {r['task']} | {r['config']} | {r['iterations']} | {per_iter} | "
              f"{r['train_s']:.0f} | {r['metric']} {r['value']} |")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
