# Mamba's weight-decay rule: none on norms, biases and other 1-D parameters, nor on the SSM's
# A_logs and Ds. The embedded digits configs use it; the ImageNet / COCO / ADE20K configs follow
# the authors instead (their code decays A_logs). To use it, list this file in a config's _base_
# and set optim_wrapper = dict(paramwise_cfg={{_base_.mamba_no_decay}}, ...).
mamba_no_decay = dict(
    norm_decay_mult=0.0,
    bias_decay_mult=0.0,
    flat_decay_mult=0.0,
    custom_keys={'.A_logs': dict(decay_mult=0.0), '.Ds': dict(decay_mult=0.0)},
)
