"""The ``features_only`` model as a torchvision detection / segmentation backbone.

torchvision's detectors (Faster R-CNN, Mask R-CNN, RetinaNet...) want a module returning an ``OrderedDict`` of
feature maps and carrying ``out_channels``. :class:`FeatureBackbone` adapts :class:`EfficientNetV2Features`,
with an optional ``torchvision.ops.FeaturePyramidNetwork`` on top::

    from torchvision.models.detection import FasterRCNN
    backbone = effnetv2.detection.FeatureBackbone.from_name("efficientnetv2_rw_m.agc_in1k", pretrained=True)
    detector = FasterRCNN(backbone, num_classes=91)

With the default ``out_indices=(1, 2, 3, 4)`` and FPN the outputs are ``'0'..'3'`` plus ``'pool'``: five maps,
which is what FasterRCNN's default anchor generator and RoI pooler expect.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from effnetv2.model import EfficientNetV2Features
from effnetv2.registry import create_model


class FeatureBackbone(nn.Module):
    """Feature maps as ``OrderedDict[str, Tensor]`` (keys ``'0'``, ``'1'``...), with ``out_channels``.

    Args:
        features: a ``features_only`` model.
        fpn_channels: width of an FPN over all levels (plus a max-pooled ``'pool'`` level); ``None`` returns
            only the deepest level as ``'0'`` with ``out_channels`` = its channel count.
    """

    def __init__(self, features: EfficientNetV2Features, fpn_channels: Optional[int] = 256) -> None:
        super().__init__()
        self.body = features
        channels = list(features.feature_info.channels())
        if fpn_channels:
            self.fpn: Optional[nn.Module] = FeaturePyramidNetwork(channels, fpn_channels, LastLevelMaxPool())
            self.out_channels = fpn_channels
        else:
            self.fpn = None
            self.out_channels = channels[-1]

    @classmethod
    def from_name(
        cls,
        model_name: str = "efficientnetv2_rw_m",
        out_indices: tuple[int, ...] = (1, 2, 3, 4),
        fpn_channels: Optional[int] = 256,
        **kwargs: Any,
    ) -> FeatureBackbone:
        """``create_model(model_name, features_only=True, out_indices=..., **kwargs)`` wrapped as a backbone."""
        return cls(create_model(model_name, features_only=True, out_indices=out_indices, **kwargs), fpn_channels)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        if self.fpn is None:
            return OrderedDict([("0", feats[-1])])
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
