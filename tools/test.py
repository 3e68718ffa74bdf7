"""Evaluate a checkpoint with a config (classification, detection or segmentation).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR]
                                           [--tta] [--metrics-json FILE] [--cfg-options ...]
                                           [--launcher pytorch]
"""
import argparse
import json
import os.path as osp

from _task_config import (add_launcher_args, load_task_config, parse_with_launcher,
                          process_group_closed_after)
from mmengine.config import DictAction
from mmengine.runner import Runner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (evaluate) a checkpoint')
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir')
    parser.add_argument('--out', help='dump the raw predictions to this pickle file')
    parser.add_argument('--show-dir', help='draw predictions into this folder (under work dir)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation (tta_model '
                        'and tta_pipeline of the config)')
    parser.add_argument('--metrics-json', help='also write the metrics to this JSON file')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    add_launcher_args(parser)
    return parse_with_launcher(parser, argv)


def build_config(args):
    cfg = load_task_config(args)
    scope = cfg.default_scope
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint {args.checkpoint!r} does not exist')
    cfg.load_from = args.checkpoint
    if args.tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(f'--tta needs tta_model and tta_pipeline in {args.config}')
        cfg.model = dict(**cfg.tta_model, module=cfg.model)
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    if args.show_dir:
        vis = cfg.default_hooks.get('visualization')
        if vis is None:
            raise ValueError('--show-dir needs a visualization hook in default_hooks')
        if scope == 'mmpretrain':
            vis.update(enable=True, out_dir=args.show_dir)
        elif scope == 'mmdet':
            vis.update(draw=True, test_out_dir=args.show_dir)
        else:  # mmseg: the hook draws every image, the local backend saves them in show_dir
            vis.update(draw=True, interval=1)
            cfg.visualizer['vis_backends'] = [
                dict(type='LocalVisBackend', save_dir=osp.join(cfg.work_dir, args.show_dir))]
    if args.out:
        dump = dict(type='DumpResults', out_file_path=args.out)
        evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [
            cfg.test_evaluator]
        cfg.test_evaluator = evaluators + [dump]
    return cfg


def main(argv=None):
    args = parse_args(argv)
    with process_group_closed_after():
        runner = Runner.from_cfg(build_config(args))
        metrics = runner.test()
    if args.metrics_json:
        with open(args.metrics_json, 'w') as f:
            json.dump({k: float(v) if hasattr(v, '__float__') else v
                       for k, v in metrics.items()}, f, indent=1)
    return metrics


if __name__ == '__main__':
    main()
