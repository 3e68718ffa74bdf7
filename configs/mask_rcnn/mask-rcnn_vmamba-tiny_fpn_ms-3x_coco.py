# VMamba-T + Mask R-CNN FPN, COCO, 3x (36 epochs, multi-scale resize + random crop). Built on
# mmdet's Swin-T 3x recipe: AdamW lr 1e-4, weight decay 0.05, linear warm-up 1000 iters,
# steps at epochs 27 and 33, batch 2 per GPU x 8. Train with `tools/dist_train.sh CONFIG 8 [--amp]`.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'
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
    neck=dict(in_channels=[96, 192, 384, 768]))

# weight decay: the Swin recipe's rule, as the authors ran it (none on parameters whose name
# contains 'norm'); Mamba's rule: configs/_base_/schedules/mamba_no_decay.py

# the random generators saved with each checkpoint, restored on --resume (exact resume)
custom_hooks = [dict(type='RandomStateHook')]
