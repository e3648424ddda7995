"""What ``embed`` and ``features`` share: the model run over images, its outputs written to one file or, shard by
shard, to a folder (:mod:`effnetv2.cli.shards`), in one process or as one of torchrun's."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch import Tensor, nn

from effnetv2.cli import CLIError
from effnetv2.cli.batches import Batch, ImageRun, Output, exit_status, run_model
from effnetv2.cli.model_setup import eval_transform, image_run, inference_model, resolve_device
from effnetv2.cli.outputs import check_output
from effnetv2.cli.shards import ShardedOutput, default_shard_size
from effnetv2.distributed import (
    COMMAND_TIMEOUT,
    barrier,
    broadcast_object,
    close_distributed,
    init_distributed,
    launched_world_size,
    rank_device,
)
from effnetv2.errors import CheckpointError
from effnetv2.path_escape import encode_path
from effnetv2.shard_format import INDEX_FILE
from effnetv2.weights.reading import fingerprint

DataConfig = Mapping[str, Any]


@dataclass(frozen=True)
class Extraction:
    """What a command extracts: ``load()`` builds the model, ``to_tensors(model, rows)`` makes the tensors saved
    from the outputs of its batches, ``describe(model, data_config)`` the metadata every file carries,
    ``row_bytes(model, data_config)`` the size of one image's outputs (what the default shard size follows), and
    ``rows(model, count)`` names what ``count`` images gave, for the closing line (``200 × 2152 embeddings``)."""

    kind: str  # the command: "embed" or "features"
    load: Callable[[], nn.Module]
    to_tensors: Callable[[nn.Module, list[Output]], dict[str, Tensor]]
    describe: Callable[[nn.Module, DataConfig], dict[str, Any]]
    row_bytes: Callable[[nn.Module, DataConfig], int]
    rows: Callable[[nn.Module, int], str]


# Writes one output file: (path, tensors, image paths, metadata); returns how the closing line names what it wrote
# (``emb.npy (+ emb.paths.txt)``).
FileWriter = Callable[[Path, dict[str, Tensor], list[str], dict[str, Any]], str]


def say_done(text: str) -> None:
    """The closing line of a run that wrote its output: on stderr, so that stdout stays the data's."""
    print(f"effnetv2: {text}", file=sys.stderr)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def run_extraction(
    args: argparse.Namespace,
    files: Sequence[Path],
    extraction: Extraction,
    suffixes: Sequence[str],
    write_file: FileWriter,
    check_file: Callable[[Path], None] = lambda output: None,
) -> int:
    """``extraction`` over ``files`` into ``args.output``: a folder (no suffix) is sharded (:func:`run_sharded`);
    a file with one of ``suffixes`` is written by ``write_file`` once every batch is done. ``check_file`` adds a
    command's own check of the file output, before the model loads."""
    if is_folder_output(args.output):
        return run_sharded(args, files, extraction)
    check_file_output_options(args)
    output = check_output(args.output, suffixes)
    check_file(output)
    device = resolve_device(args.device)
    model = extraction.load()
    images, config = image_run(files, args, model, device)
    runner, amp = inference_model(model, args, device)
    paths: list[str] = []
    rows: list[Output] = []
    for batch_paths, out in run_model(runner, images, device, amp):
        paths.extend(map(str, batch_paths))
        rows.append(out)
    if not paths:
        print(f"effnetv2: no image could be read; {encode_path(output)} not written", file=sys.stderr)
        return 1
    written = write_file(output, extraction.to_tensors(model, rows), paths, extraction.describe(model, config))
    say_done(f"wrote {extraction.rows(model, len(paths))} to {written}, {len(images.failed)} skipped")
    return exit_status(images)


def check_file_output_options(args: argparse.Namespace) -> None:
    """--resume, --shard-size and torchrun need a folder output; a stray or malformed torchrun environment is
    refused first, in the same line as everywhere (:func:`~effnetv2.distributed.launched_world_size`)."""
    world_size = launched_world_size()
    if args.resume or args.shard_size is not None:
        option = "--resume" if args.resume else "--shard-size"
        raise CLIError(f"{option} is for folder output (-o OUTPUT without a suffix), not {encode_path(args.output)}")
    if world_size > 1:
        raise CLIError(
            f"under torchrun every process would write {encode_path(args.output)}: give a folder (-o OUTPUT without "
            "a suffix) for sharded output"
        )


def is_folder_output(path: Path) -> bool:
    """``-o`` names a folder (sharded output) when it has no suffix, or is a folder already."""
    return path.is_dir() or not path.suffix


def model_files(model: Any) -> dict[str, Optional[str]]:
    """The sha256 (and paths) of the weights and ``config.json`` ``model`` was created from: what ``run.json``
    records so that ``--resume`` never mixes two models' outputs."""
    try:
        return {
            k: v if v is None or k.endswith("sha256") else encode_path(v)
            for k, v in fingerprint(getattr(model, "source_files", ())).items()
        }
    except CheckpointError as e:
        raise CLIError(str(e)) from None


def run_sharded(args: argparse.Namespace, files: Sequence[Path], extraction: Extraction) -> int:
    """``extraction`` into the folder ``args.output``, in this process or as one of torchrun's."""
    device = resolve_device(args.device)
    env = init_distributed(device, COMMAND_TIMEOUT)
    device = rank_device(device, env)

    def on_main(step: Callable[[], None]) -> None:
        """Run ``step`` on rank 0; its CLIError stops every rank with the same message."""
        error = None
        if env.is_main:
            try:
                step()
            except CLIError as e:
                error = str(e)
        error = broadcast_object(error, env)
        if error is not None:
            raise CLIError(error)

    folder = Path(args.output)
    on_main(lambda: ShardedOutput.check_target(folder, args.resume))
    model = extraction.load()
    transform, config = eval_transform(model, args.img_size)
    metadata = extraction.describe(model, config)
    runner, amp = inference_model(model, args, device)  # may refuse the settings: before the folder is made
    settings = {"kind": extraction.kind, **metadata, "amp": args.amp, "optimize": args.optimize}
    if env.is_main:  # files replaced under the same names are another model: --resume must not mix the two (only
        # rank 0 compares run.json)
        settings.update(model_files(model))
    shard_size = args.shard_size or default_shard_size(extraction.row_bytes(model, config))
    out = ShardedOutput(folder, files, shard_size, settings, env.rank, env.world_size)

    on_main(lambda: out.open(args.resume))
    incomplete: list[int] = []
    on_main(lambda: incomplete.extend(out.incomplete()))
    shards = out.share(broadcast_object(incomplete, env))
    plan = out.batch_plan(shards, args.batch_size)
    images = ImageRun(files, transform, args.batch_size, args.workers, device.type == "cuda", batches=plan)

    def batches() -> Iterator[tuple[Batch, Optional[Tensor]]]:
        for batch in images.batches():
            yield batch, batch.images

    outputs = run_model(runner, batches(), device, amp)
    out.write(shards, outputs, lambda rows: extraction.to_tensors(model, rows), metadata)
    barrier(env)  # every shard is written
    index: dict[str, Any] = {}
    on_main(lambda: index.update(out.finish({"kind": extraction.kind, **metadata})))
    if index:  # rank 0 only: one closing line, however many processes wrote the folder
        report_folder(folder, index, extraction.rows(model, index["count"]))
    # One status for all ranks, decided after the index is written: torchrun stops the others when one fails.
    status = broadcast_object(1 if index.get("skipped") else 0, env)
    close_distributed(env)
    return status


def report_folder(folder: Path, index: Mapping[str, Any], rows: str) -> None:
    """What a finished folder holds (``index``: its index.json), closing with the line that says what was written;
    ``rows`` names its rows (:attr:`Extraction.rows`)."""
    skipped = len(index["skipped"])
    if index["count"] == 0:
        print(f"effnetv2: no image could be read; {encode_path(folder)} holds no rows", file=sys.stderr)
        return
    if skipped:  # a --resume may have read none of them itself: where to find them
        print(
            f"effnetv2: {skipped} image(s) skipped (listed under 'skipped' in {encode_path(folder / INDEX_FILE)})",
            file=sys.stderr,
        )
    shards = plural(len(index["shards"]), "shard")
    say_done(f"wrote {rows} to {encode_path(folder)}{os.sep} ({shards}, {skipped} skipped)")
