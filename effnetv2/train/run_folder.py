"""The run folder of ``effnetv2 train``: one writer, a resume state, the metrics, the best model, in a safe order.

``DIR/.lock``         held (``fcntl.flock``) by the one process writing the run, released by the kernel when it dies
``DIR/last_state.pt`` everything a resume needs, including every epoch's metrics row (``torch.load(weights_only=True)``)
``DIR/metrics.jsonl`` one JSON line per finished epoch, rewritten from the state
``DIR/model.safetensors`` + ``DIR/config.json``: the best model so far, in timm's hub format (its config's
                      ``training`` entry says what it is: :mod:`effnetv2.train.provenance`)

With ``--save-state none`` there is no ``last_state.pt``: the folder cannot be resumed (and is not overwritten).

(``DIR/curves.png`` and ``DIR/tensorboard/`` are drawn from the metrics by :mod:`effnetv2.train.reporting`; no
resume reads them.)

Every write is atomic, and :meth:`RunFolder.end_epoch` orders them so that a kill at any instant leaves a folder
that ``--resume`` continues without losing or repeating an epoch: the best model first (a resume that redoes the
epoch writes it again), then the state (the commit point), then ``metrics.jsonl`` (rebuilt from the state on resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import pickle
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from effnetv2.atomic import atomic_path
from effnetv2.defaults import STATE_FILE
from effnetv2.errors import CheckpointError

METRICS_FILE = "metrics.jsonl"
BEST_MODEL_FILE = "model.safetensors"
LOCK_FILE = ".lock"
STATE_FORMAT = "effnetv2-train-state"
STATE_VERSION = 1
_STATE_KEYS = ("epoch", "epochs", "best_top1", "metrics", "recipe", "classes", "model", "optimizer", "scheduler", "rng")

# What shapes the LR schedule, the data order or the training math: a resume must use the same values.
# Key in the recipe → how the user sets it.
RECIPE_OPTIONS: dict[str, str] = {
    "model": "--model",
    "batch_size": "--batch-size",
    "world_size": "the number of processes (torchrun)",
    "train_images": "the number of training images",
    "img_size": "--img-size",
    "lr": "--lr",
    "momentum": "--momentum",
    "warmup_epochs": "--warmup-epochs",
    "weight_decay": "--weight-decay",
    "layer_decay": "--layer-decay",
    "agc": "--agc",
    "label_smoothing": "--label-smoothing",
    "mixup": "--mixup",
    "cutmix": "--cutmix",
    "auto_augment": "--auto-augment",
    "randaug_magnitude": "--randaug-magnitude",
    "progressive": "--progressive and its start values (--min-img-size, --randaug-magnitude-start, --mixup-start, "
    "--cutmix-start, --drop-start)",
    "drop": "--drop",
    "drop_path": "--drop-path",
    "ema": "--ema",
    "freeze_backbone_epochs": "--freeze-backbone-epochs",
    "sync_bn": "--sync-bn",
    "seed": "--seed",
}


class TrainError(ValueError):
    """A training run that cannot start or go on, for a reason the user can fix (one line)."""


class RunFolderWriteError(OSError):
    """A run-folder file could not be written (a full disk...); the previous state is kept."""


def _refused_pickle(path: Path, error: pickle.UnpicklingError, hint: str) -> str:
    """One line of ours for a state ``torch.load(weights_only=True)`` refused: a pickle naming a global it does not
    allow (any object but tensors and plain containers), or one it cannot parse. Torch's own message goes on to
    advise ``weights_only=False``, which would run whatever the file holds: it is not passed on."""
    inner = error.__context__ if isinstance(error.__context__, pickle.UnpicklingError) else None
    detail = str(inner or "")
    refused = re.search(r"GLOBAL (\S+) ", detail)  # "Unsupported global: GLOBAL x.y was not allowed ..."
    if refused or "is blocked" in detail:
        what = f" ({refused.group(1)})" if refused else ""
        return (
            f"{path} holds objects other than tensors and plain containers{what}, which "
            "torch.load(weights_only=True) refuses because loading them could run code: it is not an effnetv2 "
            f"training state; {hint}"
        )
    reason = (detail.strip().splitlines() or ["not a pickle torch can read"])[0][:200]
    return f"cannot read {path} ({reason}); it is damaged or not a training state; {hint}"


def _describe(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _write_failure(error: BaseException) -> Optional[tuple[Optional[int], str]]:
    """``(errno, reason)`` when ``error`` is a failed write, else None.

    A write fails as an ``OSError``, or in other clothes: ``torch.save`` as ``RuntimeError: [enforce fail at
    inline_container.cc...] unexpected pos`` (the Python file's ``OSError`` in its context), safetensors as
    ``SafetensorError: ... (os error 28)``.
    """
    from safetensors import SafetensorError

    if isinstance(error, OSError):
        return error.errno, error.strerror or str(error)
    text = str(error)
    if isinstance(error, RuntimeError) and "inline_container" in text:
        behind = error.__cause__ or error.__context__
        if isinstance(behind, OSError):
            return behind.errno, behind.strerror or str(behind)
        return None, (text.strip().splitlines() or [""])[0].split("] ")[-1].strip(". ") or "torch.save failed"
    if isinstance(error, SafetensorError):
        match = _RUST_ERRNO.search(text)
        if match:
            code = int(match.group(1) or match.group(2))
            return code, os.strerror(code)
    return None


# safetensors' Rust I/O errors: "... (os error 28)" (0.4 and later) or "Os { code: 28, ... }" (older)
_RUST_ERRNO = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


@contextlib.contextmanager
def _writing(path: Path, kept: str) -> Iterator[None]:
    """A failed write of ``path`` (a full disk...: see :func:`_write_failure`) → one :class:`RunFolderWriteError`
    saying what is kept."""
    try:
        yield
    except RunFolderWriteError:
        raise
    except Exception as e:
        failure = _write_failure(e)
        if failure is None:
            raise
        code, reason = failure
        raise RunFolderWriteError(code, f"cannot write {path}: {reason}; {kept}") from e


class RunFolder:
    """The folder of one training run; only the process holding :meth:`lock` writes it.

    Use as a context manager (``with RunFolder(path) as run: ...``) to hold the lock for the run's life.
    """

    def __init__(self, path: Union[str, os.PathLike]) -> None:
        self.path = Path(path)
        self._lock_fd: Optional[int] = None

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def has_state(self) -> bool:
        return self.state_path.exists()

    # -- the lock ------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Create the folder and take its lock; another live process holding it → :class:`TrainError`."""
        if self._lock_fd is not None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        # the lock file is never replaced (a new inode would be a new lock): it is opened and written in place
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TrainError(f"{self.path} is in use by another effnetv2 train process (pid {pid})") from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the lock
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        self.lock()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.unlock()

    def open(self, resume: bool) -> None:
        """Lock the folder for a new run (``resume=False``) or a resumed one, checking that it holds what it should.

        Nothing is created when the check fails before the lock (``--resume`` without a state).
        """
        if resume and not self.has_state():
            raise TrainError(self._no_state())
        self.lock()
        if resume and not self.has_state():  # removed while we waited for nothing: check again under the lock
            self.unlock()
            raise TrainError(self._no_state())
        if not resume and self.has_state():
            self.unlock()
            raise TrainError(
                f"{self.path} already holds a training run; pass --resume to continue it (or, with a larger "
                "--epochs, to extend it) or choose another --output"
            )
        if not resume and self.metrics_path.exists():  # a run that kept no state (--save-state none)
            self.unlock()
            raise TrainError(
                f"{self.path} already holds a training run ({METRICS_FILE}, no {STATE_FILE}); choose another "
                "--output, or remove the folder to start again there"
            )

    def _no_state(self) -> str:
        """Why ``--resume`` cannot continue this folder."""
        if self.metrics_path.exists():
            return (
                f"--resume: the run in {self.path} kept no resume state ({STATE_FILE}: it was started with "
                f"--save-state none), so it cannot be continued; to train its model further, start a new run from "
                f"it: --checkpoint {self.path} --output NEW_FOLDER"
            )
        return f"--resume: {self.state_path} does not exist; start without --resume"

    # -- the resume state ----------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        """The saved state; a truncated, foreign or older file → :class:`~effnetv2.CheckpointError` (one line)."""
        path = self.state_path
        hint = "start a new run in another --output (or remove the file to start this one again)"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except pickle.UnpicklingError as e:  # torch's message advises weights_only=False: never pass that on
            raise CheckpointError(_refused_pickle(path, e, hint)) from None
        except Exception as e:  # truncated zip, not a torch file...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointError(
                f"cannot read {path} ({first[:200]}); it is damaged or not a training state; {hint}"
            ) from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path} is not an effnetv2 training state (written by another tool?); {hint}")
        if state.get("version") != STATE_VERSION:
            raise CheckpointError(
                f"{path} is a version {state.get('version')} training state, not {STATE_VERSION}; {hint}"
            )
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)}; it is not a complete training state; {hint}")
        return state

    def write_state(self, state: Mapping[str, Any]) -> None:
        """Replace the state atomically; a failed write leaves the previous one."""
        state = {"format": STATE_FORMAT, "version": STATE_VERSION, **state}
        if self.has_state():
            kept = f"{self.state_path} still holds the previous epoch's state: --resume continues from it"
        else:
            kept = "no epoch is recorded yet: run the command again (without --resume)"
        with _writing(self.state_path, kept), atomic_path(self.state_path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)  # through a Python file: a full disk raises OSError(ENOSPC)

    # -- metrics ---------------------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl``; a torn last line (a write cut short) is dropped, any other bad line
        → ``ValueError`` naming the line."""
        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_bytes().split(b"\n")
        rows = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                    raise ValueError("not an epoch row")
            except ValueError as e:
                if i == len(lines):  # the last line, without its newline: torn by a crash
                    break
                raise ValueError(f"{self.metrics_path} line {i} is not a metrics row ({e}); remove the line") from None
            rows.append(row)
        return rows

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` atomically with ``rows``."""
        text = "".join(json.dumps(dict(row)) + "\n" for row in rows)
        kept = "the state holds every row; --resume rewrites the file"
        with _writing(self.metrics_path, kept), atomic_path(self.metrics_path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    # -- the best model --------------------------------------------------------------------------------------
    def save_best(
        self, model: nn.Module, label_names: Sequence[str], training: Optional[Mapping[str, Any]] = None
    ) -> None:
        """The best model and its config.json, with ``training`` (:func:`effnetv2.train.provenance.training_record`)
        as its ``training`` entry and, in words, its description."""
        from effnetv2.train.provenance import describe_training
        from effnetv2.weights.saving import save_pretrained

        config: dict[str, Any] = dict(label_names=list(label_names))
        if training is not None:
            config["training"] = dict(training)
            config["pretrained_cfg"] = {"description": f"fine-tuned with effnetv2 train: {describe_training(training)}"}
        with _writing(self.path / BEST_MODEL_FILE, "the previous best model is kept"):
            save_pretrained(model, self.path, model_config=config)

    # -- one epoch's writes, in the order that keeps every instant resumable ---------------------------------
    def end_epoch(
        self,
        state: Mapping[str, Any],
        best_model: Optional[nn.Module] = None,
        label_names: Sequence[str] = (),
        training: Optional[Mapping[str, Any]] = None,
        keep_state: bool = True,
    ) -> None:
        """Record a finished epoch: ``state["metrics"]`` holds every row up to this epoch.

        1. the best model, when this epoch improved it (a kill after this redoes the epoch, which writes it again);
        2. the state: from here on the epoch is done (not written unless ``keep_state``: ``--save-state none``);
        3. ``metrics.jsonl`` from the state's rows (a kill before this: the next ``--resume`` rewrites it).
        """
        if best_model is not None:
            self.save_best(best_model, label_names, training)
        if keep_state:
            self.write_state(state)
        self.write_metrics(state["metrics"])


def model_files(model: nn.Module) -> dict[str, Optional[str]]:
    """The sha256 and paths of the weights and ``config.json`` ``model`` was created from (``weights_sha256``,
    ``weights_file``, ``config_sha256``, ``config_file``; ``None`` where it read none): kept in the recipe, so that
    a ``--resume`` reading other model files is refused."""
    from effnetv2.weights.reading import fingerprint

    return fingerprint(getattr(model, "source_files", ()))


def _check_model_files(saved: Mapping[str, Any], recipe: Mapping[str, Any], where: Path) -> None:
    """A model file this resume reads (``--checkpoint``, ``--pretrained``, a ``local-dir:``/``hf-hub:`` model's
    config.json and weights) must be the one the run began with. A resume that reads none (no ``--checkpoint``)
    is not refused: the state holds the weights. States from before the check have no such keys."""
    for role, name in (("weights", "weights file"), ("config", "config.json")):
        key = f"{role}_sha256"
        now = recipe.get(key)
        if now is None or key not in saved or saved[key] == now:
            continue
        then, file_now = saved[key], recipe.get(f"{role}_file")
        if then is None:
            what = f"the run in {where} was started without a {name}, this one reads {file_now}"
        else:
            what = (
                f"the {name} {file_now} is not the one the run in {where} was started from (sha256 {then[:12]}... "
                f"then, {now[:12]}... now)"
            )
        raise TrainError(f"{what}; resume with the model files the run began with, or start a new run")


def check_resume(
    state: Mapping[str, Any], recipe: Mapping[str, Any], classes: Sequence[str], epochs: int, where: Path
) -> str:
    """Compare a saved state with the new run's settings: ``"continue"``, ``"extend"`` (a larger ``--epochs``) or
    ``"done"`` (finished, same ``--epochs``). A setting that differs → :class:`TrainError` naming it, as does a
    model file (``recipe``'s ``weights_sha256``/``config_sha256``, see :func:`model_files`) other than the run's."""
    if list(state["classes"]) != list(classes):
        raise TrainError(f"the data classes differ from those of the run in {where}; resume on the same data")
    saved = state["recipe"]
    for key, option in RECIPE_OPTIONS.items():
        if key in recipe and saved.get(key) != recipe[key]:
            fix = "leave it out to resume with the run's value" if option.startswith("--") else "resume with the same"
            raise TrainError(
                f"{option}: the run in {where} was started with {_describe(saved.get(key))}, this one has "
                f"{_describe(recipe[key])}; {fix} (only --epochs may change, to extend the run)"
            )
    _check_model_files(saved, recipe, where)
    done, planned = int(state["epoch"]), int(state["epochs"])
    if epochs < planned:
        raise TrainError(
            f"--epochs {epochs}: the run in {where} is planned for {planned} epochs ({done} done); --epochs can "
            "extend a run, not shorten it"
        )
    if epochs > planned:
        return "extend"
    return "done" if done >= planned else "continue"


def resumed_options(opts: Any, saved: Mapping[str, Any], given: Collection[str], where: Path) -> Any:
    """``opts`` (a :class:`~effnetv2.train.runner.TrainOptions`) with each option not in ``given`` taken from
    ``saved``, the options the run in ``where`` last ran with (its state's ``args``). A starting-weights file that
    is gone is named here: the resume reads it again for its config (and checks it is the file the run began with)."""
    fields = {f.name for f in dataclasses.fields(opts)}
    taken = {k: v for k, v in saved.items() if k in fields and k not in given}
    checkpoint = taken.get("checkpoint")
    if checkpoint and not Path(checkpoint).exists():
        raise TrainError(
            f"--resume: the run in {where} started from --checkpoint {checkpoint}, which no longer exists; a resume "
            "reads it again for its config: put it back, or pass --checkpoint PATH to the same file"
        )
    return dataclasses.replace(opts, **taken)


def all_finite(*modules: Optional[nn.Module]) -> bool:
    """Whether every parameter and floating buffer of the modules is finite."""
    for module in modules:
        if module is None:
            continue
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                return False
    return True
