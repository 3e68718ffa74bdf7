_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'checkpoints/vmamba_v0-tiny_in1k.pth'
model = dict(
    backbone=dict(arch='v0-tiny', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
