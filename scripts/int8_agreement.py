#!/usr/bin/env python
"""int8 top-1 agreement with fp64 by calibration count and kept-float set (issue 30, item 2).

    python scripts/int8_agreement.py [--model efficientnetv2_rw_m] [--img-size 320] [--calibration 128 256 512]
        [--test-images 192] [--project-float 256] [--stage-float 128]

On the well-conditioned stand-in (:mod:`effnetv2.testing`), for each calibration count: quantize to int8 (PT2E,
the default kept-float policy; ``--project-float N`` adds a run at N images with the blocks' 1×1 projections also
in float; ``--stage-float N`` adds a run at N images per stage with that stage also in float: where int8's error comes
from), then compare the quantized graph (its reference ops: no compile, so the sweep costs minutes, not a
compile per setting) with an fp64 copy on blended test images through the project's one comparison. Prints one
line per setting: top-1 as fp64 overall and on the images with a clear answer, the error from fp64, and the
quantizer's own held-out check.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _bench import ARCH, int8_calibration_images, int8_test_images, log, stand_in_pair

from effnetv2.inference.compare import compare, reference, run_batched
from effnetv2.inference.int8 import KEPT_FLOAT, quantize_int8


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=ARCH)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--calibration", type=int, nargs="+", default=[128, 256, 512])
    p.add_argument("--test-images", type=int, default=192, help="blended test images (in halves of two seeds)")
    p.add_argument("--project-float", type=int, default=256, help="a run with '*.project' in float too (0: none)")
    p.add_argument("--stage-float", type=int, default=0, help="a run per stage with it in float too (0: none)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    ours, exemplars, _ = stand_in_pair(args.model, args.img_size)
    test = int8_test_images(exemplars, args.test_images)
    ref = reference(ours, test)
    settings = [(n, None) for n in args.calibration]
    if args.project_float:
        settings.append((args.project_float, (*KEPT_FLOAT, "*.project")))
    if args.stage_float:
        settings += [(args.stage_float, (*KEPT_FLOAT, f"stages.{i}")) for i in range(len(ours.stages))]
    for count, keep in settings:
        calibration = int8_calibration_images(exemplars, count, args.img_size)
        start = time.perf_counter()
        int8 = quantize_int8(ours, calibration, compile=False, keep_float=keep)
        c = compare(run_batched(int8, test), ref, torch.int8)
        log(
            f"calibration {count}, kept in float: {'default + ' + keep[-1] if keep else 'default'}: "
            f"top-1 as fp64 {100 * c.top1:.1f} %, clear: {c.clear_text()}, error {c.error:.3f}; "
            f"held-out check, clear: {int8.agreement.clear_text()} ({time.perf_counter() - start:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
