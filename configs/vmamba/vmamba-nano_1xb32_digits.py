# The embedded default: a small VMamba on scikit-learn's handwritten digits written as an
# ImageNet-style folder (tools/dataset_converters/digits_to_folder.py data/digits).
# 2 CPU cores: about 3 minutes of training (`make demo`).
_base_ = ['../_base_/default_runtime_cls.py', '../_base_/schedules/mamba_no_decay.py']

data_root = 'data/digits'
model = dict(
    type='ImageClassifier',
    backbone=dict(type='VMamba', arch=dict(dims=32, depths=(1, 1, 2, 1)), out_indices=(3, ),
                  drop_path_rate=0.05),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=10, in_channels=256,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1, )),
)
data_preprocessor = dict(num_classes=10, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.75, 1.0), backend='pillow'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=32,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='train',
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
val_dataloader = dict(
    batch_size=64,
    num_workers=1,
    dataset=dict(type='CustomDataset', data_root=data_root, data_prefix='val',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg={{_base_.mamba_no_decay}},
    clip_grad=dict(max_norm=5.0),
)
max_epochs = 16
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=4)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=32)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=4, max_keep_ckpts=2))
custom_hooks = [dict(type='EMAHook', momentum=1e-3, priority='ABOVE_NORMAL'),
                dict(type='RandomStateHook')]
randomness = dict(seed=0)
