"""``effnetv2 train DATA --output DIR``: fine-tune on an ImageFolder tree with the RW recipe; DDP under torchrun."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from effnetv2.atomic import atomic_path
from effnetv2.cli import CLIError
from effnetv2.weights.saving import save_pretrained

STATE_FILE = "last_state.pt"
METRICS_FILE = "metrics.jsonl"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune on an ImageFolder tree (DATA/train/<class>/*, DATA/val/<class>/*)",
        description="Fine-tune with the RW recipe: SGD-Nesterov, adaptive gradient clipping, cosine LR with "
        "linear warmup, optional EMA. Run under `torchrun --nproc_per_node N -m effnetv2 train ...` for DDP.",
    )
    p.add_argument("data", help="folder holding train/<class>/<image> and val/<class>/<image>")
    p.add_argument("--output", "-o", required=True, help="run folder: model.safetensors, config.json, metrics...")
    p.add_argument("--model", default="efficientnetv2_rw_m.agc_in1k", help="model name (default: %(default)s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", action="store_true", help="start from the published weights (hub)")
    src.add_argument("--checkpoint", help="start from a local timm- or effnetv2-format checkpoint")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32, help="per process (default: %(default)s)")
    p.add_argument("--img-size", type=int, default=None, help="train/val size (default: the model's, 320)")
    p.add_argument("--lr", type=float, default=0.01, help="peak LR for --batch-size × processes")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--weight-decay", type=float, default=1e-5, help="not applied to norms and biases")
    p.add_argument("--layer-decay", type=float, default=None, help="layer-wise LR decay factor (off by default)")
    p.add_argument("--agc", type=float, default=0.01, help="adaptive clip factor; 0 turns clipping off")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--mixup", type=float, default=0.0, help="MixUp alpha (0: off)")
    p.add_argument("--cutmix", type=float, default=0.0, help="CutMix alpha (0: off)")
    p.add_argument(
        "--auto-augment", choices=("rand", "trivial"), default=None, help="torchvision RandAugment / TrivialAugmentWide"
    )
    p.add_argument("--drop-path", type=float, default=0.2, help="stochastic depth rate of the last block")
    p.add_argument("--drop", type=float, default=0.0, help="dropout before the classifier")
    p.add_argument(
        "--ema",
        type=float,
        nargs="?",
        const=0.9998,
        default=None,
        metavar="DECAY",
        help="keep an EMA of the weights (default decay 0.9998); it is evaluated and saved",
    )
    p.add_argument("--amp", choices=("bf16", "fp16"), default=None, help="mixed precision")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true", help="recompute activations: less memory")
    p.add_argument("--freeze-backbone-epochs", type=int, default=0, help="train only the classifier at first")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (DDP)")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes per training process")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--resume", action="store_true", help=f"continue from DIR/{STATE_FILE}")
    # test hooks: stop early as if interrupted; each rank writes a checksum of its weights
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--debug-checksums", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.img_size is not None and args.img_size < 32:
        raise CLIError(f"--img-size must be >= 32, got {args.img_size}")
    if args.lr <= 0:
        raise CLIError(f"--lr must be positive, got {args.lr}")
    if not 0 <= args.label_smoothing < 1:
        raise CLIError(f"--label-smoothing must be in [0, 1), got {args.label_smoothing}")
    if args.ema is not None and not 0 < args.ema < 1:
        raise CLIError(f"--ema decay must be in (0, 1), got {args.ema}")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise CLIError(f"--checkpoint {args.checkpoint}: no such file")
    out = Path(args.output)
    if args.resume and not (out / STATE_FILE).is_file():
        raise CLIError(f"--resume: {out / STATE_FILE} does not exist; start without --resume")
    if not args.resume and (out / STATE_FILE).exists():
        raise CLIError(f"{out} already holds a training run; pass --resume to continue it or choose another --output")


def _device(args: argparse.Namespace) -> torch.device:
    if args.device:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _weights_checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run(args: argparse.Namespace) -> int:
    from effnetv2.train.data import DatasetError, UnreadableImageError

    _check_args(args)
    try:
        return _train(args)
    except DatasetError as e:
        raise CLIError(str(e)) from None
    except (UnreadableImageError, RuntimeError) as e:
        # a worker re-raises the loader's error with its traceback in the message: keep the last line
        lines = str(e).strip().splitlines()
        if isinstance(e, UnreadableImageError) or (lines and "UnreadableImageError" in lines[-1]):
            raise CLIError(lines[-1].split("UnreadableImageError: ")[-1]) from None
        raise


def _train(args: argparse.Namespace) -> int:
    from effnetv2 import create_model
    from effnetv2.data import create_transform, resolve_model_data_config
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
    from effnetv2.train.data import image_folders
    from effnetv2.train.distributed import ShardSampler, broadcast_buffers, init_distributed
    from effnetv2.train.engine import StepConfig, evaluate, train_one_epoch

    device = _device(args)
    env = init_distributed(device)
    if device.type == "cuda" and env.enabled:
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    out = Path(args.output)
    seed_everything(args.seed + env.rank)  # ranks augment differently; DDP copies rank 0's initial weights

    train_set, val_set = image_folders(Path(args.data))
    num_classes = len(train_set.classes)
    # model
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*classifier.*")  # new num_classes: fresh classifier, expected
        model = create_model(
            args.model,
            pretrained=args.pretrained,
            checkpoint_path=args.checkpoint,
            num_classes=num_classes,
            drop_rate=args.drop,
            drop_path_rate=args.drop_path,
        )
    # transforms from the model's pretrained config, at --img-size
    data_cfg = resolve_model_data_config(model)
    size = args.img_size or data_cfg["input_size"][-1]
    norm = dict(interpolation=data_cfg["interpolation"], mean=data_cfg["mean"], std=data_cfg["std"])
    train_set.transform = create_transform(size, is_training=True, auto_augment=args.auto_augment, **norm)
    val_set.transform = create_transform(size, is_training=False, crop_pct=data_cfg["crop_pct"], **norm)
    train_sampler = DistributedSampler(train_set, env.world_size, env.rank, shuffle=True, seed=args.seed)
    loader_kw = dict(
        batch_size=args.batch_size, num_workers=args.workers, pin_memory=device.type == "cuda", persistent_workers=False
    )
    # full batches only: a last batch of one image breaks BatchNorm at small sizes
    train_loader = DataLoader(train_set, sampler=train_sampler, drop_last=True, **loader_kw)
    if len(train_loader) == 0:
        raise CLIError(
            f"{len(train_set)} training images make no full batch of {args.batch_size} per process; lower --batch-size"
        )
    val_loader = DataLoader(val_set, sampler=ShardSampler(len(val_set), env.rank, env.world_size), **loader_kw)

    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.sync_bn and env.enabled:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)

    # the RW recipe: SGD-Nesterov, no decay on norms/biases, AGC, cosine with warmup, per step
    if args.layer_decay is not None:
        groups = param_groups_layer_decay(model, args.weight_decay, layer_decay=args.layer_decay)
    else:
        groups = param_groups_weight_decay(model, args.weight_decay)
    optimizer = torch.optim.SGD(apply_lr_scale(groups, args.lr), lr=args.lr, momentum=args.momentum, nesterov=True)
    steps = len(train_loader)
    scheduler = cosine_with_warmup(optimizer, args.epochs * steps, round(args.warmup_epochs * steps))
    ema = create_ema(model, args.ema) if args.ema is not None else None
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[args.amp]
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    step_cfg = StepConfig(
        device=device,
        amp_dtype=amp_dtype,
        channels_last=args.channels_last,
        agc=args.agc,
        batch_transform=mixup_cutmix(num_classes, args.mixup, args.cutmix),
        progress=env.is_main and sys.stderr.isatty(),
    )

    start_epoch, best_top1 = 0, -1.0
    if args.resume:
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
        if state["classes"] != list(train_set.classes):
            raise CLIError(f"the classes in {args.data} differ from those of the run in {out}; resume on the same data")
        saved_epochs = state["args"].get("epochs")
        if saved_epochs != args.epochs:  # the LR schedule's length is part of the saved state
            raise CLIError(f"the run in {out} was started with --epochs {saved_epochs}; resume with the same value")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            if state.get("ema") is None:
                raise CLIError("--ema was not used in the run being resumed; resume without --ema")
            ema.load_state_dict(state["ema"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best_top1 = int(state["epoch"]), float(state["best_top1"])
        rng = state["rng"]
        if len(rng) == env.world_size:
            set_rng_state(rng[env.rank])
        else:
            warnings.warn(
                f"resuming with {env.world_size} processes, saved with {len(rng)}: data order changes", stacklevel=1
            )
        if env.is_main:
            _truncate_metrics(out / METRICS_FILE, start_epoch)
    elif env.is_main:
        out.mkdir(parents=True, exist_ok=True)

    ddp, frozen = None, None
    for epoch in range(start_epoch, args.epochs):
        now_frozen = epoch < args.freeze_backbone_epochs
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
            desc=f"epoch {epoch + 1}/{args.epochs}",
        )
        broadcast_buffers(model, env)  # same BN statistics everywhere → same evaluation on every rank
        eval_model = ema.module if ema is not None else model
        stats.update(evaluate(eval_model, val_loader, step_cfg, env))
        stats = {"epoch": epoch + 1, **stats, "lr": max(g["lr"] for g in optimizer.param_groups)}
        rng = [get_rng_state()]
        if env.enabled:
            rng = [None] * env.world_size
            dist.all_gather_object(rng, get_rng_state())
        if env.is_main:
            if stats["val_top1"] > best_top1:
                best_top1 = stats["val_top1"]
                save_pretrained(eval_model, out, model_config=dict(label_names=list(train_set.classes)))
            state = dict(
                epoch=epoch + 1,
                best_top1=best_top1,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                ema=ema.state_dict() if ema is not None else None,
                scaler=scaler.state_dict() if scaler is not None else None,
                rng=rng,
                classes=list(train_set.classes),
                args={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
            )
            # metrics first: a resume drops lines of epochs the state does not hold
            with open(out / METRICS_FILE, "a") as f:
                f.write(json.dumps(stats) + "\n")
            with atomic_path(out / STATE_FILE) as tmp:
                torch.save(state, tmp)
            print(json.dumps(stats), flush=True)
        if args.debug_checksums:
            (out / f"rank{env.rank}.sha256").write_text(_weights_checksum(eval_model))
        if env.enabled:
            dist.barrier()
        if args.stop_after is not None and epoch + 1 >= args.stop_after:
            break
    if env.enabled:
        dist.destroy_process_group()
    return 0


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs the saved state does not include (written just before an interruption)."""
    if not path.is_file():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= epochs_done]
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(ln + "\n" for ln in lines))
