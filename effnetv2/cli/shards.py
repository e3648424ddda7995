"""Sharded output folders of ``embed`` and ``features``: written as the images are read, resumable, split over
torchrun's processes.

``OUT/run.json`` (the run's settings) is written first; then ``OUT/shard-00000.safetensors``, ... each holding
the rows of ``shard_size`` consecutive input files (fewer where images were skipped), with their paths under the
header metadata key ``paths`` and the skipped ones under ``skipped``; ``OUT/index.json`` last, once every shard is
there. Every file is written atomically, so a crash at any instant leaves whole shards and no index that lists a
missing one. Shard ``k`` always holds the same files, whatever the number of processes: process ``r`` of ``K``
writes shards ``r, r + K, ...`` and the folder is the same as one process writes.

Each shard carries the sha256 of its content (header metadata and tensor data, :func:`shard_checksum`) under the
metadata key ``sha256``, repeated in ``index.json``; ``--resume`` reads every kept shard again and writes a damaged
one anew. ``run.json`` holds the sha256 of the model's files (weights and ``config.json``, whatever the source): a
``--resume`` whose model files changed is refused, since its shards would mix two models' outputs.

Test hook, read from the environment (no use to a user): ``EFFNETV2_TEST_STOP_AFTER_SHARD=N`` makes the process
that writes shard ``N`` kill itself (SIGKILL) right after the shard is renamed into place: a crash at a known point.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from safetensors import SafetensorError, safe_open
from torch import Tensor

from effnetv2.atomic import remove_stale_temps, write_text
from effnetv2.cli import CLIError
from effnetv2.cli.batches import Batch
from effnetv2.cli.outputs import save_safetensors
from effnetv2.defaults import SHARD_BYTES, SHARD_SIZE
from effnetv2.path_escape import encode_path
from effnetv2.shard_format import CHECKSUM_KEY, FORMAT, INDEX_FILE, RUN_FILE, shard_checksum, shard_name

STOP_AFTER_SHARD_ENV = "EFFNETV2_TEST_STOP_AFTER_SHARD"
# run.json keys that say where the model's files were (for messages): their sha256 keys are what must match
_MODEL_FILE_KEYS = ("weights_file", "config_file")
_TEMP_NAME = re.compile(r"\.(.+)\.\d+-[0-9a-f]{8}\.tmp")  # effnetv2.atomic's temp files: .{target}.{pid}-{hex}.tmp


def default_shard_size(row_bytes: int) -> int:
    """Images per shard when ``--shard-size`` is not given: :data:`SHARD_SIZE`, fewer for large rows."""
    return max(1, min(SHARD_SIZE, SHARD_BYTES // max(1, row_bytes)))


def digest(paths: Iterable[Path]) -> str:
    """sha256 of the escaped paths, one per line: what identifies a shard's (or a run's) inputs."""
    h = hashlib.sha256()
    for path in paths:
        h.update(encode_path(path).encode("utf-8") + b"\n")
    return h.hexdigest()


def _remove_stale_temps(folder: Path) -> None:
    """Remove the temp files that killed writers left in ``folder`` (those whose process is gone)."""
    with contextlib.suppress(OSError):
        targets = {m.group(1) for m in map(_TEMP_NAME.fullmatch, (p.name for p in folder.iterdir())) if m}
        for target in targets:
            remove_stale_temps(folder / target)


def _create_exclusive(path: Path, text: str) -> bool:
    """Write ``path`` whole unless it exists (then False): a temp file, flushed, hard-linked to the name (which
    fails when the name is taken: two processes cannot both create it). Temp name as :mod:`effnetv2.atomic`'s."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:  # a file system without hard links: a rename, which cannot tell a taken name
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            if path.exists():
                return False
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@dataclass
class Shard:
    number: int
    positions: range  # of its files in the run's input list
    inputs: str  # digest of its files
    rows: list[Any] = field(default_factory=list)  # model outputs of the batches read so far
    paths: list[Path] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # positions of the files that could not be read
    done: int = 0  # files read so far, skipped ones included

    @property
    def name(self) -> str:
        return shard_name(self.number)


class ShardedOutput:
    """The folder ``OUT`` of one run over ``files``: which shards exist, which this process writes, and the index.

    ``settings`` (model, checkpoint, input size, levels...) are stored in ``run.json``; ``--resume`` continues only
    a folder whose settings and input list are the same, so that the shards of two different runs never mix.
    """

    def __init__(
        self, folder: Path, files: Sequence[Path], shard_size: int, settings: dict[str, Any], rank: int, world: int
    ) -> None:
        self.folder = folder
        self.files = list(files)
        self.shard_size = shard_size
        self.rank, self.world = rank, world
        settings = {
            **settings,
            "shard_size": shard_size,
            "inputs": len(self.files),
            "inputs_sha256": digest(self.files),
        }
        self.settings = json.loads(json.dumps(settings))  # as run.json gives them back: tuples become lists
        self.shards = [
            Shard(n, range(start, min(start + shard_size, len(self.files))), "")
            for n, start in enumerate(range(0, len(self.files), shard_size))
        ]
        for shard in self.shards:
            shard.inputs = digest(self.files[i] for i in shard.positions)

    # --- the folder ---------------------------------------------------------------------------------------------

    @staticmethod
    def check_target(folder: Path, resume: bool) -> None:
        """Before any model is loaded: a folder to create, or (``resume``) one an earlier run made."""
        if folder.exists() and not folder.is_dir():
            raise CLIError(
                f"{encode_path(folder)}: is a file; give a folder for sharded output (or a .npy/.safetensors)"
            )
        if not folder.parent.is_dir():
            raise CLIError(f"{encode_path(folder.parent)}: output folder does not exist")
        if folder.is_dir():
            _remove_stale_temps(folder)  # a run killed before its run.json was whole started nothing
        started = folder.is_dir() and any(folder.iterdir())
        if started and not resume:
            raise CLIError(
                f"{encode_path(folder)}: exists and is not empty; --resume finishes the run that wrote it, or give "
                "a new folder"
            )
        if resume and started and not (folder / RUN_FILE).is_file():
            raise CLIError(f"{encode_path(folder)}: has no {RUN_FILE}, so it is not an effnetv2 output folder")

    def open(self, resume: bool = True) -> None:
        """Rank 0: create the folder and ``run.json``, or (``resume``) check that the one there describes this run.

        ``run.json`` is created only where none is: of two runs started on one folder at once, the second is told.
        """
        run_file = self.folder / RUN_FILE
        text = json.dumps(self.settings, indent=2) + "\n"
        if not run_file.is_file():
            with self._removed_if_left_empty():
                if _create_exclusive(run_file, text):
                    return
        if not resume:
            raise CLIError(
                f"{encode_path(self.folder)}: another effnetv2 run began writing this folder at the same time; give "
                "a new folder (or --resume once that run ends)"
            )
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))
            if not isinstance(saved, dict):
                raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        except (OSError, ValueError) as e:
            raise CLIError(f"{encode_path(run_file)}: unreadable ({e}); give a new folder") from e
        self._check_model_files(saved)
        changed = sorted(
            k for k in {*saved, *self.settings} if k not in _MODEL_FILE_KEYS and saved.get(k) != self.settings.get(k)
        )
        if changed:
            details = "; ".join(f"{k}: {saved.get(k)!r} then, {self.settings.get(k)!r} now" for k in changed)
            raise CLIError(
                f"{encode_path(self.folder)}: --resume with other settings or inputs than the run that wrote it "
                f"({details}); give the same ones, or a new folder"
            )

    @contextlib.contextmanager
    def _removed_if_left_empty(self) -> Iterator[None]:
        """Create the folder (unless there) for the block; when the block fails (a full disk, no permission) and
        the folder is one this call created and still empty, remove it: a failed run leaves nothing behind. A folder
        the user made, or one holding anything, is never removed (``rmdir`` removes only an empty folder)."""
        try:
            self.folder.mkdir()
            created = True
        except FileExistsError:
            created = False
        try:
            yield
        except BaseException:
            if created:
                with contextlib.suppress(OSError):  # not empty (another run's run.json): it stays
                    self.folder.rmdir()
            raise

    def _check_model_files(self, saved: Mapping[str, Any]) -> None:
        """The model files' sha256 in ``run.json`` are this run's: else one line naming the file that changed."""
        for role in ("weights", "config"):
            then, now = saved.get(f"{role}_sha256"), self.settings.get(f"{role}_sha256")
            if then == now:
                continue
            name = "config.json" if role == "config" else "weights file"
            file_then, file_now = saved.get(f"{role}_file"), self.settings.get(f"{role}_file")
            if then is None:
                what = f"the run that wrote it read no {name}, this one reads {file_now}"
            elif now is None:
                what = f"the run that wrote it read the {name} {file_then}, this one reads none"
            else:
                what = f"the {name} {file_now} is not the one it was (sha256 {then[:12]}... then, {now[:12]}... now)"
            raise CLIError(
                f"{encode_path(self.folder)}: --resume with another model: {what}; its shards would mix two models' "
                "outputs: give the model files the run began with, or a new folder"
            )

    def complete(self, shard: Shard, verify: bool = False) -> bool:
        """The shard's file is there, readable, and made from the shard's inputs (else it is written again);
        ``verify``: and its content matches its checksum (every byte is read)."""
        path = self.folder / shard.name
        if not path.is_file():
            return False
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("inputs_sha256") != json.dumps(shard.inputs):
                    return False
                if not verify:
                    return True
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        except (OSError, SafetensorError, ValueError, RuntimeError):
            print(f"effnetv2: {encode_path(path)}: unreadable; writing it again", file=sys.stderr)
            return False
        if header.get(CHECKSUM_KEY) == json.dumps(shard_checksum(tensors, header)):
            return True
        why = "damaged (its content does not match its sha256)" if CHECKSUM_KEY in header else "has no sha256"
        print(f"effnetv2: {encode_path(path)}: {why}; writing it again", file=sys.stderr)
        return False

    def incomplete(self) -> list[int]:
        """Rank 0: the numbers of the shards still to write (all of them in a new folder); a kept shard is read
        whole and checked against its sha256."""
        return [shard.number for shard in self.shards if not self.complete(shard, verify=True)]

    def share(self, incomplete: Sequence[int]) -> list[Shard]:
        """This process's part of the shards still to write: every ``world``-th from ``rank``, so that after a
        ``--resume`` the processes still have equal shares (each shard holds the same files whoever writes it)."""
        return [self.shards[n] for n in incomplete[self.rank :: self.world]]

    # --- writing ------------------------------------------------------------------------------------------------

    def batch_plan(self, shards: Sequence[Shard], batch_size: int) -> list[range]:
        """Batches of positions in the input list that never cross a shard boundary (ranges: a plan for millions
        of images stays small)."""
        return [
            shard.positions[i : i + batch_size] for shard in shards for i in range(0, len(shard.positions), batch_size)
        ]

    def write(
        self,
        shards: Sequence[Shard],
        outputs: Iterator[tuple[Batch, Optional[Any]]],
        to_tensors: Callable[[list[Any]], dict[str, Tensor]],
        metadata: dict[str, Any],
    ) -> None:
        """Collect the model's ``outputs`` (one per batch of :meth:`batch_plan`) and write each shard when whole."""
        by_number = {shard.number: shard for shard in shards}
        for batch, out in outputs:
            positions = [*batch.indices, *(i for i, _ in batch.failures)]
            shard = by_number[positions[0] // self.shard_size]
            if out is not None:
                shard.rows.append(out)
                shard.paths += [self.files[i] for i in batch.indices]
            shard.skipped += [i for i, _ in batch.failures]
            shard.done += len(positions)
            if shard.done == len(shard.positions):
                self._save(shard, to_tensors, metadata)

    def _save(
        self, shard: Shard, to_tensors: Callable[[list[Any]], dict[str, Tensor]], metadata: dict[str, Any]
    ) -> None:
        tensors = to_tensors(shard.rows) if shard.rows else {}
        metadata = {
            **metadata,
            "skipped": [encode_path(self.files[i]) for i in sorted(shard.skipped)],
            "inputs_sha256": shard.inputs,
        }
        # the header exactly as save_safetensors writes it: JSON-encoded values, the paths escaped
        header = {
            "paths": json.dumps([encode_path(p) for p in shard.paths]),
            **{k: json.dumps(v) for k, v in metadata.items()},
        }
        checksum = shard_checksum(tensors, header)
        save_safetensors(self.folder / shard.name, tensors, shard.paths, **metadata, **{CHECKSUM_KEY: checksum})
        if os.environ.get(STOP_AFTER_SHARD_ENV) == str(shard.number):
            os.kill(os.getpid(), signal.SIGKILL)  # the test hook: a crash right after this shard is in place
        # what bounds the memory: one shard's rows and paths at a time
        shard.rows.clear()
        shard.paths.clear()
        shard.skipped.clear()

    def finish(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Rank 0, when every process is done: check every shard and write ``index.json``; return it."""
        entries, skipped, count = [], [], 0
        for shard in self.shards:
            path = self.folder / shard.name
            if not self.complete(shard):
                raise CLIError(f"{encode_path(path)}: missing after every process finished; run again with --resume")
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                rows = len(json.loads(meta["paths"]))
                skipped += json.loads(meta["skipped"])
                checksum = json.loads(meta[CHECKSUM_KEY]) if CHECKSUM_KEY in meta else None
            entries.append({"file": shard.name, "count": rows, CHECKSUM_KEY: checksum})
            count += rows
        index = {
            "format": FORMAT,
            **metadata,
            "count": count,
            "skipped": skipped,
            "shard_size": self.shard_size,
            "shards": entries,
        }
        write_text(self.folder / INDEX_FILE, json.dumps(index, indent=2) + "\n")
        return index
