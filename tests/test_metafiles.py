"""model-index.yml and the metafiles, OpenMMLab's format: every listed config exists and parses,
every shipped ImageNet / COCO / ADE20K config is listed, the metrics are the paper's."""
import glob
import os.path as osp

import pytest
import yaml
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def metafiles():
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        index = yaml.safe_load(f)
    return [osp.join(ROOT, path) for path in index['Import']]


def models():
    out = []
    for path in metafiles():
        with open(path) as f:
            meta = yaml.safe_load(f)
        collections = {c['Name'] for c in meta['Collections']}
        for model in meta['Models']:
            assert model['In Collection'] in collections, model['Name']
            out.append(model)
    return out


def test_index_imports_existing_metafiles():
    assert len(metafiles()) == 3 and all(osp.isfile(p) for p in metafiles())


@pytest.mark.parametrize('model', models(), ids=lambda m: m['Name'])
def test_listed_config_exists_parses_and_is_named_after_its_file(model):
    path = osp.join(ROOT, model['Config'])
    assert osp.isfile(path), model['Config']
    assert osp.splitext(osp.basename(path))[0] == model['Name']
    Config.fromfile(path)


def test_every_shipped_config_is_listed():
    listed = {m['Config'] for m in models()}
    shipped = {osp.relpath(p, ROOT) for pattern in ('configs/vmamba/*_in1k.py',
                                                    'configs/mask_rcnn/*_coco.py',
                                                    'configs/upernet/*_ade20k-512x512.py')
               for p in glob.glob(osp.join(ROOT, pattern))}
    assert shipped and shipped == listed


def test_metrics_are_the_papers():
    by_name = {m['Name']: m for m in models()}
    top1 = {m['Name']: m['Results'][0]['Metrics']['Top 1 Accuracy'] for m in models()
            if m['Results'] and 'Top 1 Accuracy' in m['Results'][0]['Metrics']}
    assert top1 == {'vmamba-tiny_8xb128_in1k': 82.6, 'vmamba-small_8xb128_in1k': 83.6,
                    'vmamba-base_8xb128_in1k': 83.9, 'vmamba-v0-tiny_8xb128_in1k': 82.2,
                    'vmamba-v0-small_8xb128_in1k': 83.5, 'vmamba-v0-base_8xb128_in1k': 83.7}
    det = by_name['mask-rcnn_vmamba-tiny_fpn_1x_coco']['Results']
    assert det[0]['Metrics']['box AP'] == 47.3 and det[1]['Metrics']['mask AP'] == 42.7
    seg = by_name['upernet_vmamba-base_8xb2-160k_ade20k-512x512']['Results'][0]['Metrics']
    assert seg == {'mIoU': 51.0, 'mIoU(ms+flip)': 51.6}
    weights = [m['Weights'] for m in models() if m.get('Weights')]
    assert len(weights) == 3 and all(w.endswith('.pth') for w in weights)
