"""Building blocks: conv-BN-act (torchvision), squeeze-excite, MBConv, FusedMBConv, ConvResidual, global pooling."""

from effnetv2.layers.blocks import BLOCK_TYPES, ConvResidual, FusedMBConv, MBConv, conv_bn_act
from effnetv2.layers.pooling import POOL_TYPES, GlobalPool

__all__ = ["BLOCK_TYPES", "POOL_TYPES", "ConvResidual", "FusedMBConv", "GlobalPool", "MBConv", "conv_bn_act"]
