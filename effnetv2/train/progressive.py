"""Progressive learning with adaptive regularization (EfficientNetV2 paper, Algorithm 1), as plain data.

A run of E epochs is split into M stages. Stage i (0 … M-1) trains at image size ``S0 + (Se - S0)·i/(M-1)`` and
with each regularization value ``φ0 + (φe - φ0)·i/(M-1)`` (RandAugment magnitude, MixUp alpha, CutMix alpha,
dropout); with M = 1 the single stage takes the end values. Early stages are small, fast and lightly regularised,
late ones large and strongly regularised. The epochs are split into M equal parts, the last taking the remainder
(10 epochs in 3 stages: 3, 3, 4).

Image sizes are rounded down to a multiple of 8, except the last stage's, which is ``Se`` itself: the size the
run asked for (``--img-size``), the one a non-progressive run trains at and the one its saved config records.

RandAugment magnitude: the values are torchvision's ``RandAugment(magnitude=m)`` with its default 31 magnitude
bins, so m runs from 0 to 30 and each operation's strength is ``m / 30`` of its maximum (rotation
``linspace(0, 30°, 31)[m]`` = m degrees, shear ``0.3·m/30``, translation ``0.45·size·m/30``). The official
TensorFlow code (``google/automl`` ``efficientnetv2/autoaugment.py``) scales its magnitude L by
``L / _MAX_LEVEL`` with ``_MAX_LEVEL = 10`` (rotation ``30°·L/10``, shear ``0.3·L/10``), so the paper's L equals
torchvision's ``m = 3·L`` for the operations both share, and the paper's 15–25 (past its own maximum of 10: it
extrapolates, e.g. 45° rotations) have no torchvision counterpart. The presets below take the paper's numbers
as torchvision magnitudes (5 → 15/20/25 out of 30): the same shape of schedule, about a third of the official
code's strength, always within torchvision's range. Magnitudes are rounded to the nearest integer (torchvision
indexes its bins).

Constant-memory batches (``progressive_batch``): stage i's batch is ``batch · min((Se/Si)², max_batch_scale)``
(rounded down, never below ``batch``), and its LR scale is ``batch_i / batch`` (the linear scaling rule), so the
small early stages fill the device as the last one does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from effnetv2.defaults import MIN_IMAGE_SIZE

RANDAUG_MAX_MAGNITUDE = 30  # torchvision RandAugment's default num_magnitude_bins=31: magnitudes 0 … 30
DEFAULT_MAX_BATCH_SCALE = 4.0
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class Stage:
    """One stage: epochs ``first_epoch`` … ``end_epoch - 1`` (0-based) and what they train with."""

    index: int
    first_epoch: int
    end_epoch: int
    img_size: int
    batch_size: int
    lr_scale: float
    randaug_magnitude: int
    mixup: float
    cutmix: float
    drop: float

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.first_epoch


@dataclass(frozen=True)
class Preset:
    """(start, end) of each value, from the paper's Table 6; CutMix is not in the table (left to the flags)."""

    img_size: tuple[int, int]
    randaug_magnitude: tuple[float, float]
    mixup: tuple[float, float]
    drop: tuple[float, float]


PRESETS: dict[str, Preset] = {
    "s": Preset(img_size=(128, 300), randaug_magnitude=(5, 15), mixup=(0.0, 0.0), drop=(0.1, 0.3)),
    "m": Preset(img_size=(128, 380), randaug_magnitude=(5, 20), mixup=(0.0, 0.2), drop=(0.1, 0.4)),
    "l": Preset(img_size=(128, 380), randaug_magnitude=(5, 25), mixup=(0.0, 0.4), drop=(0.1, 0.5)),
}

# the paper's start values (Table 6, all three sizes), the defaults of the --*-start flags
DEFAULT_STARTS = {"randaug_magnitude": 5.0, "mixup": 0.0, "cutmix": 0.0, "drop": 0.1}


@dataclass(frozen=True)
class ProgressiveSchedule:
    """The stages of a run, in order; they cover epochs 0 … ``epochs - 1`` without gaps."""

    stages: tuple[Stage, ...]

    @property
    def epochs(self) -> int:
        return self.stages[-1].end_epoch

    def stage_for_epoch(self, epoch: int) -> Stage:
        """The stage that trains ``epoch`` (0-based)."""
        if not 0 <= epoch < self.epochs:
            raise ValueError(f"epoch {epoch} is outside the schedule's 0 … {self.epochs - 1}")
        return next(s for s in self.stages if epoch < s.end_epoch)

    def lines(self) -> list[str]:
        """One line per stage: its epochs (1-based, as the progress lines count), size, batch and regularization."""
        width = len(str(self.epochs))
        out = []
        for s in self.stages:
            epochs = f"{s.first_epoch + 1:>{width}}-{s.end_epoch:<{width}}".rstrip()
            lr = f" (lr x{s.lr_scale:.2f})" if s.lr_scale != 1.0 else ""
            out.append(
                f"stage {s.index + 1}/{len(self.stages)}: epochs {epochs}, {s.img_size} px, batch {s.batch_size}"
                f"{lr}, randaug {s.randaug_magnitude}, mixup {s.mixup:.3g}, cutmix {s.cutmix:.3g}, drop {s.drop:.3g}"
            )
        return out

    def to_record(self) -> list[dict[str, Any]]:
        """The stages as plain dicts (run.json, the resume state)."""
        return [asdict(s) for s in self.stages]


def interpolate(start: float, end: float, i: int, stages: int) -> float:
    """``start + (end - start)·i/(stages-1)``; the end value when there is one stage."""
    if stages == 1:
        return float(end)
    return start + (end - start) * i / (stages - 1)


def _check(stages: int, epochs: int, sizes: tuple[int, int], min_size: int, values: dict[str, tuple]) -> None:
    """Refuse a schedule that cannot run, in one line naming the option to change."""
    start, end = sizes
    if stages < 1:
        raise ValueError(f"--progressive {stages}: the number of stages must be at least 1")
    if epochs < stages:
        raise ValueError(
            f"--epochs {epochs} is fewer than the {stages} stages of --progressive {stages}; each stage needs at "
            "least one epoch: raise --epochs or lower --progressive"
        )
    if start > end:
        raise ValueError(
            f"--min-img-size {start} is larger than the final image size {end} (--img-size); progressive learning "
            "grows the image size: lower --min-img-size"
        )
    if start < min_size:
        raise ValueError(
            f"--min-img-size {start} is below the model's minimum input size {min_size}; raise --min-img-size"
        )
    for name, (lo, hi) in values.items():
        flag = name.replace("_", "-")
        for value, which in ((lo, f"--{flag}-start"), (hi, f"--{flag}")):
            if (
                value < 0
                or (name == "drop" and value >= 1)
                or (name == "randaug_magnitude" and value > RANDAUG_MAX_MAGNITUDE)
            ):
                bound = {"drop": "in [0, 1)", "randaug_magnitude": f"in 0 … {RANDAUG_MAX_MAGNITUDE}"}.get(name, ">= 0")
                raise ValueError(f"{which} {value}: must be {bound}")


def stage_size(start: int, end: int, i: int, stages: int) -> int:
    """Stage ``i``'s image size: the formula rounded down to a multiple of 8; the last stage's is ``end``."""
    if i == stages - 1:
        return int(end)
    size = math.floor(interpolate(start, end, i, stages))
    return max(SIZE_MULTIPLE, size // SIZE_MULTIPLE * SIZE_MULTIPLE)


def stage_batch(batch_size: int, size: int, end: int, max_scale: float) -> int:
    """The constant-memory batch of a stage at ``size``: ``batch_size · min((end/size)², max_scale)``, rounded
    down, never below ``batch_size``."""
    scale = min((end / size) ** 2, max_scale)
    return max(batch_size, math.floor(batch_size * scale))


def plan(
    stages: int,
    epochs: int,
    img_size: int,
    batch_size: int,
    *,
    min_img_size: Optional[int] = None,
    randaug_magnitude: tuple[float, float] = (DEFAULT_STARTS["randaug_magnitude"], 9),
    mixup: tuple[float, float] = (0.0, 0.0),
    cutmix: tuple[float, float] = (0.0, 0.0),
    drop: tuple[float, float] = (DEFAULT_STARTS["drop"], 0.0),
    progressive_batch: bool = False,
    max_batch_scale: float = DEFAULT_MAX_BATCH_SCALE,
    min_size: int = MIN_IMAGE_SIZE,
) -> ProgressiveSchedule:
    """The schedule of a run of ``epochs`` in ``stages`` stages ending at ``img_size`` (Se); ``min_img_size`` (S0)
    defaults to ``img_size // 2`` (the official code's ``ibase``). Each regularization value is ``(start, end)``.

    Raises ``ValueError`` (one line) for S0 > Se, fewer epochs than stages, S0 below ``min_size`` (the model's
    smallest input), a value out of range.
    """
    start_size = img_size // 2 if min_img_size is None else int(min_img_size)
    values = {"randaug_magnitude": randaug_magnitude, "mixup": mixup, "cutmix": cutmix, "drop": drop}
    _check(stages, epochs, (start_size, img_size), min_size, values)
    per = epochs // stages
    out = []
    for i in range(stages):
        size = stage_size(start_size, img_size, i, stages)
        batch = stage_batch(batch_size, size, img_size, max_batch_scale) if progressive_batch else batch_size
        v = {name: interpolate(lo, hi, i, stages) for name, (lo, hi) in values.items()}
        out.append(
            Stage(
                index=i,
                first_epoch=i * per,
                end_epoch=epochs if i == stages - 1 else (i + 1) * per,
                img_size=size,
                batch_size=batch,
                lr_scale=batch / batch_size,
                randaug_magnitude=round(v["randaug_magnitude"]),
                mixup=v["mixup"],
                cutmix=v["cutmix"],
                drop=v["drop"],
            )
        )
    return ProgressiveSchedule(tuple(out))
