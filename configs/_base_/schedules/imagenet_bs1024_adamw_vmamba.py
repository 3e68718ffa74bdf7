# 300 epochs, AdamW lr 1e-3 at total batch 1024 (5e-4 per 512), weight decay 0.05, 20 warm-up
# epochs from 5e-7, cosine to 5e-6, gradient clipping 5.0, EMA 0.9999.
# Weight decay as in the authors' code: none on 1-D parameters (norms, Ds) and biases; every
# other parameter decayed, A_logs and dt_projs_bias included (Mamba's rule also spares A_logs:
# mamba_no_decay.py).
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=dict(max_norm=5.0),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=5e-4, by_epoch=True, begin=0, end=20,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=5e-6, by_epoch=True, begin=20, end=300,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=1024)
# EMA of the weights, and the random generators saved with each checkpoint (exact resume)
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL'),
                dict(type='RandomStateHook')]
