"""A well-conditioned stand-in for a trained EfficientNet: benchmark and test code without downloading weights.

A freshly initialised 60-block network is chaotic: with unit-gain residual branches and BatchNorm statistics from
other inputs its activations grow to ~1e7, most squeeze-excite gates saturate at 0 or 1, and float32 itself
(against float64) is off by tens of percent. On such weights a wrong activation or bias can change the outputs by
nothing, a parity test proves nothing and a speed or precision measurement means little. This module turns a fresh
network into a stand-in that behaves like a trained one (O(1) activations, few saturated gates, logits of a few
units). It works on timm's EfficientNets and on effnetv2's, finding the parts by what they are, not by name, and
imports neither timm nor anything outside torch and effnetv2:

    import effnetv2
    from effnetv2.testing import condition, smooth_images

    model = condition(effnetv2.create_model("tf_efficientnetv2_b0"), smooth_images(16, 128, seed=1))

- :func:`condition`: mildly random BatchNorm affine terms and squeeze-excite biases, each residual branch's last
  BatchNorm gain scaled by ``residual_gain`` (trained EfficientNets have small gains there), then every BatchNorm's
  running statistics measured in eval mode, in network order, on natural-looking images
  (:func:`calibrate_batchnorm`), so that activations stay O(1) through all blocks; then a tempered classifier
  (:func:`temper_classifier`): logits of a few units.
- :func:`prototype_classifier`, :func:`make_calibrated_model` and :func:`mixed_images` give a task the model can
  get right or wrong: a nearest-prototype classifier over exemplar images, and blends of exemplars with a spread
  of fp32 margins, from confident to nearly tied, so top-1 agreement of reduced precision with fp32 is a real
  measurement.
- :func:`conditioning` measures what a test can assert: the largest activation, the share of saturated gates.
- :func:`smooth_images` (from :mod:`effnetv2.inference.compare`, re-exported here): the natural-looking fields
  the stand-in is calibrated and judged on.

The test suite's timm oracle (``tests/conftest.py``), the benchmark scripts (``scripts/``) and
``scripts/make_demo_checkpoint.py`` are built with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from effnetv2.inference.compare import smooth_images  # the natural-looking fields every comparison uses

__all__ = [
    "calibrate_batchnorm",
    "condition",
    "conditioning",
    "make_calibrated_model",
    "mixed_images",
    "prototype_classifier",
    "randomize_affine",
    "residual_branch_norms",
    "smooth_images",
    "temper_classifier",
]


def residual_branch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The last BatchNorm of every block with a residual add (timm: ``has_skip``; effnetv2: ``use_residual``).

    timm's InvertedResidual ends in ``bn3``, EdgeResidual and DepthwiseSeparable in ``bn2``, effnetv2's blocks in
    ``project[1]``: in each the branch's last BatchNorm is the last one among the block's modules.
    """
    norms = []
    for block in model.modules():
        if getattr(block, "has_skip", False) or getattr(block, "use_residual", False):
            norms.append([m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1])
    return norms


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: Tensor, capture: Optional[nn.Module] = None) -> Optional[Tensor]:
    """Set every BatchNorm's running statistics to those of its input on ``images``, in eval mode (in place).

    One eval-mode pass in network order: each BatchNorm's statistics are set just before it runs, so every later
    layer is calibrated on the already-calibrated activations before it (train-mode statistics would differ), and
    the pass computes what the calibrated model gives. Returns the input of ``capture`` (a module of ``model``)
    in that pass, e.g. the classifier's: the calibrated model's embeddings of ``images``.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    captured = []

    def set_stats(bn: nn.BatchNorm2d, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0]
        bn.running_mean.copy_(x.mean((0, 2, 3)))
        bn.running_var.copy_(x.var((0, 2, 3)))

    hooks = [bn.register_forward_pre_hook(set_stats) for bn in bns]
    if capture is not None:
        hooks.append(capture.register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0])))
    _eval_pass(model, images, hooks)
    return captured[0] if captured else None


def _eval_pass(model: nn.Module, images: Tensor, hooks: list[torch.utils.hooks.RemovableHandle]) -> None:
    """One eval-mode forward of ``images`` for its hooks' sake; the hooks are removed after it, whatever happens."""
    try:
        model.eval()
        model(images)
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def randomize_affine(model: nn.Module, residual_gain: float = 0.2, seed: int = 0) -> nn.Module:
    """Mildly random BatchNorm affine terms and conv biases (squeeze-excite), small residual-branch gains."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(1.0 + 0.2 * torch.randn(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
        elif isinstance(m, nn.Conv2d) and m.bias is not None:  # squeeze-excite: initialised to 0
            m.bias.copy_(0.25 * torch.randn(m.out_channels, generator=g))
    for bn in residual_branch_norms(model):
        bn.weight.mul_(residual_gain)
    return model


@torch.no_grad()
def temper_classifier(classifier: nn.Linear, embeddings: Tensor, logit_std: float = 2.0) -> nn.Linear:
    """Make a (random) classifier see only how ``embeddings`` differ from their mean, with logits of std ``logit_std``.

    A random linear map sees every direction of the embedding. Its rows lose their component along the mean
    embedding, so the logits carry no large common offset that a bias would have to cancel (cancellation that
    reduced precision turns into error), and are scaled to a few units: softmax probabilities stay informative
    (not one-hot) and a change anywhere in the network moves the logits in proportion. The bias is mild and random.
    """
    mean = embeddings.mean(0)
    weight = classifier.weight
    weight.sub_(torch.outer(weight @ mean, mean) / mean.dot(mean))
    weight.mul_(logit_std / ((embeddings - mean) @ weight.T).std())
    g = torch.Generator().manual_seed(0)  # a mild random bias, so a classifier that drops it is seen
    classifier.bias.copy_(0.25 * logit_std * torch.randn(classifier.out_features, generator=g))
    return classifier


def condition(
    model: nn.Module, images: Tensor, residual_gain: float = 0.2, logit_std: float = 2.0, seed: int = 0
) -> nn.Module:
    """A fresh timm or effnetv2 EfficientNet made well-conditioned (in place; see the module docstring)."""
    randomize_affine(model, residual_gain, seed)
    classifier = model.get_classifier() if getattr(model, "num_classes", 0) else None
    embeddings = calibrate_batchnorm(model, images, capture=classifier)
    if classifier is not None:
        temper_classifier(classifier, embeddings, logit_std)
    return model.eval()


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
    create: Callable[[], nn.Module], img_size: int, num_classes: int = 10, calib_images: int = 16, seed: int = 0
) -> tuple[nn.Module, Tensor]:
    """``create()`` → a conditioned model with a prototype classifier, and its exemplar images."""
    torch.manual_seed(seed)
    model = randomize_affine(create(), seed=seed)
    calibrate_batchnorm(model, smooth_images(calib_images, img_size, seed=seed + 1))
    exemplars = smooth_images(num_classes, img_size, seed=seed + 2)
    prototype_classifier(model, exemplars)
    return model.eval(), exemplars


@torch.no_grad()
def conditioning(model: nn.Module, images: Tensor) -> dict[str, float]:
    """How tame ``model`` is on ``images``: its largest activation and the share of saturated sigmoid gates.

    ``max_activation``: max |output| over every module; ``saturated_gates``: the fraction of squeeze-excite gate
    values below 0.01 or above 0.99 (a saturated gate passes no change in its input on).
    """
    peak = torch.zeros((), dtype=torch.float64)
    gates = []

    def track(module: nn.Module, inputs: tuple[Tensor, ...], output) -> None:
        nonlocal peak
        for t in output if isinstance(output, (list, tuple)) else [output]:
            if isinstance(t, Tensor) and t.is_floating_point():
                peak = torch.maximum(peak, t.detach().abs().max().double())
        if isinstance(module, nn.Sigmoid):
            gates.append(output.detach().flatten())

    hooks = [m.register_forward_hook(track) for m in model.modules()]
    _eval_pass(model, images, hooks)
    gate = torch.cat(gates) if gates else torch.empty(0)
    saturated = ((gate < 0.01) | (gate > 0.99)).double().mean().item() if gates else 0.0
    return dict(max_activation=peak.item(), saturated_gates=saturated, gates=gate.numel())
