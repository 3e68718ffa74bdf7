"""tools/deployment/pytorch2onnx.py: exports run in onnxruntime and match PyTorch; a trained
digits classifier gives the same top-1 through onnxruntime as through tools/test.py."""
import json
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tools'))
sys.path.insert(0, osp.join(ROOT, 'tools', 'deployment'))
DIGITS = osp.join(ROOT, 'configs/vmamba/vmamba-nano_1xb32_digits.py')
DET = osp.join(ROOT, 'configs/mask_rcnn/mask-rcnn_vmamba-nano_fpn_digits.py')
SEG = osp.join(ROOT, 'configs/upernet/upernet_vmamba-nano_digits-96x96.py')


@pytest.mark.parametrize('config,shape,outputs', [(DIGITS, (32, 32), ['logits']),
                                                  (DET, (48, 72), ['feat0', 'feat1', 'feat2',
                                                                   'feat3']),
                                                  (SEG, (40, 40), ['feat0', 'feat1', 'feat2',
                                                                   'feat3'])])
def test_export_runs_in_onnxruntime_and_matches_pytorch(config, shape, outputs, tmp_path):
    import onnx
    import pytorch2onnx
    out = str(tmp_path / 'model.onnx')
    result = pytorch2onnx.main([config, '--shape', *map(str, shape), '--out', out, '--batch', '2'])
    assert result['rel_diff'] < 1e-4
    proto = onnx.load(out)
    assert [o.name for o in proto.graph.output] == outputs
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta['outputs'] == outputs and len(meta['mean']) == 3
    # only standard ONNX operators: no custom domain
    assert {n.domain for n in proto.graph.node} <= {'', 'ai.onnx'}
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, *shape]


def test_bad_requests_are_refused_clearly(tmp_path):
    import pytorch2onnx
    with pytest.raises(SystemExit):
        pytorch2onnx.main([DIGITS, '--shape', '32', '32', '--out', 'x.onnx', '--dynamic'])
    with pytest.raises(FileNotFoundError, match='does not exist'):
        pytorch2onnx.main([DIGITS, str(tmp_path / 'missing.pth'), '--shape', '32', '32', '--out',
                           str(tmp_path / 'x.onnx')])


def test_trained_digits_classifier_has_the_same_top1_in_onnxruntime(tmp_path):
    import pytorch2onnx
    import test as test_tool
    import train as train_tool
    from dataset_converters.digits_to_folder import write_digits_folder
    data = str(tmp_path / 'digits')
    write_digits_folder(data, limit=6)
    work = tmp_path / 'work'
    opts = ['--cfg-options', f'train_dataloader.dataset.data_root={data}',
            f'val_dataloader.dataset.data_root={data}', f'test_dataloader.dataset.data_root={data}',
            'train_dataloader.batch_size=8', 'train_dataloader.num_workers=0',
            'train_dataloader.persistent_workers=False', 'val_dataloader.num_workers=0',
            'val_dataloader.persistent_workers=False']
    train_tool.main([DIGITS, '--work-dir', str(work)] + opts +
                    ['train_cfg.max_epochs=3', 'train_cfg.val_interval=3',
                     'default_hooks.checkpoint.interval=3'])
    ckpt = str(work / 'epoch_3.pth')
    metrics_file = tmp_path / 'metrics.json'
    test_tool.main([DIGITS, ckpt, '--work-dir', str(work), '--metrics-json',
                    str(metrics_file)] + opts)
    expected = json.loads(metrics_file.read_text())['accuracy/top1']
    result = pytorch2onnx.main([DIGITS, ckpt, '--shape', '32', '32', '--out',
                                str(tmp_path / 'digits.onnx'), '--eval'] + opts)
    assert result['images'] == 60
    assert result['top1'] == pytest.approx(expected, abs=1e-6)
