"""Checkpoints: the timm key map, reading files safely, loading with timm's pretrained-style adaptation, the Hub,
and saving / converting in timm's format."""

from effnetv2.weights.convert import convert_checkpoint, convert_state_dict
from effnetv2.weights.key_map import KeyMap
from effnetv2.weights.loading import load_checkpoint, load_state_dict_into
from effnetv2.weights.reading import read_state_dict
from effnetv2.weights.saving import push_to_hub, save_pretrained, save_state_dict

__all__ = [
    "KeyMap",
    "convert_checkpoint",
    "convert_state_dict",
    "load_checkpoint",
    "load_state_dict_into",
    "push_to_hub",
    "read_state_dict",
    "save_pretrained",
    "save_state_dict",
]
