"""Minimal timm-format saving for the train command.

TODO: replace with effnetv2.weights.saving once merged (the hub branch provides save_pretrained/atomic_path).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from safetensors.torch import save_file
from torch import nn

from effnetv2.weights.key_map import KeyMap


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A temporary path beside ``path``; it replaces ``path`` only when the block finishes without error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file gets the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(model: nn.Module, save_directory: Union[str, Path]) -> None:
    """``model.safetensors`` (timm keys) and ``config.json`` (timm's hub config), each written atomically."""
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = KeyMap(model.spec).state_dict_to_timm(state)
    cfg = dict(getattr(model, "pretrained_cfg", {}))
    cfg = {k: v for k, v in cfg.items() if k not in ("hf_hub_id", "url", "file")}
    cfg["num_classes"] = model.num_classes
    config = dict(
        architecture=cfg.pop("architecture", "efficientnetv2_rw_m"),
        num_classes=model.num_classes,
        num_features=model.num_features,
        global_pool=model.global_pool.pool_type,
        pretrained_cfg=cfg,
    )
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    with atomic_path(folder / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2))
