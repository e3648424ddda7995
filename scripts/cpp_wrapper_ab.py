#!/usr/bin/env python
"""Inductor's C++ wrapper against its Python wrapper for the compiled bf16 and int8 copies (issue 30, item 1).

:class:`effnetv2.inference.compiled.FrozenCompiled` compiles with ``cpp_wrapper=True``; this script compiles each copy
both ways (the Python wrapper: the same options with ``cpp_wrapper=False``), times each first call (the compile, in
the inductor cache of this process: run it with a fresh ``TORCHINDUCTOR_CACHE_DIR`` for cold figures), checks that
both give the same outputs, and times them in paired rounds at batch 8 and 1.

    python scripts/cpp_wrapper_ab.py [--model efficientnetv2_rw_m --img-size 320 --rounds 6 --calibration 64]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
from _bench import ARCH, int8_calibration_images, log, paired_ratio, paired_rounds, stand_in_pair

import effnetv2.inference.compiled as compiled_module
from effnetv2.inference import optimize_for_inference
from effnetv2.inference.compiled import FrozenCompiled
from effnetv2.inference.int8 import quantize_int8
from effnetv2.testing import mixed_images


@contextlib.contextmanager
def python_wrapper() -> Iterator[None]:
    """While active, :class:`FrozenCompiled` compiles with inductor's Python wrapper."""
    original = compiled_module.cpu_inductor_options

    def options(mode: str) -> dict[str, Any]:
        return {**original(mode), "cpp_wrapper": False}

    compiled_module.cpu_inductor_options = options
    try:
        yield
    finally:
        compiled_module.cpu_inductor_options = original


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=ARCH)
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--calibration", type=int, default=64, help="int8 calibration images")
    p.add_argument("--rounds", type=int, default=6, help="paired rounds at batch 8 (batch 1: twice as many)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    ours, exemplars, _ = stand_in_pair(args.model, args.img_size)
    uncompiled = {
        "bf16": optimize_for_inference(ours, torch.bfloat16),
        "int8": quantize_int8(
            ours, int8_calibration_images(exemplars, args.calibration, args.img_size), compile=False
        ).graph,
    }
    models: dict[str, torch.nn.Module] = {}
    for name, module in uncompiled.items():
        models[f"{name} C++ wrapper"] = FrozenCompiled(module)
        with python_wrapper():
            models[f"{name} Python wrapper"] = FrozenCompiled(module)
    for batch in (8, 1):
        x = mixed_images(exemplars, batch, seed=3).contiguous(memory_format=torch.channels_last)
        outputs = {}
        for name, model in models.items():
            start = time.perf_counter()
            outputs[name] = model(x)
            seconds = time.perf_counter() - start
            log(f"batch {batch} {name}: first call {seconds:.1f} s")
        for name in uncompiled:
            diff = (outputs[f"{name} C++ wrapper"].float() - outputs[f"{name} Python wrapper"].float()).abs().max()
            print(f"batch {batch} {name}: outputs differ by at most {diff.item():.3g}", flush=True)
        runs = {name: (lambda model=model, x=x: model(x)) for name, model in models.items()}
        times = paired_rounds(runs, args.rounds * (2 if batch == 1 else 1), 2, label=f"batch {batch}")
        for name in uncompiled:
            cpp, python = times[f"{name} C++ wrapper"], times[f"{name} Python wrapper"]
            print(
                f"batch {batch} {name}: C++ wrapper {1e3 * statistics.median(cpp):.1f} ms, Python wrapper "
                f"{1e3 * statistics.median(python):.1f} ms, {paired_ratio(python, cpp):.3f}× faster",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
