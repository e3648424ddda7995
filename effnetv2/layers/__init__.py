"""Building blocks: conv-BN-act (torchvision), squeeze-excite, MBConv, FusedMBConv, global pooling."""

from effnetv2.layers.blocks import FusedMBConv, MBConv, conv_bn_act
from effnetv2.layers.pooling import POOL_TYPES, GlobalPool

__all__ = ["POOL_TYPES", "FusedMBConv", "GlobalPool", "MBConv", "conv_bn_act"]
