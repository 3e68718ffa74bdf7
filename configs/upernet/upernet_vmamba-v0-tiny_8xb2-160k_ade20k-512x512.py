_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/vmamba_v0-tiny_in1k.pth'
model = dict(
    backbone=dict(arch='v0-tiny', drop_path_rate=0.2,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
