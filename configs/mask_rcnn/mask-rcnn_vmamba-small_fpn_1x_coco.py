_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'checkpoints/vmamba_small_in1k.pth'
model = dict(
    backbone=dict(arch='small', drop_path_rate=0.3,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
