"""The other ways timm builds a ``features_only`` model (``feature_cls=``), around the classifier model.

- ``None`` (the default): :class:`~effnetv2.model.EfficientNetV2Features`, the network's own features model
  (timm's ``EfficientNetFeatures``).
- ``'getter'``: :class:`FeatureGetterNet`, the classifier's ``forward_intermediates`` as a features model, the
  layers no level needs pruned (timm's ``FeatureGetterNet``).
- ``'fx'``: :class:`FeatureGraphNet`, the levels taken from the torch.fx graph of the classifier by torchvision's
  ``create_feature_extractor`` (timm's ``FeatureGraphNet``).

The three return the same maps (tested). timm's ``'hook'`` and ``'dict'`` are not offered: the first two cover
what they do for this network.
"""

from typing import Any, Optional, Union

from torch import Tensor, nn

from effnetv2.features import FeatureInfo
from effnetv2.model import EfficientNetV2

FEATURE_CLASSES = (None, "getter", "fx")


def check_feature_cls(feature_cls: Any) -> Optional[str]:
    if feature_cls not in FEATURE_CLASSES:
        supported = ", ".join(repr(c) for c in FEATURE_CLASSES)
        raise ValueError(
            f"feature_cls={feature_cls!r} is not supported by effnetv2; supported: {supported} (None: the native "
            "features model; 'getter': forward_intermediates; 'fx': a torch.fx graph)"
        )
    return feature_cls


class _Wrapper(nn.Module):
    pretrained_cfg: dict[str, Any]

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg


class FeatureGetterNet(_Wrapper):
    """The ``out_indices`` levels of ``model.forward_intermediates`` as a list, like timm's ``FeatureGetterNet``
    (state dict keys under ``model.``)."""

    def __init__(self, model: EfficientNetV2, out_indices: Union[int, tuple[int, ...]], prune: bool = True) -> None:
        super().__init__()
        self.feature_info = FeatureInfo(model._levels, out_indices)
        if prune:
            model.prune_intermediate_layers(list(self.feature_info.out_indices))
        self.model = model
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.feature_info.out_indices), intermediates_only=True)


class FeatureGraphNet(_Wrapper):
    """The ``out_indices`` levels read off the classifier's FX graph (torchvision's ``create_feature_extractor``),
    like timm's ``FeatureGraphNet`` (state dict keys under ``graph_module.``); it scripts."""

    def __init__(self, model: EfficientNetV2, out_indices: Union[int, tuple[int, ...]]) -> None:
        from torchvision.models.feature_extraction import create_feature_extractor

        super().__init__()
        self.feature_info = FeatureInfo(model._levels, out_indices)
        names = self.feature_info.module_name()
        self.graph_module = create_feature_extractor(model, return_nodes={name: name for name in names})
        self.pretrained_cfg = getattr(model, "pretrained_cfg", {})

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.graph_module(x).values())


def wrap_features(model: EfficientNetV2, feature_cls: str, out_indices: Union[int, tuple[int, ...]]) -> nn.Module:
    """The ``feature_cls`` features model around the (loaded) classifier ``model``."""
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in ("num_classes", "classifier", "global_pool")}
    wrapped = FeatureGetterNet(model, out_indices) if feature_cls == "getter" else FeatureGraphNet(model, out_indices)
    wrapped.pretrained_cfg = cfg
    return wrapped.train(model.training)


__all__ = ["FEATURE_CLASSES", "FeatureGetterNet", "FeatureGraphNet", "check_feature_cls", "wrap_features"]
