"""The one declarative map between our module names and timm's, derived from the architecture spec.

Parameter and buffer suffixes (``weight``, ``bias``, ``running_mean``, ...) are the same on both sides; only
module paths differ, so the tables below map module paths.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from effnetv2.layers.blocks import BLOCK_TYPES
from effnetv2.spec import ModelSpec

STEM = {"stem.0": "conv_stem", "stem.1": "bn1"}
HEAD = {"head.0": "conv_head", "head.1": "bn2", "classifier": "classifier"}


class KeyMap:
    """Two-way translation of state-dict keys between effnetv2 and timm for one architecture."""

    def __init__(self, spec: ModelSpec) -> None:
        modules = dict(STEM)
        for s, stage in enumerate(spec.stages):
            for b in range(stage.repeats):
                for ours, theirs in BLOCK_TYPES[stage.block].timm_keys(stage, spec).items():
                    modules[f"stages.{s}.{b}.{ours}"] = f"blocks.{s}.{b}.{theirs}"
        modules.update(HEAD)
        self._to_timm = modules
        self._to_ours = {theirs: ours for ours, theirs in modules.items()}

    @property
    def modules(self) -> frozenset[str]:
        """Our module paths that hold tensors (``stem.0``, ``stages.3.0.se.fc1``, ..., ``classifier``)."""
        return frozenset(self._to_timm)

    @staticmethod
    def _translate(key: str, table: Mapping[str, str]) -> str:
        module, _, leaf = key.rpartition(".")
        if module not in table:
            raise KeyError(key)
        return f"{table[module]}.{leaf}"

    def to_timm(self, key: str) -> str:
        """``stages.3.0.se.fc1.weight`` → ``blocks.3.0.se.conv_reduce.weight``; KeyError if unknown."""
        return self._translate(key, self._to_timm)

    def to_ours(self, key: str) -> str:
        """``blocks.3.0.se.conv_reduce.weight`` → ``stages.3.0.se.fc1.weight``; KeyError if unknown."""
        return self._translate(key, self._to_ours)

    def state_dict_to_timm(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {self.to_timm(k): v for k, v in state_dict.items()}

    def state_dict_to_ours(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {self.to_ours(k): v for k, v in state_dict.items()}

    @staticmethod
    def is_timm_format(state_dict: Mapping[str, Tensor]) -> bool:
        """True when the keys are timm's (``conv_stem``/``blocks``) rather than ours (``stem``/``stages``)."""
        return any(k.startswith(("conv_stem.", "blocks.")) for k in state_dict)
