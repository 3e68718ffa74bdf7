_base_ = './mask-rcnn_vmamba-tiny_fpn_1x_coco.py'

pretrained = 'checkpoints/vmamba_base_in1k.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.6,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
