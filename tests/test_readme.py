"""Every fenced example of the README, run as a user would on a CPU machine: config snippets are
written to a file, parsed, their model built and their datasets built and read against a
generated folder; Python snippets are executed; each command's files must exist, its configs
parse, its tool must answer ``--help`` (shell launchers: parse), ``make`` targets must exist,
and the ONNX export runs for real. A README example that breaks fails here."""
import argparse
import os
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
README = osp.join(ROOT, 'README.md')
PLACEHOLDERS = {'CKPT', 'CONFIG', 'PATH', 'DIR', 'FILE'}


def blocks(language):
    with open(README) as f:
        text = f.read()
    return re.findall(rf'```{language}\n(.*?)```', text, flags=re.S)


def commands():
    lines = []
    for block in blocks('bash'):
        for line in block.splitlines():
            line = line.split('  #')[0].strip()
            if line:
                lines.append(line)
    return lines


def test_the_readme_has_examples_of_each_kind():
    assert len(blocks('bash')) >= 5 and len(blocks('python')) >= 2
    assert 'make test' in commands()  # the command CI runs (.ci/run)
    with open(osp.join(ROOT, '.ci', 'run')) as f:
        assert 'make test' in f.read()


def _with_absolute_base(snippet, folder):
    return re.sub(r"_base_ = '\./", f"_base_ = '{folder}/", snippet)


def _write_class_folder(root, classes, per_class=2):
    from PIL import Image
    for split in ('train', 'val'):
        for c in range(classes):
            folder = osp.join(root, split, f'class{c:03d}')
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                Image.new('RGB', (40 + i, 36), (c, 2 * i, 100)).save(osp.join(folder, f'{i}.jpg'))


@pytest.mark.parametrize('index', range(len([b for b in blocks('python') if '_base_' in b])))
def test_config_snippet_parses_builds_and_reads_its_data(index, tmp_path, monkeypatch):
    snippet = [b for b in blocks('python') if '_base_' in b][index]
    path = tmp_path / 'from_readme.py'
    path.write_text(_with_absolute_base(snippet, osp.join(ROOT, 'configs', 'vmamba')))
    cfg = Config.fromfile(str(path))
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    from mmpretrain.registry import DATASETS, MODELS
    model = MODELS.build(cfg.model)
    classes = cfg.model.head.num_classes
    assert model.head.fc.out_features == classes
    # the folders the snippet names, generated under a working directory of its own
    monkeypatch.chdir(tmp_path)
    data_root = cfg.train_dataloader.dataset.data_root
    _write_class_folder(str(tmp_path / data_root), classes)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        dataset = DATASETS.build(loader.dataset)
        assert len(dataset) == 2 * classes
        item = dataset[0]  # runs the whole pipeline on a real image
        assert item['inputs'].shape[0] == 3 and item['data_samples'].gt_label is not None


def test_python_api_snippets_run():
    for snippet in blocks('python'):
        if '_base_' not in snippet:
            exec(compile(snippet, 'README.md', 'exec'), {})


def _build_backbone_with_options(cfg, words, cmd):
    """A command's ``--cfg-options KEY=VALUE ...`` merged as the tools merge them; the backbone
    is then built, so a misspelt or mistyped option fails here."""
    from mmengine.config import DictAction
    from mmvmamba.models import VMamba
    start = words.index('--cfg-options') + 1
    pairs = []
    for word in words[start:]:
        if word.startswith('--'):
            break
        pairs.append(word)
    assert pairs, cmd
    parsed = argparse.Namespace()
    DictAction(option_strings=[], dest='cfg_options')(None, parsed, pairs)
    cfg.merge_from_dict(parsed.cfg_options)
    backbone = dict(cfg.model.backbone)
    assert backbone.pop('type') == 'VMamba', cmd
    VMamba(**backbone)


def _parse_with_the_tool(script, cmd):
    """A tool with a ``parse_args(argv)`` function parses the command's arguments with it (a
    renamed or removed option, a bad choice fail), without running; a placeholder such as CKPT
    stays a word. Other tools: the ``--help`` answer is all that is checked."""
    with open(osp.join(ROOT, script)) as f:
        if '\ndef parse_args(argv=None)' not in f.read():
            return subprocess.CompletedProcess([], 0, '', '')
    words = shlex.split(cmd)
    argv = words[words.index(script) + 1:]
    code = ('import importlib, sys; sys.path.insert(0, sys.argv[1]); '
            'importlib.import_module(sys.argv[2]).parse_args(sys.argv[3:])')
    return subprocess.run([sys.executable, '-c', code, osp.dirname(osp.join(ROOT, script)),
                           osp.splitext(osp.basename(script))[0], *argv], cwd=ROOT,
                          capture_output=True, text=True)


def _check_command(cmd, tmp_path):
    words = cmd.split()
    if words[0] == 'make':
        target = words[1]
        proc = subprocess.run(['make', '-n', target], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, (cmd, proc.stderr)
        return
    for word in words:
        if word.startswith(('configs/', 'tools/')):
            assert osp.exists(osp.join(ROOT, word)), (cmd, word)
            if word.endswith('.py') and word.startswith('configs/'):
                cfg = Config.fromfile(osp.join(ROOT, word))
                if '--cfg-options' in words:
                    _build_backbone_with_options(cfg, words, cmd)
    script = next(w for w in words if w.startswith('tools/'))
    if script.endswith('.sh'):
        proc = subprocess.run(['bash', '-n', osp.join(ROOT, script)], capture_output=True)
    elif 'pytorch2onnx' in script:  # runs for real: small, and its output is the point
        args = [w if not w.startswith('work_dirs/') else str(tmp_path / osp.basename(w))
                for w in words[words.index(script) + 1:]]
        proc = subprocess.run([sys.executable, osp.join(ROOT, script), *args], cwd=ROOT,
                              capture_output=True, text=True)
        assert 'onnxruntime vs PyTorch' in proc.stdout, proc.stdout + proc.stderr
    else:
        proc = subprocess.run([sys.executable, osp.join(ROOT, script), '--help'], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
        proc = _parse_with_the_tool(script, cmd)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    unknown = [w for w in words if w.isupper() and w not in PLACEHOLDERS]
    assert not unknown, (cmd, unknown)


@pytest.mark.parametrize('cmd', commands())
def test_command(cmd, tmp_path):
    _check_command(cmd, tmp_path)


def test_backbone_options_named_in_the_text_exist():
    # options the prose names as `model.backbone.NAME=VALUE` are arguments of the backbone, and
    # a SMALL backbone builds with each value as written
    import inspect

    from mmvmamba.models import VMamba
    with open(README) as f:
        named = re.findall(r'`model\.backbone\.(\w+)=([^`]+)`', f.read())
    assert {'compile', 'recompute_mlp_act', 'memory_efficient_norm', 'recompute_stem',
            'recompute_ssm_input'} <= {n for n, _ in named}
    arguments = inspect.signature(VMamba).parameters
    for name, value in named:
        assert name in arguments, name
        VMamba(dict(dims=8, depths=(1, 1, 1, 1)), **{name: eval(value)})
