"""Training curves: loss and accuracy against epoch, train and val, the LR on a second axis; one run or several.

Drawn from the rows of ``metrics.jsonl`` (one dict per epoch: ``epoch``, ``train_loss``, ``val_loss``,
``train_top1``, ``val_top1``, ``val_top5``, ``lr``); a key a row lacks (an older run's) is left out of the picture.
Legible at any run length: the epoch axis has integer ticks and spans the epochs run (a one-epoch run is not a dot
on an axis from 0.96 to 1.04), points carry markers while there are few of them, the LR axis starts at 0, a top-5
that is 100 % at every epoch (always so with 5 classes or fewer) is left out and said so, and the legend sits
below the panels, off the data. A progressive run's rows carry ``stage`` and ``img_size``: each stage change is a
dotted vertical line on both panels, labelled with the new stage's image size.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

from effnetv2.atomic import atomic_path

# (key, label, line style, marker): train dashed with squares, val solid with circles, top-5 dotted with triangles;
# the marker tells the metrics apart where a line cannot (a single epoch). One colour per run.
LOSSES = (("train_loss", "train loss", "--", "s"), ("val_loss", "val loss", "-", "o"))
ACCURACIES = (
    ("train_top1", "train top-1", "--", "s"),
    ("val_top1", "val top-1", "-", "o"),
    ("val_top5", "val top-5", ":", "^"),
)
LR = ("lr", "LR (right axis)", "-", "d")
# With several runs the colour is the run's, and the legend names the line styles once: label -> style's name
STYLES = {
    "train loss": "train",
    "train top-1": "train",
    "val loss": "val",
    "val top-1": "val",
    "val top-5": "val top-5",
    "LR (right axis)": "LR (right axis)",
}
MARKERS_UP_TO = 30  # points per line; beyond that markers would merge into a thick line
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


def top5_is_trivial(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``val_top5`` is 100 % at every epoch that recorded it: always so with 5 classes or fewer, and a flat
    line at the top that says nothing."""
    _, values = _series(rows, "val_top5")
    return bool(values) and all(v == 100.0 for v in values)


def _plot(ax: Any, rows: Sequence[Mapping[str, Any]], spec: tuple[str, str, str, str], **style: Any) -> None:
    key, label, line, marker = spec
    epochs, values = _series(rows, key)
    if epochs:
        few = len(epochs) <= MARKERS_UP_TO
        ax.plot(epochs, values, line, marker=marker if few else None, markersize=5, label=label, **style)


def _draw_run(axes: tuple[Any, Any, Any], rows: Sequence[Mapping[str, Any]], colour: str, several: bool) -> bool:
    """One run's lines on the (loss, LR, accuracy) axes; True when its top-5 was left out as trivial."""
    loss_ax, lr_ax, acc_ax = axes
    for spec in LOSSES:
        _plot(loss_ax, rows, spec, color=colour)
    trivial = top5_is_trivial(rows)
    for spec in ACCURACIES[:-1] if trivial else ACCURACIES:
        _plot(acc_ax, rows, spec, color=colour)
    _plot(lr_ax, rows, LR, color=colour if several else "grey", alpha=0.5, linewidth=1)
    return trivial


def _stage_marks(axes: Sequence[Any], rows: Sequence[Mapping[str, Any]], colour: str) -> bool:
    """A dotted line between the last epoch of a progressive run's stage and the first of the next, on each of
    ``axes``, with the new image size at the top of the last one; True when there was a stage change."""
    changes = [
        (before["epoch"] + 0.5, row.get("img_size"))
        for before, row in itertools.pairwise(rows)
        if row.get("stage") is not None and before.get("stage") is not None and row["stage"] != before["stage"]
    ]
    for x, size in changes:
        for ax in axes:
            ax.axvline(x, color=colour, linestyle=":", linewidth=1, alpha=0.7)
        if size is not None:
            axes[-1].annotate(
                f"{size} px",
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -10),
                textcoords="offset points",
                fontsize="x-small",
                color=colour,
            )
    return bool(changes)


def _epoch_axis(axes: Sequence[Any], runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> None:
    """Integer epoch ticks over the epochs run, half an epoch (or 2 % of the span) of room at each end."""
    epochs = [row["epoch"] for rows in runs.values() for row in rows if _is_finite(row.get("epoch"))]
    if not epochs:
        return
    from matplotlib.ticker import MaxNLocator

    first, last = min(epochs), max(epochs)
    room = max(0.5, 0.02 * (last - first))
    for ax in axes:
        ax.set_xlim(first - room, last + room)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1, steps=(1, 2, 5, 10)))  # one epoch: one tick


def _lr_axis(lr_ax: Any) -> None:
    """The LR from 0 up: a learning rate is never negative, and autoscaling around one value can make it look so."""
    values = [v for line in lr_ax.lines for v in line.get_ydata()]
    top = max(values, default=0.0)
    lr_ax.set_ylim(0.0, 1.1 * top if top > 0 else 1.0)
    lr_ax.set_ylabel("learning rate (end of epoch)")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def _legend(fig: Any, axes: Sequence[Any], runs: Mapping[str, Any], colours: Sequence[str], note: str) -> None:
    """One legend below the panels, off the data: the metrics (their line and marker; in black when several runs
    share them), then each run's colour, then ``note``."""
    from matplotlib.lines import Line2D

    several = len(runs) > 1
    metrics: dict[str, Any] = {}
    for ax in axes:
        for line in ax.lines:
            if line.get_label().startswith("_"):  # unlabelled: a stage change's mark, said in the note
                continue
            metrics.setdefault(STYLES[line.get_label()] if several else line.get_label(), line)
    if not several:
        handles = list(metrics.values())
    else:
        handles = [
            Line2D(
                [],
                [],
                color="black",
                linestyle=line.get_linestyle(),
                linewidth=line.get_linewidth(),
                marker=line.get_marker(),
                markersize=5,
                label=label,
            )
            for label, line in metrics.items()
        ]
        handles += [Line2D([], [], color=c, linewidth=4, label=name) for name, c in zip(runs, colours, strict=True)]
    if note:
        handles.append(Line2D([], [], linestyle="none", label=note))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small")


def curves_figure(runs: Mapping[str, Sequence[Mapping[str, Any]]], title: str = "") -> Any:
    """The matplotlib ``Figure`` of the ``runs`` (name → metrics rows), as :func:`draw_curves` writes it."""
    from matplotlib.figure import Figure  # the explain/plots extra: imported only when drawing

    if not any(runs.values()):
        raise ValueError("no finished epoch to draw")
    width, height = curves_size()
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    lr_ax = loss_ax.twinx()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    trivial = [
        name
        for colour, (name, rows) in zip(colours, runs.items(), strict=True)
        if _draw_run((loss_ax, lr_ax, acc_ax), rows, colour, several=len(runs) > 1)
    ]
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss" + (" and LR" if lr_ax.lines else ""))
    acc_ax.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    _epoch_axis((loss_ax, acc_ax), runs)
    _lr_axis(lr_ax)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
    # A panel without a line (no such metric, or only NaN) says so
    if not (loss_ax.lines or lr_ax.lines):
        _say_empty(loss_ax)
    if not acc_ax.lines:
        _say_empty(acc_ax)
    staged = [
        _stage_marks((loss_ax, acc_ax), rows, colour if len(runs) > 1 else "grey")
        for colour, rows in zip(colours, runs.values(), strict=True)
    ]
    whose = f" of {', '.join(trivial)}" if len(runs) > 1 else ""
    note = f"val top-5{whose} not drawn: 100 % at every epoch (always so with ≤ 5 classes)" if trivial else ""
    if any(staged):
        note = "; ".join(filter(None, [note, "dotted: a new progressive-learning stage (its image size)"]))
    _legend(fig, (loss_ax, lr_ax, acc_ax), runs, colours, note)
    if title:
        fig.suptitle(title)
    return fig


def draw_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: Union[str, os.PathLike], title: str = ""
) -> None:
    """Write a PNG of the ``runs`` (name → metrics rows) to ``path`` atomically: loss (and LR, right axis, from 0)
    on the left, accuracy in % on the right, the legend below. ``ValueError`` when no run has a finished epoch."""
    fig = curves_figure(runs, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _say_empty(ax: Any) -> None:
    ax.text(0.5, 0.5, "no finite values recorded", ha="center", va="center", transform=ax.transAxes, color="grey")
