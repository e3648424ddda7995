"""Fine-tuning building blocks: the RW recipe (SGD-Nesterov + AGC, cosine with warmup, EMA) from torch's parts."""

from effnetv2.train.agc import adaptive_clip_grad_, clip_model_grads_, unitwise_norm
from effnetv2.train.ema import create_ema
from effnetv2.train.mix import mixup_cutmix
from effnetv2.train.param_groups import (
    apply_lr_scale,
    layer_ids,
    param_groups_layer_decay,
    param_groups_weight_decay,
)
from effnetv2.train.rng import get_rng_state, seed_everything, set_rng_state
from effnetv2.train.schedule import WarmupCosineLR, cosine_with_warmup

__all__ = [
    "WarmupCosineLR",
    "adaptive_clip_grad_",
    "apply_lr_scale",
    "clip_model_grads_",
    "cosine_with_warmup",
    "create_ema",
    "get_rng_state",
    "layer_ids",
    "mixup_cutmix",
    "param_groups_layer_decay",
    "param_groups_weight_decay",
    "seed_everything",
    "set_rng_state",
    "unitwise_norm",
]
