"""Train a model from a config, for every task: the config's ``default_scope`` (mmpretrain, mmdet
or mmseg) decides which library's registries, datasets and metrics are used.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                                 [--cfg-options key=value ...] [--launcher pytorch]
"""
import argparse

from _task_config import (add_launcher_args, load_task_config, parse_with_launcher,
                          process_group_closed_after)
from mmengine.config import DictAction
from mmengine.runner import Runner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model (mmpretrain/mmdet/mmseg config)')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CKPT, or from the latest checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by total batch / auto_scale_lr.base_batch_size')
    parser.add_argument('--no-validate', action='store_true', help='skip validation in training')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, key=value')
    add_launcher_args(parser)
    return parse_with_launcher(parser, argv)


def build_config(args):
    cfg = load_task_config(args)
    if args.amp:
        optim = cfg.optim_wrapper
        if optim.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP is already enabled in the config')
        else:
            optim.type = 'AmpOptimWrapper'
            optim.setdefault('loss_scale', 'dynamic')
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    return cfg


def main(argv=None):
    args = parse_args(argv)
    with process_group_closed_after():
        runner = Runner.from_cfg(build_config(args))
        runner.train()


if __name__ == '__main__':
    main()
