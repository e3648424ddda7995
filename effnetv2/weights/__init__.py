"""Checkpoints: the timm key map, reading files safely, and loading with timm's pretrained-style adaptation."""

from effnetv2.weights.key_map import KeyMap
from effnetv2.weights.loading import load_checkpoint, load_state_dict_into
from effnetv2.weights.reading import read_state_dict

__all__ = ["KeyMap", "load_checkpoint", "load_state_dict_into", "read_state_dict"]
