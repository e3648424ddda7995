"""A randomly initialised model made well-behaved enough for precision checks, and a task it can solve.

Neither the tests nor the benchmark can download trained weights, and a freshly initialised 60-block
network is chaotic: with unit-gain residual branches and BatchNorm statistics from other inputs its
activations grow to ~1e6 and fp32 itself (against fp64) is off by 1e-4 relative. Trained networks are not
like that. This module builds a stand-in that is:

- **calibrated**: every BatchNorm's running statistics are set, in eval mode and in network order, from
  the activations the network actually produces on a calibration batch; affine terms are random;
  residual branches end in a BN whose gain is scaled by ``residual_gain`` (trained EfficientNets have
  small gains there), so activations stay O(1) through all blocks;
- **meaningful**: :func:`prototype_classifier` turns the classifier into a nearest-prototype classifier
  over the embeddings of ``num_classes`` exemplar images, and :func:`mixed_images` blends exemplars so
  that the fp32 predictions have a spread of margins, from confident to nearly tied. Top-1 agreement
  between reduced precision and fp32 on those images is then a real measurement: a wrong reduced-precision
  path gives near-chance agreement, an exact one 100 %.

Used by ``scripts/benchmark.py`` and by ``tests/test_optimize.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def smooth_images(n: int, size: int, seed: int = 0) -> Tensor:
    """Natural-looking inputs: smooth random colour fields with finer detail, roughly unit variance."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, max(size // 32, 2), max(size // 32, 2), generator=g)
    middle = torch.randn(n, 3, max(size // 8, 2), max(size // 8, 2), generator=g)
    fine = torch.randn(n, 3, size, size, generator=g)
    img = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.5 * F.interpolate(middle, size=(size, size), mode="bilinear", align_corners=False)
    return img + 0.05 * fine


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: Tensor, residual_gain: float = 0.2, seed: int = 0) -> nn.Module:
    """Random BN affine terms, then running statistics measured in eval mode on ``images`` (in place)."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.weight.copy_(1.0 + 0.2 * torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(0.1 * torch.randn(bn.num_features, generator=g))
    for block in model.modules():
        if getattr(block, "use_residual", False):
            block.project[1].weight.mul_(residual_gain)

    def set_stats(bn: nn.BatchNorm2d, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0]
        bn.running_mean.copy_(x.mean((0, 2, 3)))
        bn.running_var.copy_(x.var((0, 2, 3)))

    hooks = [bn.register_forward_pre_hook(set_stats) for bn in bns]
    try:
        model.eval()
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return model


@torch.no_grad()
def prototype_classifier(model: nn.Module, exemplars: Tensor, scale: float = 10.0) -> nn.Module:
    """Make the classifier a nearest-prototype rule over the exemplars' embeddings (class k = exemplar k).

    ``logit_k(x) = -scale * |f(x) - e_k|² / (2 r²) + const`` is linear in the embedding ``f(x)``;
    ``r`` is the exemplars' mean distance from their centre, so logits are O(scale).
    """
    model.eval()
    emb = model.forward_head(model.forward_features(exemplars), pre_logits=True)
    mean = emb.mean(0)
    centred = emb - mean
    gain = scale / centred.norm(dim=1).pow(2).mean()
    model.reset_classifier(len(exemplars))
    model.classifier.weight.copy_(centred * gain)
    model.classifier.bias.copy_(-(centred * gain) @ mean - 0.5 * gain * centred.pow(2).sum(1))
    return model


def mixed_images(exemplars: Tensor, n: int, max_mix: float = 0.5, noise: float = 0.1, seed: int = 0) -> Tensor:
    """``n`` blends ``(1 - a) * exemplar_i + a * exemplar_j + noise`` with ``a`` uniform in [0, max_mix)."""
    g = torch.Generator().manual_seed(seed)
    k = len(exemplars)
    i = torch.arange(n) % k
    j = (i + torch.randint(1, k, (n,), generator=g)) % k
    a = (torch.rand(n, generator=g) * max_mix)[:, None, None, None]
    # Rescaled so a blend keeps its parts' contrast (a plain average of two fields is flatter than either).
    blend = ((1 - a) * exemplars[i] + a * exemplars[j]) / ((1 - a) ** 2 + a**2).sqrt()
    return blend + noise * torch.randn(blend.shape, generator=g)


def make_calibrated_model(
    create, img_size: int, num_classes: int = 10, calib_images: int = 16, seed: int = 0
) -> tuple[nn.Module, Tensor]:
    """``create()`` → a calibrated model with a prototype classifier, and its exemplar images."""
    torch.manual_seed(seed)
    model = create()
    calibrate_batchnorm(model, smooth_images(calib_images, img_size, seed=seed + 1), seed=seed)
    exemplars = smooth_images(num_classes, img_size, seed=seed + 2)
    prototype_classifier(model, exemplars)
    return model.eval(), exemplars
