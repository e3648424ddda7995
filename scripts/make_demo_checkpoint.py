"""Write a demo model folder for trying effnetv2 without a network: RANDOM weights, made well-conditioned.

    python scripts/make_demo_checkpoint.py demo-model
    effnetv2 predict --checkpoint demo-model        # runs offline; the predictions are MEANINGLESS

The folder is in timm's Hugging Face format (``model.safetensors`` + ``config.json``, as ``save_pretrained``
writes it), so every command and ``create_model(..., checkpoint_path=...)``, ``'local-dir:...'`` and timm accept
it. The weights are a fresh random initialisation conditioned as the test suite's oracle is
(:mod:`effnetv2.testing`: calibrated BatchNorm statistics, small residual gains, a tempered classifier), so
outputs behave like a trained network's (no saturation, logits of a few units); they know nothing about images.
The config says so (``pretrained_cfg.tag = "random_demo"`` and a ``description``). Needs no timm.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import effnetv2
from effnetv2.testing import condition, smooth_images

DESCRIPTION = "RANDOM weights for offline demos (effnetv2 scripts/make_demo_checkpoint.py): predictions are meaningless"


def make_demo_model(num_classes: int = 1000, seed: int = 0) -> torch.nn.Module:
    """A well-conditioned randomly initialised efficientnetv2_rw_m (eval mode)."""
    torch.manual_seed(seed)
    model = effnetv2.create_model("efficientnetv2_rw_m", num_classes=num_classes)
    condition(model, smooth_images(16, 128, seed=seed), seed=seed)
    model.pretrained_cfg = {**model.pretrained_cfg, "tag": "random_demo", "description": DESCRIPTION}
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the folder to write (replaced as a whole if it exists)")
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    effnetv2.save_pretrained(make_demo_model(args.num_classes, args.seed), args.output)
    print(f"wrote {args.output}: RANDOM weights, for trying the commands offline; predictions are meaningless")
    return 0


if __name__ == "__main__":
    sys.exit(main())
