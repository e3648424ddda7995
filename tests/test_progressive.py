"""Progressive learning's schedule (effnetv2.train.progressive): the per-stage values are the paper's formula."""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Optional

import pytest
import torch

from effnetv2.train.progressive import (
    PRESETS,
    apply_stage,
    interpolate,
    plan,
    schedule_for,
    settings,
    with_preset,
)


def _formula(start: float, end: float, i: int, m: int) -> float:
    return end if m == 1 else start + (end - start) * i / (m - 1)


def test_four_stages_follow_the_formula():
    s = plan(
        4,
        12,
        224,
        16,
        min_img_size=128,
        randaug_magnitude=(5, 15),
        mixup=(0.0, 0.2),
        cutmix=(0.0, 1.0),
        drop=(0.1, 0.4),
    )
    assert [st.index for st in s.stages] == [0, 1, 2, 3]
    assert [(st.first_epoch, st.end_epoch) for st in s.stages] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    # 128, 160, 192, 224: multiples of 8 already
    assert [st.img_size for st in s.stages] == [128, 160, 192, 224]
    for i, st in enumerate(s.stages):
        assert st.randaug_magnitude == round(_formula(5, 15, i, 4))
        assert st.mixup == pytest.approx(_formula(0.0, 0.2, i, 4))
        assert st.cutmix == pytest.approx(_formula(0.0, 1.0, i, 4))
        assert st.drop == pytest.approx(_formula(0.1, 0.4, i, 4))
        assert st.batch_size == 16 and st.lr_scale == 1.0
    assert [st.randaug_magnitude for st in s.stages] == [5, 8, 12, 15]  # 8.33 and 11.67 rounded


def test_one_stage_takes_the_end_values():
    s = plan(1, 5, 96, 8, min_img_size=64, randaug_magnitude=(5, 11), mixup=(0, 0.3), drop=(0.1, 0.2))
    (only,) = s.stages
    assert (only.first_epoch, only.end_epoch, only.img_size) == (0, 5, 96)
    assert (only.randaug_magnitude, only.mixup, only.drop) == (11, 0.3, 0.2)
    assert interpolate(1.0, 7.0, 0, 1) == 7.0


def test_epochs_that_do_not_divide_give_the_last_stage_the_remainder():
    s = plan(3, 11, 128, 8)
    assert [(st.first_epoch, st.end_epoch) for st in s.stages] == [(0, 3), (3, 6), (6, 11)]
    assert [s.stage_for_epoch(e).index for e in range(11)] == [0] * 3 + [1] * 3 + [2] * 5
    with pytest.raises(ValueError, match="outside"):
        s.stage_for_epoch(11)


def test_sizes_round_down_to_multiples_of_8_and_the_last_is_the_final_size():
    # S0 = 300 // 2 = 150 (the default), Se = 300 (not a multiple of 8): 150, 200, 250, 300 by the formula
    s = plan(4, 8, 300, 8)
    raw = [_formula(150, 300, i, 4) for i in range(4)]
    assert [st.img_size for st in s.stages] == [math.floor(r) // 8 * 8 for r in raw[:3]] + [300]
    assert [st.img_size for st in s.stages] == [144, 200, 248, 300]


def test_constant_memory_batches_scale_with_the_area_up_to_the_cap():
    s = plan(3, 6, 256, 10, min_img_size=64, progressive_batch=True, max_batch_scale=4.0)
    # sizes 64, 160, 256: (256/64)² = 16 capped at 4; (256/160)² = 2.56; 1
    assert [st.img_size for st in s.stages] == [64, 160, 256]
    assert [st.batch_size for st in s.stages] == [40, 25, 10]
    assert [st.lr_scale for st in s.stages] == [4.0, 2.5, 1.0]


def test_presets_are_table_6():
    assert PRESETS["s"].img_size == (128, 300) and PRESETS["s"].randaug_magnitude == (5, 15)
    assert PRESETS["m"].mixup == (0.0, 0.2) and PRESETS["m"].drop == (0.1, 0.4)
    assert PRESETS["l"].img_size == (128, 380) and PRESETS["l"].randaug_magnitude == (5, 25)
    assert PRESETS["l"].mixup == (0.0, 0.4) and PRESETS["l"].drop == (0.1, 0.5)


def test_schedule_prints_one_line_per_stage():
    s = plan(2, 5, 96, 4, min_img_size=64, randaug_magnitude=(5, 9), drop=(0.1, 0.3), progressive_batch=True)
    lines = s.lines()  # (96/64)² = 2.25: batch 9
    assert len(lines) == 2
    assert lines[0] == "stage 1/2: epochs 1-2, 64 px, batch 9 (lr x2.25), randaug 5, mixup 0, cutmix 0, drop 0.1"
    assert lines[1] == "stage 2/2: epochs 3-5, 96 px, batch 4, randaug 9, mixup 0, cutmix 0, drop 0.3"
    assert s.to_record()[1]["img_size"] == 96


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(stages=3, epochs=5, img_size=128, min_img_size=160), "--min-img-size 160 is larger than"),
        (dict(stages=4, epochs=3, img_size=128), "--epochs 3 is fewer than the 4 stages"),
        (dict(stages=2, epochs=4, img_size=128, min_img_size=16), "below the model's minimum input size 32"),
        (dict(stages=2, epochs=4, img_size=48), "--min-img-size 24 is below"),  # the default S0 = Se / 2
        (dict(stages=0, epochs=4, img_size=128), "at least 1"),
        (dict(stages=2, epochs=4, img_size=128, randaug_magnitude=(5, 31)), "--randaug-magnitude 31"),
        (dict(stages=2, epochs=4, img_size=128, drop=(0.1, 1.0)), "--drop 1.0"),
        (dict(stages=2, epochs=4, img_size=128, mixup=(-1, 0)), "--mixup-start -1"),
    ],
)
def test_refusals_are_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        plan(batch_size=8, **kwargs)
    assert "\n" not in str(e.value)


@dataclasses.dataclass
class _Opts:  # the fields of TrainOptions that progressive learning reads, with their defaults
    epochs: int = 6
    batch_size: int = 8
    img_size: Optional[int] = None
    mixup: float = 0.0
    cutmix: float = 0.0
    drop: float = 0.0
    auto_augment: Optional[str] = None
    progressive: Optional[int] = None
    progressive_preset: Optional[str] = None
    progressive_batch: bool = False
    min_img_size: Optional[int] = None
    randaug_magnitude: Optional[int] = None
    randaug_magnitude_start: Optional[float] = None
    mixup_start: Optional[float] = None
    cutmix_start: Optional[float] = None
    drop_start: Optional[float] = None


def test_a_preset_fills_what_the_caller_did_not_set():
    opts = _Opts(progressive=3, progressive_preset="m", drop=0.25)
    # the Python API (given None): a value off its default counts as set
    api = with_preset(opts, None)
    assert (api.min_img_size, api.img_size, api.randaug_magnitude, api.mixup, api.drop) == (128, 380, 20, 0.2, 0.25)
    assert (api.randaug_magnitude_start, api.mixup_start, api.drop_start) == (5, 0.0, 0.1)
    # the command line: what it gave is kept, even a value equal to the default
    cli = with_preset(_Opts(progressive=3, progressive_preset="m"), given={"mixup", "img_size"})
    assert (cli.mixup, cli.img_size, cli.drop) == (0.0, None, 0.4)
    assert with_preset(_Opts(progressive=3), None) == _Opts(progressive=3)


def test_schedule_for_options_and_applying_a_stage():
    from effnetv2.train.engine import StepConfig

    opts = _Opts(progressive=2, epochs=4, mixup=0.4, drop=0.3, randaug_magnitude=11)
    assert schedule_for(_Opts(), 96) is None and settings(_Opts()) is None
    with pytest.raises(ValueError, match="--auto-augment trivial cannot go with it"):
        schedule_for(_Opts(progressive=2, auto_augment="trivial"), 96)
    sched = schedule_for(opts, 96)
    first = sched.stage_for_epoch(0)
    assert (first.img_size, first.randaug_magnitude, first.mixup, first.drop) == (48, 5, 0.0, 0.1)
    assert settings(opts)["stages"] == 2 and settings(opts)["drop_start"] == 0.1
    # the paper's starts never exceed the run's own end values: the default --drop 0 stays 0 at every stage
    low = schedule_for(_Opts(progressive=2, epochs=4, randaug_magnitude=3), 96).stage_for_epoch(0)
    assert (low.drop, low.randaug_magnitude) == (0.0, 3)
    model, data = torch.nn.Module(), types.SimpleNamespace(transform=None)
    cfg = StepConfig(device=torch.device("cpu"))
    norm = dict(interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    last = sched.stage_for_epoch(3)
    apply_stage(last, model, data, cfg, 10, norm)
    assert model.drop_rate == 0.3 and cfg.batch_transform is not None
    crop, augment = data.transform.transforms[0], data.transform.transforms[2]
    assert tuple(crop.size) == (96, 96) and augment.magnitude == 11
    apply_stage(first, model, data, cfg, 10, norm)
    assert (
        model.drop_rate == 0.1 and cfg.batch_transform is None and tuple(data.transform.transforms[0].size) == (48, 48)
    )


def test_curves_mark_each_stage_change_with_its_image_size():
    pytest.importorskip("matplotlib")
    from effnetv2.pictures import curves_figure

    sizes = [48, 48, 72, 72, 96, 96]
    rows = [
        dict(
            epoch=e,
            train_loss=1.0 / e,
            val_loss=1.2 / e,
            train_top1=10.0 * e,
            val_top1=9.0 * e,
            lr=0.01,
            stage=(e - 1) // 2 + 1,
            img_size=sizes[e - 1],
        )
        for e in range(1, 7)
    ]
    fig = curves_figure({"run": rows})
    marks = [line for ax in fig.axes for line in ax.lines if line.get_label().startswith("_")]
    assert sorted({line.get_xdata()[0] for line in marks}) == [2.5, 4.5] and len(marks) == 4  # both panels
    assert [t.get_text() for t in fig.texts + [t for ax in fig.axes for t in ax.texts]] == ["72 px", "96 px"]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[-1] == "dotted: a new progressive-learning stage (its image size)"
    assert len(curves_figure({"run": [dict(r, stage=None) for r in rows]}).axes[0].lines) == 2  # none unstaged


def test_a_paced_schedule_ends_each_epoch_where_the_plain_one_does():
    """--progressive-batch: epochs of 1, 2 and 4 steps (pace 4/1, 4/2, 4/4, LR x4, x2, x1) reach the LR of a
    plain run of 4 steps per epoch at every epoch's end, scaled; the schedule over the whole run is the same."""
    from effnetv2.train.schedule import cosine_with_warmup

    def scheduler():
        return cosine_with_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 12, 3)

    plain, paced = scheduler(), scheduler()
    ends = []
    for _ in range(12):
        plain.optimizer.step()
        plain.step()
        ends.append(plain.get_last_lr()[0])
    for epoch, steps in enumerate((1, 2, 4)):
        paced.set_pace(epoch * 4, 4, steps, scale=4 / steps)
        for _ in range(steps):
            paced.optimizer.step()
            paced.step()
        assert paced.position == 4 * (epoch + 1)
        assert paced.get_last_lr()[0] == ends[4 * epoch + 3] * 4 / steps
    assert ends[-1] == 0.0
