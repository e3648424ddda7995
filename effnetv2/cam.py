"""Class activation maps: where the model looked for a class, computed by TorchCAM (optional extra
``effnetv2[explain]``).

TorchCAM was chosen over pytorch-grad-cam and Captum for this network: it hooks a named layer of any
``nn.Module`` (effnetv2's models need no wrapper), offers the Grad-CAM family (Grad-CAM, Grad-CAM++, Smooth
Grad-CAM++, XGrad-CAM, LayerCAM) and Score-CAM, and depends only on torch and matplotlib (pytorch-grad-cam also
pulls OpenCV, scikit-learn and SciPy; Captum has no Grad-CAM++ or Score-CAM).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

from effnetv2.defaults import CAM_METHODS

METHODS = CAM_METHODS  # effnetv2's method names -> TorchCAM's classes (kept where the command line reads them)
HEAD_LAYER = "head"  # the last convolution (+ BatchNorm, activation): the maps the classifier pools


@dataclass
class Explanation:
    """``maps`` (N, K, h, w) in [0, 1] at the layer's resolution, for ``classes`` (N, K) whose softmax
    probabilities are ``probs`` (N, K); ``layer`` is the module the maps come from."""

    maps: Tensor
    classes: Tensor
    probs: Tensor
    layer: str


def _torchcam_methods():
    try:
        return importlib.import_module("torchcam.methods")
    except ImportError as e:
        raise ImportError(
            "class activation maps need TorchCAM: pip install 'effnetv2[explain]' (torchcam and matplotlib)"
        ) from e


def torchcam_class(method: str) -> type:
    """The TorchCAM class of ``method``; ImportError when TorchCAM (or this method, in its installed version) is
    missing."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    methods = _torchcam_methods()
    cam_class = getattr(methods, METHODS[method], None)
    if cam_class is None:
        from importlib.metadata import version

        raise ImportError(
            f"--method {method}: TorchCAM {version('torchcam')} has no {METHODS[method]}; pip install -U torchcam"
        )
    return cam_class


def _takes_keyword(function: Callable[..., Any], name: str) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def resolve_layer(model: nn.Module, layer: Union[int, str, None]) -> str:
    """The module name of ``layer``: None → the head conv; an int → that ``feature_info`` level; else a name."""
    if layer is None:
        return HEAD_LAYER
    if isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
        levels = [f["module"] for f in model.feature_info]
        index = int(layer)
        if not -len(levels) <= index < len(levels):
            raise ValueError(f"feature level {index} out of range: the model has levels 0 to {len(levels) - 1}")
        return levels[index]
    names = dict(model.named_modules())
    if layer not in names:
        raise ValueError(f"no layer named {layer!r}: give a feature level (0 to 4), {HEAD_LAYER!r}, or a module name")
    return layer


def explain(
    model: nn.Module,
    images: Tensor,
    classes: Union[int, Sequence[int], None] = None,
    topk: int = 1,
    method: str = "gradcam",
    layer: Union[int, str, None] = None,
) -> Explanation:
    """Class activation maps of ``images`` (N, 3, H, W, normalised as the model expects) for ``classes`` (one
    index or one per image), or for each image's ``topk`` predicted classes.

    The model is run in eval mode with gradients on (the Grad-CAM methods back-propagate the class score); its
    parameters are left as they were.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if getattr(model, "num_classes", 0) < 1:
        raise ValueError("the model has no classifier (num_classes=0): a class activation map needs class scores")
    if classes is None and not 1 <= topk <= model.num_classes:
        raise ValueError(f"topk={topk}: the model has {model.num_classes} classes; ask for 1 to {model.num_classes}")
    cam_class = torchcam_class(method)
    layer_name = resolve_layer(model, layer)
    was_training = model.training
    model.eval()
    extractor = cam_class(model, target_layer=layer_name, input_shape=tuple(images.shape[1:]))
    # The gradient methods back-propagate once per class and must keep the graph for the next; Score-CAM runs the
    # model on masked inputs instead and takes no such argument (TorchCAM 0.5 raises TypeError on it).
    keeps_graph = _takes_keyword(extractor._get_weights, "retain_graph")
    try:
        with torch.enable_grad():
            scores = model(images)
            probs = scores.detach().softmax(dim=1)
            if classes is None:
                chosen = probs.topk(topk, dim=1).indices
            else:
                wanted = [classes] * len(images) if isinstance(classes, int) else list(classes)
                if len(wanted) != len(images):
                    raise ValueError(f"{len(wanted)} classes for {len(images)} images")
                if not all(0 <= c < probs.shape[1] for c in wanted):
                    raise ValueError(f"class indices must be in [0, {probs.shape[1] - 1}], got {wanted}")
                chosen = torch.tensor(wanted)[:, None]
            maps = []
            for k in range(chosen.shape[1]):
                last = k == chosen.shape[1] - 1
                options = {"retain_graph": not last} if keeps_graph else {}
                maps.append(extractor(chosen[:, k].tolist(), scores, **options)[0].detach())
    finally:
        extractor.remove_hooks()
        model.train(was_training)
    return Explanation(
        maps=torch.stack(maps, dim=1),
        classes=chosen,
        probs=probs.gather(1, chosen),
        layer=layer_name,
    )


def overlay(image, heat_map: Tensor, alpha: float = 0.5):
    """``heat_map`` (h, w, in [0, 1]) resized onto the PIL ``image`` as a colour map (TorchCAM's ``overlay_mask``)."""
    from torchcam.utils import overlay_mask
    from torchvision.transforms.functional import to_pil_image

    return overlay_mask(image, to_pil_image(heat_map.float().clamp(0, 1), mode="F"), alpha=alpha)


__all__ = ["METHODS", "Explanation", "explain", "overlay", "resolve_layer"]
