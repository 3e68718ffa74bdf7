# VMamba-T + UperNet (UPerHead + auxiliary FCNHead), ADE20K, 160k iterations, 512x512 crops.
# As the authors did, built on mmseg's Swin-T UperNet recipe: AdamW lr 6e-5, weight decay 0.01,
# linear warm-up 1500 iterations then poly decay, batch 2 per GPU x 8.
# Multi-scale + flip test: tools/test.py CONFIG CKPT --tta.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)

# ImageNet-1K checkpoint of the backbone (the authors' released file, or our classification
# checkpoint with prefix='backbone.' added to init_cfg); a missing file is a clear error. Set it
# here or with --cfg-options model.backbone.init_cfg.checkpoint=PATH.
pretrained = 'checkpoints/vmamba_tiny_in1k.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='VMamba',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))

# weight decay: the Swin recipe's rule, as the authors ran it (none on parameters whose name
# contains 'norm'); Mamba's rule: configs/_base_/schedules/mamba_no_decay.py

# the random generators saved with each checkpoint, restored on --resume (exact resume)
custom_hooks = [dict(type='RandomStateHook')]
