"""Training curves: loss and accuracy against epoch, train and val, the LR on a second axis; one run or several.

Drawn from the rows of ``metrics.jsonl`` (one dict per epoch: ``epoch``, ``train_loss``, ``val_loss``,
``train_top1``, ``val_top1``, ``val_top5``, ``lr``); a key a row lacks (an older run's) is left out of the picture.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

from effnetv2.atomic import atomic_path

# (key, label, line style): train dashed, val solid, top-5 dotted; one colour per run
LOSSES = (("train_loss", "train loss", "--"), ("val_loss", "val loss", "-"))
ACCURACIES = (("train_top1", "train top-1", "--"), ("val_top1", "val top-1", "-"), ("val_top5", "val top-5", ":"))
PANEL_INCHES = (6.0, 4.0)
DPI = 100


def curves_size(panels: int = 2) -> tuple[int, int]:
    """The picture's size in pixels (width, height): fixed, whatever the data."""
    return round(PANEL_INCHES[0] * panels * DPI), round(PANEL_INCHES[1] * DPI)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    # NaN or infinite values (a run that diverged) are left out: matplotlib would break the line there anyway
    points = [(row["epoch"], row[key]) for row in rows if _is_finite(row.get(key))]
    return [e for e, _ in points], [v for _, v in points]


def draw_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Union[str, os.PathLike], title: str = ""
) -> None:
    """Write a PNG of the ``runs`` (name → metrics rows) to ``path`` atomically: loss (and LR, grey, right axis)
    on the left, accuracy in % on the right. ``ValueError`` when no run has a finished epoch."""
    from matplotlib.figure import Figure  # the explain/plots extra: imported only when drawing

    if not any(runs.values()):
        raise ValueError("no finished epoch to draw")
    width, height = curves_size()
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    lr_ax = loss_ax.twinx()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    several = len(runs) > 1
    for colour, (name, rows) in zip(colours, runs.items(), strict=True):
        prefix = f"{name}: " if several else ""
        for ax, series in ((loss_ax, LOSSES), (acc_ax, ACCURACIES)):
            for key, label, style in series:
                epochs, values = _series(rows, key)
                if epochs:
                    ax.plot(epochs, values, style, color=colour, marker="o", markersize=3, label=prefix + label)
        epochs, values = _series(rows, "lr")
        if epochs:
            lr_ax.plot(
                epochs,
                values,
                "-",
                color="grey" if not several else colour,
                alpha=0.5,
                linewidth=1,
                label=prefix + "LR (right axis)",
            )
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss" + (" and LR" if lr_ax.lines else ""))
    lr_ax.set_ylabel("learning rate (end of epoch)")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = loss_ax.get_legend_handles_labels()
    more_handles, more_labels = lr_ax.get_legend_handles_labels()
    # A panel without a line (no such metric, or only NaN) says so: an empty legend is a matplotlib warning.
    if handles or more_handles:
        loss_ax.legend(handles + more_handles, labels + more_labels, fontsize="small")
    else:
        _say_empty(loss_ax)
    if acc_ax.lines:
        acc_ax.legend(fontsize="small")
    else:
        _say_empty(acc_ax)
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _say_empty(ax: Any) -> None:
    ax.text(0.5, 0.5, "no finite values recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
