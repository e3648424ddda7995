#!/usr/bin/env python
"""Convert an EfficientNetV2 checkpoint between timm's key format and effnetv2's, and check the result.

Any architecture effnetv2 registers; it is found from the checkpoint's keys and shapes.

    python scripts/convert_checkpoint.py timm_model.pth effnetv2_model.safetensors --to effnetv2
    python scripts/convert_checkpoint.py effnetv2_model.safetensors timm_model.safetensors --to timm

The input may be .safetensors, .pth or .bin (pickles are read with torch.load(weights_only=True) only; training
checkpoints are unwrapped, EMA weights preferred). The output's extension picks its container; .safetensors is
recommended. The output is read back and must hold the same tensors and give the same outputs on a forward pass
as the input, or it is not written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run from a source checkout without installing: put the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from effnetv2.errors import CheckpointError
from effnetv2.weights.convert import convert_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", type=Path, help="timm- or effnetv2-format checkpoint (.safetensors/.pth/.bin)")
    parser.add_argument("output", type=Path, help="file to write (.safetensors recommended, or .pth/.bin)")
    parser.add_argument("--to", choices=("timm", "effnetv2"), required=True, help="key format of the output")
    parser.add_argument("--no-ema", action="store_true", help="take a training checkpoint's weights, not its EMA")
    args = parser.parse_args(argv)
    if args.output.suffix not in (".safetensors", ".pth", ".bin", ".pt"):
        parser.error(f"output {args.output}: use a .safetensors, .pth or .bin extension")
    if args.output.resolve() == args.input.resolve():
        parser.error("output must differ from input")
    try:
        convert_checkpoint(args.input, args.output, to=args.to, use_ema=not args.no_ema)
    except (CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({args.to} keys); verified: same tensors, same outputs as {args.input}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
