"""The README's main job on the embedded default: build the digits folder dataset, train the
small VMamba with tools/train.py, evaluate the last checkpoint with tools/test.py, print top-1.

    python tools/demo.py [--work-dir work_dirs/digits_demo] [--data data/digits]
"""
import argparse
import glob
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = 'configs/vmamba/vmamba-nano_1xb32_digits.py'


def run(cmd):
    print('+', ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/digits_demo')
    parser.add_argument('--data', default='data/digits')
    args = parser.parse_args()
    start = time.time()
    py = sys.executable
    if not osp.isdir(osp.join(ROOT, args.data, 'val')):
        run([py, 'tools/dataset_converters/digits_to_folder.py', args.data])
    data_opt = ['--cfg-options', f'train_dataloader.dataset.data_root={args.data}',
                f'val_dataloader.dataset.data_root={args.data}',
                f'test_dataloader.dataset.data_root={args.data}']
    run([py, 'tools/train.py', CONFIG, '--work-dir', args.work_dir] + data_opt)
    ckpts = sorted(glob.glob(osp.join(ROOT, args.work_dir, 'epoch_*.pth')),
                   key=lambda p: int(osp.basename(p)[6:-4]))
    if not ckpts:
        sys.exit(f'no checkpoint was written to {args.work_dir}')
    out = osp.join(args.work_dir, 'test_predictions.pkl')
    run([py, 'tools/test.py', CONFIG, ckpts[-1], '--work-dir', args.work_dir, '--out', out] +
        data_opt)
    import pickle
    with open(osp.join(ROOT, out), 'rb') as f:
        preds = pickle.load(f)
    correct = sum(int(p['pred_label'].item() == p['gt_label'].item()) for p in preds)
    print(f'\nVMamba digits demo: top-1 accuracy {100 * correct / len(preds):.2f}% on '
          f'{len(preds)} held-out images ({ckpts[-1]}), {time.time() - start:.0f} s in all')


if __name__ == '__main__':
    main()
