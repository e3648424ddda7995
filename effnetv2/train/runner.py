"""A whole fine-tuning run (``effnetv2 train``): data, model, the RW recipe, DDP, resume and extend, the run folder.

:func:`fit` takes checked :class:`TrainOptions` (the command line checks ranges); every user error it finds is a
one-line exception: :class:`~effnetv2.train.run_folder.TrainError`, ``DatasetError``, ``CheckpointError``,
:class:`~effnetv2.train.engine.NonFiniteLossError`, :class:`~effnetv2.train.run_folder.RunFolderWriteError`.

Test hooks, read from the environment (not options: they are no use to a user):
``EFFNETV2_TEST_STOP_AFTER_EPOCHS=N`` stops after N epochs of this process as if it were interrupted;
``EFFNETV2_TEST_CHECKSUMS_DIR=DIR`` makes each rank write the SHA-256 of its weights after every epoch
(``DIR/rank{R}.sha256``, and ``DIR/rank{R}.ema.sha256`` with ``--ema``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import warnings
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler

from effnetv2.atomic import write_text
from effnetv2.data import create_transform, resolve_model_data_config
from effnetv2.defaults import STATE_FILE
from effnetv2.distributed import DistEnv, ShardSampler, broadcast_buffers, init_distributed, rank_device
from effnetv2.registry import create_model
from effnetv2.train import progressive
from effnetv2.train.data import image_folders
from effnetv2.train.ema import create_ema
from effnetv2.train.engine import NonFiniteLossError, StepConfig, evaluate, train_one_epoch
from effnetv2.train.mix import mixup_cutmix
from effnetv2.train.param_groups import apply_lr_scale, param_groups_layer_decay, param_groups_weight_decay
from effnetv2.train.provenance import fine_tuned_cfg, starting_weights, training_record
from effnetv2.train.reporting import RunReport, written_per_epoch
from effnetv2.train.rng import get_rng_state, seed_everything, set_rng_state
from effnetv2.train.run_folder import (
    BEST_MODEL_FILE,
    RunFolder,
    TrainError,
    all_finite,
    check_resume,
    model_files,
    resumed_options,
)
from effnetv2.train.schedule import WarmupCosineLR, cosine_with_warmup

STOP_AFTER_ENV = "EFFNETV2_TEST_STOP_AFTER_EPOCHS"
CHECKSUMS_ENV = "EFFNETV2_TEST_CHECKSUMS_DIR"


@dataclass
class TrainOptions:
    """The settings of a run; the names and defaults are those of ``effnetv2 train``'s options."""

    data: Union[str, os.PathLike]
    output: Union[str, os.PathLike]
    model: str = "efficientnetv2_rw_m.agc_in1k"
    pretrained: bool = False
    checkpoint: Optional[str] = None
    epochs: int = 10
    batch_size: int = 32
    img_size: Optional[int] = None
    lr: float = 0.01
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-5
    layer_decay: Optional[float] = None
    agc: float = 0.01
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    auto_augment: Optional[str] = None
    drop_path: float = 0.2
    drop: float = 0.0
    ema: Optional[float] = None
    amp: Optional[str] = None
    channels_last: bool = False
    grad_checkpointing: bool = False
    freeze_backbone_epochs: int = 0
    sync_bn: bool = False
    workers: int = 4
    seed: int = 42
    device: Union[str, torch.device] = "cpu"
    resume: bool = False
    tensorboard: Optional[str] = None  # event files' folder ("": OUTPUT/tensorboard); None: none written
    save_state: str = "last"  # "last": keep the resume state; "none": the best model and the metrics only
    log_format: str = "text"  # progress on stdout: "text" (a line per epoch) or "json" (the metrics rows)
    randaug_magnitude: Optional[int] = None  # RandAugment's (torchvision's 0-30; None: its default, 9)
    # progressive learning (effnetv2.train.progressive): stages (None: off), a Table 6 preset, the start values
    progressive: Optional[int] = None
    progressive_preset: Optional[str] = None  # "s" | "m" | "l": fills the values not set
    min_img_size: Optional[int] = None  # the first stage's size (None: img_size // 2)
    randaug_magnitude_start: Optional[float] = None  # None: the paper's 5
    mixup_start: Optional[float] = None  # None: 0
    cutmix_start: Optional[float] = None  # None: 0
    drop_start: Optional[float] = None  # None: the paper's 0.1
    progressive_batch: bool = False  # constant-memory batches: (Se/Si)^2 larger per stage (capped), LR scaled alike


@dataclass
class TrainResult:
    epochs_done: int
    epochs: int
    best_top1: float
    nothing_to_do: bool = False


def weights_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict's names and bytes (equal on two ranks ⇔ identical weights and buffers)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _recipe(opts: TrainOptions, world_size: int, train_images: int, img_size: int) -> dict[str, Any]:
    recipe = {k: getattr(opts, k) for k in TrainOptions.__dataclass_fields__ if k in _RECIPE_FROM_OPTIONS}
    recipe.update(world_size=world_size, train_images=train_images, img_size=img_size)
    return recipe


_RECIPE_FROM_OPTIONS = (
    "model",
    "batch_size",
    "lr",
    "momentum",
    "warmup_epochs",
    "weight_decay",
    "layer_decay",
    "agc",
    "label_smoothing",
    "mixup",
    "cutmix",
    "auto_augment",
    "randaug_magnitude",
    "drop",
    "drop_path",
    "ema",
    "freeze_backbone_epochs",
    "sync_bn",
    "seed",
)


def fit(opts: TrainOptions, given: Optional[Collection[str]] = None) -> TrainResult:
    """Run (or resume, or extend) the training that ``opts`` describes; rank 0 writes ``opts.output``.

    ``given``: the options the caller set (the command line's explicit ones). A resume takes every other one from
    the run folder; the given ones are compared with the run's (see
    :func:`~effnetv2.train.run_folder.check_resume`). None: every option of ``opts`` counts as given.
    """
    if opts.resume and opts.save_state == "none" and (given is None or "save_state" in given):
        raise TrainError(
            f"--resume --save-state none: a resumed run keeps its {STATE_FILE} up to date (its folder would "
            "otherwise hold a state older than its metrics); leave --save-state out"
        )
    device = torch.device(opts.device)
    env = init_distributed(device)
    device = rank_device(device, env)
    try:
        train_set, val_set = image_folders(Path(opts.data))  # a wrong layout stops here, before any write
        folder = RunFolder(opts.output)
        if env.is_main:
            folder.open(resume=opts.resume)  # takes the lock, held until this process ends
        elif opts.resume and not folder.has_state():
            raise TrainError(f"--resume: {folder.state_path} does not exist; start without --resume")
        try:
            return _fit(opts, given, env, device, folder, train_set, val_set)
        finally:
            folder.unlock()
    finally:
        if env.enabled and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Run:
    """The fixed facts of a run: its options, this process, the run folder, the recipe and the class names."""

    opts: TrainOptions
    env: DistEnv
    folder: RunFolder
    recipe: dict[str, Any]
    classes: list[str]
    images: tuple[int, int]  # training and validation images
    start: dict[str, Any] = field(default_factory=dict)  # the starting weights (provenance.starting_weights)
    schedule: Optional[progressive.ProgressiveSchedule] = None  # progressive learning's stages


@dataclass
class _Loaders:
    train: DataLoader
    val: DataLoader
    train_sampler: DistributedSampler
    norm: dict[str, Any] = field(default_factory=dict)  # interpolation, mean, std: a stage's train transform
    train_kw: dict[str, Any] = field(default_factory=dict)  # the train loader's arguments (a stage's batch rebuilds it)


@dataclass
class _Trainer:
    """What the epoch loop steps: the model, the RW recipe's optimizer, schedule and EMA, and how a step runs."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: WarmupCosineLR
    ema: Optional[AveragedModel]
    scaler: Optional[torch.amp.GradScaler]
    loss_fn: nn.Module
    step_cfg: StepConfig
    steps: int  # optimizer steps per epoch

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved as the best model: the EMA weights when there are some."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class _Progress:
    """Where the run stands: the first epoch this process runs, the best top-1 so far, the metrics rows."""

    start_epoch: int = 0
    best_top1: float = -1.0
    rows: list[dict[str, Any]] = field(default_factory=list)


def _fit(
    opts: TrainOptions,
    given: Optional[Collection[str]],
    env: DistEnv,
    device: torch.device,
    folder: RunFolder,
    train_set,
    val_set,
) -> TrainResult:
    """Steps of a run in its opened folder: the model and data, then the epoch loop, from the start or the saved
    state (a finished run with the same ``--epochs``: nothing to do)."""
    # the saved state first: the run's options, and a mismatched one stops before the model is built
    state = folder.read_state() if opts.resume else None
    # the preset fills what the caller did not set, then a resume puts back the run's own values over both
    opts = progressive.with_preset(opts, given)
    if state is not None and given is not None:
        opts = resumed_options(opts, state.get("args") or {}, given, folder.path)
    seed_everything(opts.seed + env.rank)  # ranks augment differently; DDP copies rank 0's initial weights
    recipe = _recipe(opts, env.world_size, len(train_set), opts.img_size)
    recipe["progressive"] = progressive.settings(opts)
    run = _Run(opts, env, folder, recipe, list(train_set.classes), (len(train_set), len(val_set)))
    if opts.img_size is None:
        del run.recipe["img_size"]  # the model's default: known once the model is built
    mode = "new" if state is None else check_resume(state, run.recipe, run.classes, opts.epochs, folder.path)
    model = _create_model(opts, len(run.classes))
    run.start = starting_weights(opts.model, opts.pretrained, opts.checkpoint, model.pretrained_cfg)
    run.recipe.update(model_files(model))
    data_cfg, size = _evaluation_size(model, opts.img_size)
    run.recipe["img_size"] = size
    if state is not None:
        check_resume(state, run.recipe, run.classes, opts.epochs, folder.path)
    if mode == "done":
        return TrainResult(int(state["epoch"]), int(state["epochs"]), float(state["best_top1"]), True)
    run.schedule = _schedule(opts, size, state if mode == "extend" else None, env)

    loaders = _loaders(opts, env, device, train_set, val_set, data_cfg, size)
    _check_stage_batches(run.schedule, len(loaders.train_sampler))
    trainer = _trainer(opts, env, device, _place_model(model, opts, env, device), len(run.classes), len(loaders.train))
    progress = _Progress() if state is None else _resume(run, trainer, state, extend=mode == "extend")
    del state  # the saved weights, optimizer and EMA: not kept through the run
    return _run_epochs(run, trainer, loaders, progress)


def _schedule(
    opts: TrainOptions, size: int, extended: Optional[dict[str, Any]], env: DistEnv
) -> Optional[progressive.ProgressiveSchedule]:
    """Progressive learning's stages over ``opts.epochs`` ending at ``size``, printed (main process) before
    training; an extension (``extended``: the saved state) says in one line that they were recomputed."""
    if opts.progressive_batch and not opts.progressive:
        raise TrainError("--progressive-batch scales each progressive stage's batch: it needs --progressive STAGES")
    try:
        schedule = progressive.schedule_for(opts, size)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if schedule is not None and env.is_main:
        out = sys.stdout if opts.log_format == "text" else sys.stderr
        if extended is not None:
            print(
                f"effnetv2: progressive learning: the {opts.progressive} stages are recomputed over "
                f"{opts.epochs} epochs (were {int(extended['epochs'])}); epochs {int(extended['epoch']) + 1} on "
                "follow the new schedule",
                file=out,
            )
        print(f"effnetv2: progressive learning in {opts.progressive} stage(s), evaluated at {size} px:", file=out)
        for line in schedule.lines():
            print(f"  {line}", file=out)
        out.flush()
    return schedule


def _create_model(opts: TrainOptions, num_classes: int) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*classifier.*")  # new num_classes: fresh classifier, expected
        # a resume reads the same model files as the start (the state's weights replace theirs): check_resume
        # compares them with the run's
        return create_model(
            opts.model,
            pretrained=opts.pretrained,
            checkpoint_path=opts.checkpoint,
            num_classes=num_classes,
            drop_rate=opts.drop,
            drop_path_rate=opts.drop_path,
        )


def _evaluation_size(model: nn.Module, img_size: Optional[int]) -> tuple[dict[str, Any], int]:
    """The model's data config and the run's image size (``img_size``, else the model's); the model's
    ``pretrained_cfg`` made to say that size."""
    data_cfg = resolve_model_data_config(model)
    size = img_size or data_cfg["input_size"][-1]
    # The saved config.json describes this run's evaluation: predict/validate on the saved model see what val saw;
    # and this model, not the weights it started from (their tag and description: provenance.training_record).
    model.pretrained_cfg = {
        **{
            k: v
            for k, v in fine_tuned_cfg(model.pretrained_cfg).items()
            if k not in ("test_input_size", "test_crop_pct", "file")
        },
        "input_size": (model.in_chans, size, size),
    }
    return data_cfg, size


def _loaders(
    opts: TrainOptions, env: DistEnv, device: torch.device, train_set, val_set, data_cfg: dict[str, Any], size: int
) -> _Loaders:
    """Transforms from the model's pretrained config at ``size``; this process's share of each set."""
    norm = dict(interpolation=data_cfg["interpolation"], mean=data_cfg["mean"], std=data_cfg["std"])
    magnitude = progressive.DEFAULT_RANDAUG_MAGNITUDE if opts.randaug_magnitude is None else opts.randaug_magnitude
    train_set.transform = create_transform(
        size, is_training=True, auto_augment=opts.auto_augment, randaug_magnitude=magnitude, **norm
    )
    val_set.transform = create_transform(size, is_training=False, crop_pct=data_cfg["crop_pct"], **norm)
    train_sampler = DistributedSampler(train_set, env.world_size, env.rank, shuffle=True, seed=opts.seed)
    loader_kw = dict(
        batch_size=opts.batch_size, num_workers=opts.workers, pin_memory=device.type == "cuda", persistent_workers=False
    )
    # full batches only: a last batch of one image breaks BatchNorm at small sizes
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=True, **loader_kw)
    if len(train_loader) == 0:
        raise TrainError(
            f"{len(train_set)} training images make no full batch of {opts.batch_size} per process; lower --batch-size"
        )
    val_loader = DataLoader(val_set, sampler=ShardSampler(len(val_set), env.rank, env.world_size), **loader_kw)
    train_kw = dict(loader_kw, sampler=train_sampler, drop_last=True)
    return _Loaders(train_loader, val_loader, train_sampler, norm, train_kw)


def _check_stage_batches(schedule: Optional[progressive.ProgressiveSchedule], images: int) -> None:
    """Refuse a ``--progressive-batch`` stage whose batch is more than this process's ``images`` per epoch."""
    for s in schedule.stages if schedule is not None else ():
        if s.batch_size > images:
            raise TrainError(
                f"--progressive-batch: stage {s.index + 1}'s batch of {s.batch_size} is more than the {images} "
                "training images per process; lower --batch-size or leave --progressive-batch out"
            )


def _place_model(model: nn.Module, opts: TrainOptions, env: DistEnv, device: torch.device) -> nn.Module:
    """Checkpointing, SyncBatchNorm, device and memory format as the options ask."""
    if opts.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if opts.sync_bn and env.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _trainer(
    opts: TrainOptions, env: DistEnv, device: torch.device, model: nn.Module, num_classes: int, steps: int
) -> _Trainer:
    """The RW recipe: SGD-Nesterov, no decay on norms/biases, AGC, cosine with warmup (per step), optional EMA."""
    if opts.layer_decay is not None:
        groups = param_groups_layer_decay(model, opts.weight_decay, layer_decay=opts.layer_decay)
    else:
        groups = param_groups_weight_decay(model, opts.weight_decay)
    optimizer = torch.optim.SGD(apply_lr_scale(groups, opts.lr), lr=opts.lr, momentum=opts.momentum, nesterov=True)
    scheduler = cosine_with_warmup(optimizer, opts.epochs * steps, round(opts.warmup_epochs * steps))
    ema = create_ema(model, opts.ema) if opts.ema is not None else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[opts.amp]
    scaler = torch.amp.GradScaler(device.type) if opts.amp == "fp16" else None
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=opts.label_smoothing)
    step_cfg = StepConfig(
        device=device,
        amp_dtype=amp_dtype,
        channels_last=opts.channels_last,
        agc=opts.agc,
        batch_transform=mixup_cutmix(num_classes, opts.mixup, opts.cutmix),
        progress=env.is_main and sys.stderr.isatty(),
    )
    return _Trainer(model, optimizer, scheduler, ema, scaler, loss_fn, step_cfg, steps)


def _resume(run: _Run, trainer: _Trainer, state: dict[str, Any], extend: bool) -> _Progress:
    """Load the saved state into ``trainer`` and this process's random generators; where the run stands."""
    trainer.model.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if extend:  # the cosine re-planned from here to the new end (see WarmupCosineLR.extend)
        trainer.scheduler.extend(run.opts.epochs * trainer.steps)
    if trainer.ema is not None:
        trainer.ema.load_state_dict(state["ema"])
    if trainer.scaler is not None and state.get("scaler"):
        trainer.scaler.load_state_dict(state["scaler"])
    progress = _Progress(int(state["epoch"]), float(state["best_top1"]), list(state["metrics"]))
    set_rng_state(state["rng"][run.env.rank])
    if run.env.is_main:  # a kill between the state and the metrics write left the file one row behind
        run.folder.write_metrics(progress.rows)
    return progress


def _run_epochs(run: _Run, trainer: _Trainer, loaders: _Loaders, progress: _Progress) -> TrainResult:
    """The epoch loop, from ``progress.start_epoch`` to ``--epochs`` (or the test hook's stop)."""
    opts, env = run.opts, run.env
    stop_after = int(os.environ.get(STOP_AFTER_ENV) or 0)
    checksums = os.environ.get(CHECKSUMS_ENV)
    args = _saved_args(opts)
    report = _open_report(run, trainer, progress)
    try:
        ddp, frozen, done, stage = None, None, progress.start_epoch, None
        for epoch in range(progress.start_epoch, opts.epochs):
            if (epoch < opts.freeze_backbone_epochs) != frozen:
                frozen = epoch < opts.freeze_backbone_epochs
                ddp = _freeze_backbone(trainer, frozen, env)
            loaders.train_sampler.set_epoch(epoch)
            stage = _enter_stage(run, trainer, loaders, epoch, stage)
            stats = _train_epoch(run, trainer, ddp, loaders.train, epoch, report)
            stats = _evaluate_epoch(run, trainer, loaders.val, epoch, stats)
            if stage is not None:
                stats.update(progressive.stage_values(stage))
            rng = _gathered_rng_states(env)
            if env.is_main:
                improved = _save_epoch(run, trainer, progress, stats, rng, args)
                report.show(stats, improved)
                report.epoch(progress.rows)
            done = epoch + 1
            if checksums:
                _write_checksums(Path(checksums), env, trainer)
            if env.enabled:
                dist.barrier()
            if stop_after and done - progress.start_epoch >= stop_after:
                break
        if report is not None:
            report.closing(progress.rows, run.folder.path / BEST_MODEL_FILE)
        return TrainResult(done, opts.epochs, progress.best_top1)
    finally:
        if report is not None:
            report.close()


def _enter_stage(
    run: _Run, trainer: _Trainer, loaders: _Loaders, epoch: int, current: Optional[progressive.Stage]
) -> Optional[progressive.Stage]:
    """The progressive stage of ``epoch``, applied when it is not ``current`` (a new stage, or the first epoch this
    process runs: a resume re-enters the stage it stopped in)."""
    if run.schedule is None:
        return None
    stage = run.schedule.stage_for_epoch(epoch)
    if stage != current:
        progressive.apply_stage(
            stage, trainer.model, loaders.train.dataset, trainer.step_cfg, len(run.classes), loaders.norm
        )
    if run.opts.progressive_batch:
        _pace_stage(run, trainer, loaders, epoch, stage)
    return stage


def _pace_stage(run: _Run, trainer: _Trainer, loaders: _Loaders, epoch: int, stage: progressive.Stage) -> None:
    """``--progressive-batch``: the train loader at the stage's batch (same sampler: the same image order, fewer
    steps), and the LR schedule placed at the start of ``epoch`` (in steps of the run's batch, ``trainer.steps`` per
    epoch) with ``len(loader)`` steps of this batch worth ``trainer.steps`` of them, its LR scaled by the stage's
    ``lr_scale`` (the linear scaling rule). Set at every epoch's start: a resume mid-stage paces as the run did."""
    if loaders.train.batch_size != stage.batch_size:
        loaders.train = DataLoader(loaders.train.dataset, **dict(loaders.train_kw, batch_size=stage.batch_size))
    trainer.scheduler.set_pace(epoch * trainer.steps, trainer.steps, len(loaders.train), stage.lr_scale)


def _saved_args(opts: TrainOptions) -> dict[str, Any]:
    """The options, saved for information: what the run was started or resumed with."""
    return {
        k: v if isinstance(v, (int, float, bool)) or v is None else str(v) for k, v in dataclasses.asdict(opts).items()
    }


def _open_report(run: _Run, trainer: _Trainer, progress: _Progress) -> Optional[RunReport]:
    """Progress lines, curves and TensorBoard events, by the main process only; first, what each epoch writes."""
    if not run.env.is_main:
        return None
    out, opts = run.folder.path, run.opts
    events = None if opts.tensorboard is None else Path(opts.tensorboard or out / "tensorboard")
    report = RunReport(out, events, trainer.steps, progress.start_epoch, opts.log_format, opts.epochs, len(run.classes))
    report.note(written_per_epoch(out, trainer.model, trainer.ema, opts.momentum > 0, opts.save_state == "last"))
    report.resumed(progress.rows)
    return report


def _freeze_backbone(trainer: _Trainer, frozen: bool, env: DistEnv) -> nn.Module:
    """Train only the classifier (``frozen``) or everything; returns the module to step (DDP-wrapped under DDP)."""
    model = trainer.model
    head = {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head)
    if not env.enabled:
        return model
    # DDP registers the parameters that need gradients when it wraps: wrap again after (un)freezing
    device = trainer.step_cfg.device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _last_good(run: _Run, epoch: int) -> str:
    """What a stop in ``epoch`` leaves to resume from, for its message."""
    if not epoch:
        return "no epoch was saved"
    if run.opts.save_state == "none":
        return f"no resume state is kept (--save-state none); {run.folder.path / BEST_MODEL_FILE} is the best model"
    return f"{run.folder.path / 'last_state.pt'} still holds epoch {epoch}"


def _train_epoch(
    run: _Run, trainer: _Trainer, ddp: nn.Module, loader: DataLoader, epoch: int, report: Optional[RunReport]
) -> dict[str, Any]:
    """One epoch of optimizer steps; a non-finite loss stops the run with a message that says where and what next."""
    try:
        return train_one_epoch(
            ddp,
            loader,
            trainer.loss_fn,
            trainer.optimizer,
            trainer.scheduler,
            trainer.step_cfg,
            run.env,
            trainer.scaler,
            trainer.ema,
            clip_target=trainer.model,
            desc=f"epoch {epoch + 1}/{run.opts.epochs}",
            on_step=None if report is None else lambda step, values: report.step(epoch, step, values, len(loader)),
        )
    except NonFiniteLossError as e:
        raise NonFiniteLossError(
            f"{e} of epoch {epoch + 1} (step {epoch * trainer.steps + e.step} of the run); stopped, "
            f"{_last_good(run, epoch)}; lower --lr" + (" or use --amp bf16" if run.opts.amp == "fp16" else ""),
            e.step,
        ) from None


def _evaluate_epoch(
    run: _Run, trainer: _Trainer, loader: DataLoader, epoch: int, stats: dict[str, Any]
) -> dict[str, Any]:
    """Synchronise BatchNorm statistics, refuse non-finite weights, evaluate: the epoch's metrics row."""
    # same BN statistics everywhere → same evaluation and the same EMA on every rank
    broadcast_buffers(trainer.model, run.env)
    if trainer.ema is not None:
        broadcast_buffers(trainer.ema.module, run.env)
    last_good = _last_good(run, epoch)
    if not all_finite(trainer.model, trainer.ema.module if trainer.ema is not None else None):
        raise NonFiniteLossError(
            f"the weights became NaN or infinite in epoch {epoch + 1}; stopped, {last_good}; lower --lr", trainer.steps
        )
    stats.update(evaluate(trainer.eval_model, loader, trainer.step_cfg, run.env))
    if not math.isfinite(stats["val_loss"]):
        raise NonFiniteLossError(
            f"the validation loss became {stats['val_loss']} after epoch {epoch + 1}; stopped, {last_good}; lower --lr",
            trainer.steps,
        )
    return {"epoch": epoch + 1, **stats, "lr": max(g["lr"] for g in trainer.optimizer.param_groups)}


def _gathered_rng_states(env: DistEnv) -> list[Any]:
    """Every process's random generator states, by rank (saved so that a resume draws what the run would have)."""
    if not env.enabled:
        return [get_rng_state()]
    rng: list[Any] = [None] * env.world_size
    dist.all_gather_object(rng, get_rng_state())
    return rng


def _save_epoch(
    run: _Run, trainer: _Trainer, progress: _Progress, stats: dict[str, Any], rng: list[Any], args: dict[str, Any]
) -> bool:
    """Record the epoch in the run folder (main process): the best model when it improved, the state, metrics.
    Whether the epoch improved the best top-1."""
    improved = stats["val_top1"] > progress.best_top1
    progress.best_top1 = max(progress.best_top1, stats["val_top1"])
    progress.rows.append(stats)
    ema, scaler = trainer.ema, trainer.scaler
    state = dict(
        epoch=stats["epoch"],
        epochs=run.opts.epochs,
        best_top1=progress.best_top1,
        metrics=progress.rows,
        recipe=run.recipe,
        classes=run.classes,
        model=trainer.model.state_dict(),
        optimizer=trainer.optimizer.state_dict(),
        scheduler=trainer.scheduler.state_dict(),
        ema=ema.state_dict() if ema is not None else None,
        scaler=scaler.state_dict() if scaler is not None else None,
        rng=rng,
        args=args,
    )
    training = training_record(
        run.start, str(run.opts.data), run.classes, run.images, run.recipe["img_size"], run.opts.epochs, stats
    )
    if run.schedule is not None:  # the stages the run trained with (config.json's training entry, the state)
        training["progressive"] = state["progressive"] = run.schedule.to_record()
    run.folder.end_epoch(
        state,
        best_model=trainer.eval_model if improved else None,
        label_names=run.classes,
        training=training,
        keep_state=run.opts.save_state == "last",
    )
    return improved


def _write_checksums(folder: Path, env: DistEnv, trainer: _Trainer) -> None:
    """The test hook: this rank's weights (and EMA weights) as SHA-256, to compare ranks."""
    write_text(Path(folder, f"rank{env.rank}.sha256"), weights_checksum(trainer.model))
    if trainer.ema is not None:
        write_text(Path(folder, f"rank{env.rank}.ema.sha256"), weights_checksum(trainer.ema.module))
