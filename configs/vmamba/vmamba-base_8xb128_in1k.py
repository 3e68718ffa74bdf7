_base_ = './vmamba-tiny_8xb128_in1k.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.6),
    head=dict(in_channels=1024),
)
