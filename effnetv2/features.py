"""Feature-level bookkeeping: which module ends each level, its channels and stride (timm's FeatureInfo)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union


@dataclass(frozen=True)
class FeatureLevel:
    """One tap: the output of ``module`` (a stage), ``num_chs`` channels at ``reduction`` × downsampling."""

    module: str
    num_chs: int
    reduction: int
    stage: int  # 1-based position among stem (0) and stages, as timm numbers them


class FeatureInfo:
    """The selected feature levels, with timm's accessors (``channels()``, ``reduction()``, ``module_name()``)."""

    def __init__(self, levels: Sequence[FeatureLevel], out_indices: Union[int, Sequence[int]]) -> None:
        self.levels = list(levels)
        out_indices = check_indices(out_indices, len(self.levels), "out_indices")
        # Outputs come in forward order, so the indices are sorted to describe them in that order.
        self.out_indices = tuple(sorted(set(resolve_indices(len(self.levels), out_indices)[0])))

    def _get(self, field: str, idx: Optional[Union[int, Sequence[int]]]) -> Union[list, int, str]:
        if idx is None:
            return [getattr(self.levels[i], field) for i in self.out_indices]
        if isinstance(idx, int):
            return getattr(self.levels[self.out_indices[idx]], field)
        return [getattr(self.levels[self.out_indices[i]], field) for i in idx]

    def channels(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self._get("num_chs", idx)

    def reduction(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self._get("reduction", idx)

    def module_name(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self._get("module", idx)

    def get_dicts(self) -> list[dict]:
        return [
            dict(module=lvl.module, num_chs=lvl.num_chs, reduction=lvl.reduction, stage=lvl.stage, index=i)
            for i, lvl in ((i, self.levels[i]) for i in self.out_indices)
        ]

    def __len__(self) -> int:
        return len(self.out_indices)

    def __getitem__(self, idx: int) -> dict:
        return self.get_dicts()[idx]

    def __repr__(self) -> str:
        return f"FeatureInfo({self.get_dicts()})"


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_indices(indices: object, num_levels: int, name: str = "indices") -> Union[int, list[int]]:
    """``indices`` as an int or a list of ints; a clear TypeError for anything else (a str, a float, bools ...)."""
    if _is_int(indices):
        return int(indices)
    if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
        raise TypeError(
            f"{name} must be an int (the last n of {num_levels} levels) or a sequence of ints (level indices 0 to "
            f"{num_levels - 1}, negative from the end), got {type(indices).__name__} {indices!r}"
        )
    wrong = [i for i in indices if not _is_int(i)]
    if wrong:
        raise TypeError(
            f"{name} must hold ints (level indices 0 to {num_levels - 1}, negative from the end), "
            f"got {', '.join(f'{type(i).__name__} {i!r}' for i in wrong[:3])}"
        )
    return [int(i) for i in indices]


def resolve_indices(num_levels: int, indices: Optional[Union[int, list[int]]] = None) -> tuple[list[int], int]:
    """timm's ``feature_take_indices``: None → all, int n → the last n, list → those (negative from the end).

    Returns the absolute indices and the largest one.
    """
    if indices is None:
        indices = num_levels
    indices = check_indices(indices, num_levels)
    take: list[int] = []
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {num_levels})")
        for i in range(indices):
            take.append(num_levels - indices + i)
    else:
        for i in indices:
            idx = num_levels + i if i < 0 else i
            if not 0 <= idx < num_levels:
                raise ValueError(f"feature index {i} is out of range (0 to {num_levels - 1})")
            take.append(idx)
    if len(take) == 0:
        raise ValueError("no feature index selected")
    return take, max(take)


__all__ = ["FeatureInfo", "FeatureLevel", "check_indices", "resolve_indices"]
