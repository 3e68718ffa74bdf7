_base_ = './vmamba-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='v0-tiny', drop_path_rate=0.2),
    head=dict(in_channels=768),
)
