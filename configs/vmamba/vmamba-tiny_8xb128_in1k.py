_base_ = [
    '../_base_/models/vmamba_tiny_in1k.py',
    '../_base_/datasets/imagenet_bs128_vmamba_224.py',
    '../_base_/schedules/imagenet_bs1024_adamw_vmamba.py',
    '../_base_/default_runtime_cls.py',
]
