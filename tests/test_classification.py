"""Classification pipeline: configs build, tools/train.py + tools/test.py on a tiny generated
digits folder, dist_train.sh with 2 gloo CPU processes, resume."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
DEMO = osp.join(ROOT, 'configs/vmamba/vmamba-nano_1xb32_digits.py')
CLS_CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs/vmamba/*.py')))


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    from dataset_converters.digits_to_folder import write_digits_folder
    out = str(tmp_path_factory.mktemp('digits'))
    counts = write_digits_folder(out, limit=4)
    assert counts == {'train': 40, 'val': 40}
    return out


@pytest.mark.parametrize('path', CLS_CONFIGS, ids=osp.basename)
def test_config_parses_and_builds_its_model(path):
    cfg = Config.fromfile(path)
    assert cfg.default_scope == 'mmpretrain'
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    arch = cfg.model.backbone.arch
    assert model.backbone.dims[-1] == cfg.model.head.in_channels, arch


def _opts(data, work_dir, *extra):
    return ['--work-dir', str(work_dir), '--cfg-options', f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}', f'test_dataloader.dataset.data_root={data}',
            'train_dataloader.batch_size=8', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
            'default_hooks.logger.interval=1', *extra]


def test_demo_config_trains_two_iterations_and_evaluates(digits, tmp_path):
    import test as test_tool
    import train as train_tool
    train_tool.main([DEMO] + _opts(digits, tmp_path, 'train_cfg.max_epochs=1',
                                   'train_dataloader.dataset.indices=16',
                                   'default_hooks.checkpoint.interval=1'))
    ckpt = tmp_path / 'epoch_1.pth'
    assert ckpt.exists()
    metrics = test_tool.main([DEMO, str(ckpt), '--out', str(tmp_path / 'preds.pkl')] +
                             _opts(digits, tmp_path))
    assert 0.0 <= metrics['accuracy/top1'] <= 100.0
    assert (tmp_path / 'preds.pkl').exists()


def test_dist_train_two_cpu_processes_with_gloo(digits, tmp_path):
    env = dict(os.environ, PORT='29611', PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='')
    cmd = ['bash', osp.join(ROOT, 'tools/dist_train.sh'), DEMO, '2'] + _opts(
        digits, tmp_path, 'train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=32',
        'default_hooks.checkpoint.interval=1')
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # 32 images, 8 per process and step, 2 processes: 2 iterations
    scalars = glob.glob(str(tmp_path / '*' / 'vis_data' / 'scalars.json'))
    steps = [json.loads(line)['step'] for line in open(scalars[0]) if '"loss"' in line]
    assert steps == [1, 2]
    assert (tmp_path / 'epoch_1.pth').exists()


_ONE_PROCESS_GROUP = """
import sys
import torch.distributed as dist
sys.path.insert(0, {tools!r})
import test as test_tool
import train as train_tool
train_tool.main({train_argv!r})
print('open after train:', dist.is_initialized())
test_tool.main({test_argv!r})
print('open after test:', dist.is_initialized())
"""


def test_train_and_test_tools_close_the_process_group_they_opened(digits, tmp_path):
    # a gloo group left open can abort the process at exit (SIGABRT) after the work is done
    env = dict(os.environ, RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', MASTER_ADDR='127.0.0.1',
               MASTER_PORT='29613', CUDA_VISIBLE_DEVICES='')
    launcher = ['--launcher', 'pytorch']
    train_argv = [DEMO] + launcher + _opts(digits, tmp_path, 'train_cfg.max_epochs=1',
                                           'train_dataloader.dataset.indices=8',
                                           'default_hooks.checkpoint.interval=1')
    test_argv = [DEMO, str(tmp_path / 'epoch_1.pth')] + launcher + _opts(digits, tmp_path)
    script = _ONE_PROCESS_GROUP.format(tools=osp.join(ROOT, 'tools'), train_argv=train_argv,
                                       test_argv=test_argv)
    proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'open after train: False' in proc.stdout
    assert 'open after test: False' in proc.stdout


def _losses(work_dir):
    out = {}
    for path in glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json')):
        for line in open(path):
            rec = json.loads(line)
            if 'loss' in rec:
                out[rec['step']] = rec['loss']
    return out


def _train_with_resume(digits, work_dir, stops):
    """Train the digits config (random crops, drop path, EMA, as shipped) to epoch stops[-1],
    stopping and resuming after each earlier epoch in ``stops``."""
    import train as train_tool
    common = ['default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=5',
              'train_cfg.val_interval=10', 'model.backbone.drop_path_rate=0.2']
    for i, stop in enumerate(stops):
        resume = ['--resume'] if i else []
        train_tool.main([DEMO] + resume + _opts(digits, work_dir, f'train_cfg.max_epochs={stop}',
                                                *common))


def test_resumed_run_reaches_the_uninterrupted_weights_bitwise(digits, tmp_path):
    # RandomStateHook (in the config's custom_hooks) saves the random generators with each
    # checkpoint and restores them on resume, so augmentation and drop path draw the same numbers
    full, part = tmp_path / 'full', tmp_path / 'part'
    _train_with_resume(digits, full, [2])
    _train_with_resume(digits, part, [1, 2])
    a, b = _losses(full), _losses(part)
    assert sorted(a) == sorted(b) == list(range(1, 11))  # 40 images / 8 = 5 steps an epoch
    assert a == b  # every step's loss, the resumed epoch's included
    ca = torch.load(full / 'epoch_2.pth', map_location='cpu', weights_only=True)
    cb = torch.load(part / 'epoch_2.pth', map_location='cpu', weights_only=True)
    assert ca['meta']['iter'] == cb['meta']['iter'] == 10
    for key in ('state_dict', 'ema_state_dict'):
        assert ca[key].keys() == cb[key].keys()
        for name, value in ca[key].items():
            assert torch.equal(value, cb[key][name]), (key, name)
    for group_a, group_b in zip(ca['optimizer']['state'].values(),
                                cb['optimizer']['state'].values()):
        for name, value in group_a.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(group_b[name])), name


def test_without_the_random_state_the_resumed_run_differs(digits, tmp_path):
    # what the hook fixes: mmengine alone re-seeds on resume, so the resumed epoch's random
    # crops and drop path masks differ from the uninterrupted run's
    full, part = tmp_path / 'full', tmp_path / 'part'
    config = tmp_path / 'no_random_state.py'
    config.write_text(f"_base_ = {DEMO!r}\n"
                      "custom_hooks = [dict(type='EMAHook', momentum=1e-3, priority='ABOVE_NORMAL')]\n")
    import train as train_tool
    common = ['default_hooks.checkpoint.interval=1', 'train_cfg.val_interval=10']
    cfg = str(config)
    train_tool.main([cfg] + _opts(digits, full, 'train_cfg.max_epochs=2', *common))
    train_tool.main([cfg] + _opts(digits, part, 'train_cfg.max_epochs=1', *common))
    train_tool.main([cfg, '--resume'] + _opts(digits, part, 'train_cfg.max_epochs=2', *common))
    a, b = _losses(full), _losses(part)
    assert all(a[step] == b[step] for step in range(1, 6))  # before the stop: the same run
    assert a[6] != b[6]
