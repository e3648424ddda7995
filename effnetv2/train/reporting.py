"""What a training run shows: a progress line per epoch and a closing line, ``DIR/curves.png`` after every epoch
and, with ``--tensorboard``, TensorBoard event files (through ``torch.utils.tensorboard``; the ``tensorboard`` extra).

Progress goes to stdout: with ``log_format="text"`` one readable line per epoch (:func:`epoch_line`), notes (what
each epoch writes, :func:`written_per_epoch`) and a closing line (:func:`closing_line`); with ``"json"`` the
epoch's metrics row as one JSON line (as ``DIR/metrics.jsonl`` holds it), the notes and closing line on stderr.

Scalars per optimizer step (x: the run's step count from 1, in steps of the run's batch): ``train/loss`` (the main
process's batch), ``train/lr``, ``train/grad_norm`` (the whole gradient's 2-norm before clipping). Per epoch (x: the
step count at the epoch's end): ``epoch/train_loss``, ``epoch/train_top1``, ``epoch/val_loss``, ``epoch/val_top1``,
``epoch/val_top5``, ``epoch/images_per_s``, ``epoch/lr``. A resumed run purges the events after its last saved epoch,
so TensorBoard shows each step once; a run started again from scratch in the same folder hides the old events.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from effnetv2.pictures import MATPLOTLIB_HINT

TENSORBOARD_HINT = "pip install 'effnetv2[tensorboard]' (tensorboard)"
EPOCH_SCALARS = ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_s", "lr")
# a progressive run's rows also say what their stage trained with (effnetv2.train.progressive.stage_values)
STAGE_SCALARS = ("stage", "img_size", "batch_size", "randaug_magnitude", "mixup", "cutmix", "drop")


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


def epoch_line(row: Mapping[str, Any], epochs: int, best: bool, num_classes: int = 0) -> str:
    """``epoch 2/10  train loss 1.234 top-1 45.0 %  val loss 1.100 top-1 50.0 % top-5 90.0 %  lr 0.0093  12.3 img/s
    (best)``; top-5 only with more than 5 classes (with 5 or fewer it is always 100 %)."""
    top5 = f" top-5 {row['val_top5']:.1f} %" if num_classes > 5 and "val_top5" in row else ""
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.3f} top-1 {row['train_top1']:.1f} %  "
        f"val loss {row['val_loss']:.3f} top-1 {row['val_top1']:.1f} %{top5}  lr {row['lr']:.3g}  "
        f"{row['images_per_s']:.1f} img/s" + ("  (best)" if best else "")
    )


def best_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The row of the best model: the first with the highest val top-1 (a later equal one does not replace it)."""
    return max(rows, key=lambda row: row["val_top1"])


def closing_line(rows: Sequence[Mapping[str, Any]], model: Path) -> str:
    """``best: epoch 2, val_top1 80.0 %; model in runs/x/model.safetensors``."""
    best = best_row(rows)
    return f"best: epoch {best['epoch']}, val_top1 {best['val_top1']:.1f} %; model in {model}"


def _megabytes(tensors: Any) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def written_per_epoch(folder: Path, model: Any, ema: Any, momentum: bool, keep_state: bool) -> str:
    """What an epoch writes into ``folder``, estimated from the tensors: the resume state (the weights, SGD's
    momentum buffers, the EMA) and the best model (the EMA's weights when there is one)."""
    weights = _megabytes(model.state_dict().values())
    best = _megabytes((ema.module if ema is not None else model).state_dict().values())
    trained = _megabytes(p for p in model.parameters())  # momentum: one buffer per parameter, once it has trained
    state = weights + (trained if momentum else 0.0) + (_megabytes(ema.state_dict().values()) if ema else 0.0)
    best_text = f"model.safetensors {best:.0f} MB (when val top-1 improves)"
    if not keep_state:
        return f"writes up to ~{best:.0f} MB per epoch to {folder}: {best_text}; no resume state (--save-state none)"
    return (
        f"writes up to ~{state + best:.0f} MB per epoch to {folder} (files replaced, not added): last_state.pt "
        f"{state:.0f} MB (for --resume; --save-state none leaves it out), {best_text}"
    )


class RunReport:
    """The main process's progress lines, pictures and event files for one run of ``steps`` optimizer steps per
    epoch (of ``epochs``, on ``num_classes`` classes)."""

    def __init__(
        self,
        folder: Path,
        tensorboard: Optional[Path],
        steps: int,
        start_epoch: int,
        log_format: str = "text",
        epochs: int = 0,
        num_classes: int = 0,
    ) -> None:
        self.curves = folder / "curves.png"
        self.steps = steps
        self.log_format, self.epochs, self.num_classes = log_format, epochs, num_classes
        self.writer = None
        if tensorboard is not None:
            # purge_step: the events a killed run wrote after its last saved epoch (or, for a run started again
            # from scratch, all of them) are hidden, not shown twice
            purge = start_epoch * steps + 1
            self.writer = tensorboard_writer_class()(log_dir=str(tensorboard), purge_step=purge)
        self.draw = not matplotlib_missing()
        if not self.draw:
            print(f"effnetv2: {self.curves} is not drawn: matplotlib is missing; {MATPLOTLIB_HINT}", file=sys.stderr)

    def note(self, text: str) -> None:
        """A line for the user besides the progress: stdout with text progress, stderr under JSON lines."""
        print(f"effnetv2: {text}", file=sys.stdout if self.log_format == "text" else sys.stderr, flush=True)

    def show(self, row: Mapping[str, Any], best: bool) -> None:
        """An epoch's progress: its line, or its metrics row as JSON."""
        text = (
            json.dumps(dict(row)) if self.log_format == "json" else epoch_line(row, self.epochs, best, self.num_classes)
        )
        print(text, flush=True)

    def closing(self, rows: Sequence[Mapping[str, Any]], model: Path) -> None:
        """The run's last line: its best epoch and where the model is."""
        if rows:
            print(closing_line(rows, model), file=sys.stdout if self.log_format == "text" else sys.stderr, flush=True)

    def step(self, epoch: int, step: int, values: Mapping[str, Optional[float]], epoch_steps: int = 0) -> None:
        """After optimizer step ``step`` (from 1) of the ``epoch_steps`` of epoch ``epoch`` (from 0; 0 steps: the
        run's own per epoch). A stage with larger batches (``--progressive-batch``) takes fewer, each placed where
        it ends in steps of the run's batch, so the x axis has no gaps and every epoch ends where it would."""
        if self.writer is None:
            return
        at = epoch * self.steps + (round(step * self.steps / epoch_steps) if epoch_steps else step)
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
        for name in STAGE_SCALARS:
            if name in row:
                self.writer.add_scalar(f"progressive/{name}", row[name], at)
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
