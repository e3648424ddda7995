"""What a training run shows besides its numbers: ``DIR/curves.png`` after every epoch and, with
``--tensorboard``, TensorBoard event files (through ``torch.utils.tensorboard``; the ``tensorboard`` extra).

Scalars per optimizer step (x: the run's step count from 1): ``train/loss`` (the main process's batch), ``train/lr``,
``train/grad_norm`` (the whole gradient's 2-norm before clipping). Per epoch (x: the step count at the epoch's end):
``epoch/train_loss``, ``epoch/train_top1``, ``epoch/val_loss``, ``epoch/val_top1``, ``epoch/val_top5``,
``epoch/images_per_s``, ``epoch/lr``. A resumed run purges the events after its last saved epoch, so TensorBoard
shows each step once; a run started again from scratch in the same folder hides the old events.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from effnetv2.pictures import MATPLOTLIB_HINT

TENSORBOARD_HINT = "pip install 'effnetv2[tensorboard]' (tensorboard)"
EPOCH_SCALARS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_s", "lr")


def tensorboard_writer_class():
    """``torch.utils.tensorboard.SummaryWriter``; ``ImportError`` with the install hint when TensorBoard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError(f"--tensorboard needs TensorBoard: {TENSORBOARD_HINT}") from None
    return SummaryWriter


def matplotlib_missing() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


class RunReport:
    """The main process's pictures and event files for one run of ``steps`` optimizer steps per epoch."""

    def __init__(self, folder: Path, tensorboard: Optional[Path], steps: int, start_epoch: int) -> None:
        self.curves = folder / "curves.png"
        self.steps = steps
        self.writer = None
        if tensorboard is not None:
            # purge_step: the events a killed run wrote after its last saved epoch (or, for a run started again
            # from scratch, all of them) are hidden, not shown twice
            purge = start_epoch * steps + 1
            self.writer = tensorboard_writer_class()(log_dir=str(tensorboard), purge_step=purge)
        self.draw = not matplotlib_missing()
        if not self.draw:
            print(f"effnetv2: {self.curves} is not drawn: matplotlib is missing; {MATPLOTLIB_HINT}", file=sys.stderr)

    def step(self, epoch: int, step: int, values: Mapping[str, Optional[float]]) -> None:
        """After optimizer step ``step`` (from 1) of epoch ``epoch`` (from 0)."""
        if self.writer is None:
            return
        at = epoch * self.steps + step
        for name, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"train/{name}", value, at)

    def resumed(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """A resumed run: the last saved epoch's scalars again (a kill may have come before they were written;
        written twice, a point shows once)."""
        if self.writer is not None and rows:
            self._epoch_scalars(rows[-1])

    def _epoch_scalars(self, row: Mapping[str, Any]) -> None:
        at = row["epoch"] * self.steps
        for name in EPOCH_SCALARS:
            if name in row:
                self.writer.add_scalar(f"epoch/{name}", row[name], at)
        self.writer.flush()

    def epoch(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """After an epoch's state and metrics are saved: its scalars, and the curves of every epoch so far."""
        if self.writer is not None:
            self._epoch_scalars(rows[-1])
        if self.draw:
            from effnetv2.pictures import draw_curves

            try:
                draw_curves({self.curves.parent.name: rows}, self.curves, title=str(self.curves.parent.name))
            except (OSError, ValueError, RuntimeError) as e:  # a picture never stops a run
                print(f"effnetv2: {self.curves} not drawn: {e}", file=sys.stderr)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
