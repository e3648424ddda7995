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
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from effnetv2.atomic import write_text
from effnetv2.train.engine import NonFiniteLossError
from effnetv2.train.run_folder import RunFolder, TrainError, all_finite, check_resume, model_files

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
    "drop",
    "drop_path",
    "ema",
    "freeze_backbone_epochs",
    "sync_bn",
    "seed",
)


def fit(opts: TrainOptions) -> TrainResult:
    """Run (or resume, or extend) the training that ``opts`` describes; rank 0 writes ``opts.output``."""
    from effnetv2.distributed import init_distributed, rank_device
    from effnetv2.train.data import image_folders

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
            return _fit(opts, env, device, folder, train_set, val_set)
        finally:
            folder.unlock()
    finally:
        if env.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _fit(opts: TrainOptions, env, device: torch.device, folder: RunFolder, train_set, val_set) -> TrainResult:
    from effnetv2 import create_model
    from effnetv2.data import create_transform, resolve_model_data_config
    from effnetv2.distributed import ShardSampler, broadcast_buffers
    from effnetv2.train import (
        apply_lr_scale,
        cosine_with_warmup,
        create_ema,
        get_rng_state,
        mixup_cutmix,
        param_groups_layer_decay,
        param_groups_weight_decay,
        seed_everything,
        set_rng_state,
    )
    from effnetv2.train.engine import StepConfig, evaluate, train_one_epoch
    from effnetv2.train.reporting import RunReport

    stop_after = int(os.environ.get(STOP_AFTER_ENV) or 0)
    checksums = os.environ.get(CHECKSUMS_ENV)
    seed_everything(opts.seed + env.rank)  # ranks augment differently; DDP copies rank 0's initial weights
    classes = list(train_set.classes)
    num_classes = len(classes)
    out = folder.path

    # the saved state first: a mismatched option stops before the model is built
    state = folder.read_state() if opts.resume else None
    recipe = _recipe(opts, env.world_size, len(train_set), opts.img_size)
    if opts.img_size is None:
        del recipe["img_size"]  # the model's default: known once the model is built
    mode = "new" if state is None else check_resume(state, recipe, classes, opts.epochs, out)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*classifier.*")  # new num_classes: fresh classifier, expected
        # a resume reads the same model files as the start (the state's weights replace theirs): check_resume
        # compares them with the run's
        model = create_model(
            opts.model,
            pretrained=opts.pretrained,
            checkpoint_path=opts.checkpoint,
            num_classes=num_classes,
            drop_rate=opts.drop,
            drop_path_rate=opts.drop_path,
        )
    recipe.update(model_files(model))
    # transforms from the model's pretrained config, at --img-size
    data_cfg = resolve_model_data_config(model)
    size = opts.img_size or data_cfg["input_size"][-1]
    recipe["img_size"] = size
    # The saved config.json describes this run's evaluation: predict/validate on the saved model see what val saw.
    model.pretrained_cfg = {
        **{k: v for k, v in model.pretrained_cfg.items() if k not in ("test_input_size", "test_crop_pct", "file")},
        "input_size": (model.in_chans, size, size),
    }
    if state is not None:
        check_resume(state, recipe, classes, opts.epochs, out)
    if mode == "done":
        return TrainResult(int(state["epoch"]), int(state["epochs"]), float(state["best_top1"]), True)

    norm = dict(interpolation=data_cfg["interpolation"], mean=data_cfg["mean"], std=data_cfg["std"])
    train_set.transform = create_transform(size, is_training=True, auto_augment=opts.auto_augment, **norm)
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

    if opts.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if opts.sync_bn and env.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)

    # the RW recipe: SGD-Nesterov, no decay on norms/biases, AGC, cosine with warmup, per step
    if opts.layer_decay is not None:
        groups = param_groups_layer_decay(model, opts.weight_decay, layer_decay=opts.layer_decay)
    else:
        groups = param_groups_weight_decay(model, opts.weight_decay)
    optimizer = torch.optim.SGD(apply_lr_scale(groups, opts.lr), lr=opts.lr, momentum=opts.momentum, nesterov=True)
    steps = len(train_loader)
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

    options = dataclasses.asdict(opts)  # saved for information: what the run was started or resumed with
    start_epoch, best_top1, rows = 0, -1.0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if mode == "extend":  # the cosine re-planned from here to the new end (see WarmupCosineLR.extend)
            scheduler.extend(opts.epochs * steps)
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_top1, rows = int(state["epoch"]), float(state["best_top1"]), list(state["metrics"])
        set_rng_state(state["rng"][env.rank])
        if env.is_main:  # a kill between the state and the metrics write left the file one row behind
            folder.write_metrics(rows)
        del state

    report = None
    if env.is_main:
        events = None if opts.tensorboard is None else Path(opts.tensorboard or out / "tensorboard")
        report = RunReport(out, events, steps, start_epoch)
        report.resumed(rows)
    try:
        ddp, frozen, done = None, None, start_epoch
        for epoch in range(start_epoch, opts.epochs):
            now_frozen = epoch < opts.freeze_backbone_epochs
            if now_frozen != frozen:
                frozen = now_frozen
                head = {id(p) for p in model.get_classifier().parameters()}
                for p in model.parameters():
                    p.requires_grad_(not frozen or id(p) in head)
                # DDP registers the parameters that need gradients when it wraps: wrap again after (un)freezing
                ddp = (
                    DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
                    if env.enabled
                    else model
                )
            train_sampler.set_epoch(epoch)
            last_good = f"{out / 'last_state.pt'} still holds epoch {epoch}" if epoch else "no epoch was saved"
            try:
                stats = train_one_epoch(
                    ddp,
                    train_loader,
                    loss_fn,
                    optimizer,
                    scheduler,
                    step_cfg,
                    env,
                    scaler,
                    ema,
                    clip_target=model,
                    desc=f"epoch {epoch + 1}/{opts.epochs}",
                    on_step=None if report is None else lambda step, values, e=epoch: report.step(e, step, values),
                )
            except NonFiniteLossError as e:
                raise NonFiniteLossError(
                    f"{e} of epoch {epoch + 1} (step {epoch * steps + e.step} of the run); stopped, {last_good}; "
                    "lower --lr" + (" or use --amp bf16" if opts.amp == "fp16" else ""),
                    e.step,
                ) from None
            # same BN statistics everywhere → same evaluation and the same EMA on every rank
            broadcast_buffers(model, env)
            if ema is not None:
                broadcast_buffers(ema.module, env)
            if not all_finite(model, ema.module if ema is not None else None):
                raise NonFiniteLossError(
                    f"the weights became NaN or infinite in epoch {epoch + 1}; stopped, {last_good}; lower --lr", steps
                )
            eval_model = ema.module if ema is not None else model
            stats.update(evaluate(eval_model, val_loader, step_cfg, env))
            if not math.isfinite(stats["val_loss"]):
                raise NonFiniteLossError(
                    f"the validation loss became {stats['val_loss']} after epoch {epoch + 1}; stopped, {last_good}; "
                    "lower --lr",
                    steps,
                )
            stats = {"epoch": epoch + 1, **stats, "lr": max(g["lr"] for g in optimizer.param_groups)}
            rng = [get_rng_state()]
            if env.enabled:
                rng = [None] * env.world_size
                dist.all_gather_object(rng, get_rng_state())
            if env.is_main:
                improved = stats["val_top1"] > best_top1
                best_top1 = max(best_top1, stats["val_top1"])
                rows.append(stats)
                folder.end_epoch(
                    dict(
                        epoch=epoch + 1,
                        epochs=opts.epochs,
                        best_top1=best_top1,
                        metrics=rows,
                        recipe=recipe,
                        classes=classes,
                        model=model.state_dict(),
                        optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        ema=ema.state_dict() if ema is not None else None,
                        scaler=scaler.state_dict() if scaler is not None else None,
                        rng=rng,
                        args={
                            k: v if isinstance(v, (int, float, bool)) or v is None else str(v)
                            for k, v in options.items()
                        },
                    ),
                    best_model=eval_model if improved else None,
                    label_names=classes,
                )
                print(json.dumps(stats), flush=True)
                report.epoch(rows)
            done = epoch + 1
            if checksums:
                write_text(Path(checksums, f"rank{env.rank}.sha256"), weights_checksum(model))
                if ema is not None:
                    write_text(Path(checksums, f"rank{env.rank}.ema.sha256"), weights_checksum(ema.module))
            if env.enabled:
                dist.barrier()
            if stop_after and done - start_epoch >= stop_after:
                break
        return TrainResult(done, opts.epochs, best_top1)
    finally:
        if report is not None:
            report.close()
