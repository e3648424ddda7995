"""Finding pretrained weight files: a local override, or the Hugging Face Hub (its cache and offline mode)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from effnetv2.errors import CheckpointError

HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def pretrained_file(cfg: Mapping[str, Any]) -> Path:
    """The weights file for a pretrained config: ``cfg['file']`` if set, else downloaded from ``cfg['hf_hub_id']``.

    ``model.safetensors`` is preferred, ``pytorch_model.bin`` (read with ``weights_only=True``) the fallback.
    """
    if cfg.get("file"):
        return Path(cfg["file"])
    repo_id = cfg.get("hf_hub_id")
    if not repo_id:
        raise CheckpointError(f"no pretrained weights are published for {cfg.get('architecture', 'this model')}")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    last_error: Exception | None = None
    for filename in HUB_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename, revision=cfg.get("hf_hub_revision")))
        except EntryNotFoundError as e:
            last_error = e
        except LocalEntryNotFoundError as e:
            last_error = e
    raise CheckpointError(
        f"could not get pretrained weights for {repo_id} from the Hugging Face Hub or its local cache "
        f"({last_error}). Without a network, pass checkpoint_path=<local file> or "
        "pretrained_cfg_overlay=dict(file=<local file>), or pre-populate the cache (HF_HUB_CACHE)."
    ) from last_error
