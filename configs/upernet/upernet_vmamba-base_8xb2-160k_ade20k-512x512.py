_base_ = './upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'

pretrained = 'checkpoints/vmamba_base_in1k.pth'
model = dict(
    backbone=dict(arch='base', drop_path_rate=0.6,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
