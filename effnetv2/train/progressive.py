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

import dataclasses
import math
from collections.abc import Collection
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
            epochs = f"{s.first_epoch + 1:>{width}}" + (f"-{s.end_epoch}" if s.epochs > 1 else "")
            lr = f" (lr x{s.lr_scale:.2f})" if s.lr_scale != 1.0 else ""
            out.append(
                f"stage {s.index + 1}/{len(self.stages)}: epochs {epochs}, {s.img_size} px, batch {s.batch_size}"
                f"{lr}, randaug {s.randaug_magnitude}, mixup {s.mixup:.3g}, cutmix {s.cutmix:.3g}, drop {s.drop:.3g}"
            )
        return out

    def to_record(self) -> list[dict[str, Any]]:
        """The stages as plain dicts (config.json's training entry, the resume state)."""
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


# --- what a training run (effnetv2.train.runner) needs: options in, stages out --------------------------------------

# The options a preset sets, each to (start or end) of which of its pairs; a given option keeps its value.
_PRESET_FIELDS = {
    "min_img_size": ("img_size", 0),
    "img_size": ("img_size", 1),
    "randaug_magnitude_start": ("randaug_magnitude", 0),
    "randaug_magnitude": ("randaug_magnitude", 1),
    "mixup_start": ("mixup", 0),
    "mixup": ("mixup", 1),
    "drop_start": ("drop", 0),
    "drop": ("drop", 1),
}
DEFAULT_RANDAUG_MAGNITUDE = 9  # torchvision's RandAugment default, the end value unless told otherwise


def with_preset(opts: Any, given: Optional[Collection[str]]) -> Any:
    """``opts`` (a :class:`~effnetv2.train.runner.TrainOptions`) with its ``progressive_preset``'s values in every
    option the caller did not set: those not in ``given`` or, with ``given`` None (the Python API), those at their
    default."""
    if not getattr(opts, "progressive_preset", None):
        return opts
    if opts.progressive_preset not in PRESETS:
        raise ValueError(f"--progressive-preset {opts.progressive_preset!r}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[opts.progressive_preset]
    defaults = {f.name: f.default for f in dataclasses.fields(opts)}
    changes = {}
    for name, (pair, end) in _PRESET_FIELDS.items():
        set_by_caller = name in given if given is not None else getattr(opts, name) != defaults[name]
        if not set_by_caller:
            changes[name] = getattr(preset, pair)[end]
    return dataclasses.replace(opts, **changes)


def settings(opts: Any) -> Optional[dict[str, Any]]:
    """What shapes a run's schedule besides ``--epochs`` and the end values (recorded in the resume state, which
    refuses a resume that changes it); None without ``--progressive``."""
    if not opts.progressive:
        return None
    return {
        "stages": opts.progressive,
        "min_img_size": opts.min_img_size,
        "randaug_magnitude_start": _start(opts, "randaug_magnitude"),
        "mixup_start": _start(opts, "mixup"),
        "cutmix_start": _start(opts, "cutmix"),
        "drop_start": _start(opts, "drop"),
        "progressive_batch": bool(opts.progressive_batch),
    }


def _start(opts: Any, name: str) -> float:
    """A stage-0 value: the one given, else the paper's start, but never above the run's end value (a regularization
    that the run's own options keep low, such as the default ``--drop 0``, does not fall across the stages)."""
    value = getattr(opts, f"{name}_start")
    if value is not None:
        return value
    end = getattr(opts, name)
    return DEFAULT_STARTS[name] if end is None else min(DEFAULT_STARTS[name], end)


def schedule_for(opts: Any, img_size: int, min_size: int = MIN_IMAGE_SIZE) -> Optional[ProgressiveSchedule]:
    """The schedule of a run with options ``opts`` ending at ``img_size``; None without ``--progressive``."""
    if not opts.progressive:
        return None
    if opts.auto_augment == "trivial":
        raise ValueError(
            "--progressive grows RandAugment's magnitude stage by stage; --auto-augment trivial cannot go with it: "
            "leave --auto-augment out"
        )
    end_magnitude = DEFAULT_RANDAUG_MAGNITUDE if opts.randaug_magnitude is None else opts.randaug_magnitude
    return plan(
        opts.progressive,
        opts.epochs,
        img_size,
        opts.batch_size,
        min_img_size=opts.min_img_size,
        randaug_magnitude=(_start(opts, "randaug_magnitude"), end_magnitude),
        mixup=(_start(opts, "mixup"), opts.mixup),
        cutmix=(_start(opts, "cutmix"), opts.cutmix),
        drop=(_start(opts, "drop"), opts.drop),
        progressive_batch=opts.progressive_batch,
        min_size=min_size,
    )


def stage_values(stage: Stage) -> dict[str, Any]:
    """What a metrics row records of the stage that trained its epoch (TensorBoard and curves.png read them)."""
    return {
        "stage": stage.index + 1,
        "img_size": stage.img_size,
        "batch_size": stage.batch_size,
        "randaug_magnitude": stage.randaug_magnitude,
        "mixup": stage.mixup,
        "cutmix": stage.cutmix,
        "drop": stage.drop,
    }


def apply_stage(stage: Stage, model: Any, train_set: Any, step_cfg: Any, num_classes: int, norm: dict) -> None:
    """Make the next epochs train as ``stage`` says: ``train_set``'s transform at its size and RandAugment
    magnitude (``norm``: interpolation, mean, std), its MixUp/CutMix as ``step_cfg``'s batch transform, its dropout
    on ``model`` (unwrapped: the attribute its ``forward_head`` reads)."""
    from effnetv2.data import create_transform
    from effnetv2.train.mix import mixup_cutmix

    train_set.transform = create_transform(
        stage.img_size, is_training=True, auto_augment="rand", randaug_magnitude=stage.randaug_magnitude, **norm
    )
    step_cfg.batch_transform = mixup_cutmix(num_classes, stage.mixup, stage.cutmix)
    model.drop_rate = stage.drop
