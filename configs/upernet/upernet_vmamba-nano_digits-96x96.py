# Embedded default for segmentation: a small VMamba + UperNet trained from scratch on the
# ADE20K-format digits set (python tools/dataset_converters/digits_to_ade.py data/digits_ade).
_base_ = ['mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/default_runtime.py',
          '../_base_/schedules/mamba_no_decay.py']
custom_imports = dict(imports=['mmvmamba'], allow_failed_imports=False)

# The backbone starts from the digits classifier that `make demo` trains (same architecture), as
# the COCO/ADE20K configs start from an ImageNet checkpoint. Run `make demo` first, or set
# model.backbone.init_cfg=None to train from scratch (much slower to learn).
pretrained = 'work_dirs/digits_demo/epoch_16.pth'

classes = ('background', ) + tuple(str(i) for i in range(10))
crop_size = (96, 96)
# the digits classifier's normalisation (configs/vmamba/vmamba-nano_1xb32_digits.py): the
# pretrained backbone sees inputs in the range it was trained on
data_preprocessor = dict(type='SegDataPreProcessor', mean=[127.5] * 3, std=[127.5] * 3,
                         bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # upernet_r50's ImageNet ResNet; the VMamba gets its init_cfg below
    backbone=dict(_delete_=True, type='VMamba', arch=dict(dims=32, depths=(1, 1, 2, 1)),
                  out_indices=(0, 1, 2, 3), drop_path_rate=0.0,
                  init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=[32, 64, 128, 256], channels=64, num_classes=len(classes),
                     norm_cfg=dict(type='BN', requires_grad=True)),
    auxiliary_head=dict(in_channels=128, channels=32, num_classes=len(classes),
                        norm_cfg=dict(type='BN', requires_grad=True)),
    test_cfg=dict(mode='whole'))

data_root = 'data/digits_ade'
dataset = dict(type='BaseSegDataset', data_root=data_root, img_suffix='.png',
               seg_map_suffix='.png', reduce_zero_label=True,
               metainfo=dict(classes=classes, palette=[[0, 0, 0]] + [
                   [25 * i, 255 - 25 * i, 128] for i in range(10)]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale_factor=r, keep_ratio=True) for r in (0.75, 1.0, 1.25)],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations', reduce_zero_label=True)],
        [dict(type='PackSegInputs')]]),
]
train_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**dataset, data_prefix=dict(img_path='images/training',
                                             seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=1, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**dataset, data_prefix=dict(img_path='images/validation',
                                             seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

max_iters = 1600
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=400)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg={{_base_.mamba_no_decay}})
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=50, end=max_iters, by_epoch=False),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=800, max_keep_ckpts=2),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)

# the random generators saved with each checkpoint, restored on --resume (exact resume)
custom_hooks = [dict(type='RandomStateHook')]
