#!/usr/bin/env python
"""int8 against bf16, conv by conv: oneDNN's two kernels on every convolution shape of a model (issue 30, item 2).

Why int8 is not faster than bf16 on a CPU whose int8 matmul peak is twice its bf16 one: for each distinct
convolution of the BatchNorm-folded inference copy (input shape, output channels, kernel, stride, groups; counted),
this times the kernel each compiled path calls with weights prepacked once, as inductor does:

- int8: ``onednn::qconv_pointwise`` (uint8 activations, int8 weights per output channel, uint8 output);
- bf16: ``mkldnn::_convolution_pointwise`` (bf16 in and out);

each with the epilogue the model gives that conv (``swish`` after a conv followed by SiLU, else none) and without
one, so the table splits each conv's time into its matrix work and its SiLU. The residual add and squeeze-excite are
left out (the same float work in both paths). Totals are weighted by each shape's count: the part of a batch that is
convolution work, per path. Timings are medians of ``--reps`` calls after warm-up, both kernels of a shape back to
back (one job on the machine at a time).

``--silu-outside``: for the int8 convs followed by SiLU only, whether SiLU would be cheaper outside oneDNN's
epilogue: the conv writes its uint8 pre-activation (no epilogue) and an inductor kernel maps it to the uint8 input of
the next conv, either computing SiLU (dequantize, SiLU, requantize) or looking each byte up in a 256-entry table
(the whole map from one uint8 to the other, exact for a quantized pre-activation); against the conv with oneDNN's
SiLU epilogue.

    python scripts/conv_kernels_ab.py --model efficientnetv2_rw_m --img-size 320 --batch-size 8 [--silu-outside]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _bench import cpu_kind, log, machine_info

import effnetv2
from effnetv2.inference.folded import FoldedConv, fold_for_inference


@dataclass(frozen=True)
class ConvShape:
    """One convolution as the inference copy runs it."""

    batch: int
    in_chans: int
    out_chans: int
    size: tuple[int, int]  # input height, width
    kernel: int
    stride: int
    groups: int
    silu: bool

    @property
    def padding(self) -> list[int]:
        return [self.kernel // 2] * 2

    def gops(self) -> float:
        h, w = (-(-s // self.stride) for s in self.size)
        return 2 * self.batch * h * w * self.out_chans * self.in_chans // self.groups * self.kernel**2 / 1e9

    def label(self) -> str:
        kind = "dw" if self.groups > 1 else f"{self.kernel}x{self.kernel}"
        stride = f"/{self.stride}" if self.stride > 1 else ""
        return f"{kind}{stride} {self.in_chans}->{self.out_chans} @{self.size[0]}" + (" +SiLU" if self.silu else "")


def conv_shapes(arch: str, img_size: int, batch: int) -> Counter:
    """Every convolution of ``arch``'s inference copy at ``img_size`` px, with how often each shape occurs."""
    model = fold_for_inference(effnetv2.create_model(arch).eval())
    shapes: Counter = Counter()

    def hook(module: FoldedConv, args: tuple[Any, ...], _out: Any) -> None:
        conv, x = module.conv, args[0]
        shapes[
            ConvShape(
                batch,
                conv.in_channels,
                conv.out_channels,
                tuple(x.shape[-2:]),
                conv.kernel_size[0],
                conv.stride[0],
                conv.groups,
                module.act,
            )
        ] += 1

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, FoldedConv)]
    with torch.no_grad():
        model(torch.zeros(1, 3, img_size, img_size).contiguous(memory_format=torch.channels_last))
    for h in handles:
        h.remove()
    return shapes


def int8_conv(s: ConvShape, epilogue: str, out_zero: int = 0) -> Callable[[], Any]:
    x = torch.randint(0, 256, (s.batch, s.in_chans, *s.size), dtype=torch.uint8)
    x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randint(-127, 128, (s.out_chans, s.in_chans // s.groups, s.kernel, s.kernel), dtype=torch.int8)
    w_scales, w_zeros = torch.full((s.out_chans,), 1e-3), torch.zeros(s.out_chans, dtype=torch.long)
    x_scale, x_zero = 0.05, 128
    geometry = ([s.stride] * 2, s.padding, [1, 1], s.groups)
    packed = torch.ops.onednn.qconv_prepack(w, w_scales, x_scale, x_zero, *geometry, x.shape)
    bias = torch.randn(s.out_chans)
    return lambda: torch.ops.onednn.qconv_pointwise(
        x,
        x_scale,
        x_zero,
        packed,
        w_scales,
        w_zeros,
        bias,
        *geometry,
        0.05,
        out_zero,
        torch.uint8,
        epilogue,
        [None],
        "",
    )


def silu_requantize(q: torch.Tensor) -> torch.Tensor:
    """A uint8 pre-activation (scale 0.05, zero point 128) to the uint8 SiLU output (scale 0.05, zero point 6)."""
    silu = torch.nn.functional.silu((q.float() - 128) * 0.05)
    return torch.clamp(torch.round(silu / 0.05) + 6, 0, 255).to(torch.uint8)


def lookup(q: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``silu_requantize`` as a 256-entry table lookup (on the NHWC view: indexing writes a contiguous result, and
    the channels_last map is contiguous as NHWC, so nothing is transposed)."""
    return table[q.permute(0, 2, 3, 1).to(torch.int32)].permute(0, 3, 1, 2)


def silu_outside(s: ConvShape, reps: int) -> dict[str, float]:
    """ms of the int8 conv with oneDNN's SiLU epilogue, and without one followed by each inductor kernel."""
    torch._dynamo.reset()  # a fresh compile per shape (dynamo stops recompiling after 8 and would run eager)
    conv = int8_conv(s, "none", out_zero=128)
    table = silu_requantize(torch.arange(256, dtype=torch.uint8))
    computed = torch.compile(silu_requantize, dynamic=False)
    looked_up = torch.compile(lookup, dynamic=False)
    return {
        "epilogue": median_ms(int8_conv(s, "swish"), reps),
        "bare": median_ms(conv, reps),
        "computed": median_ms(lambda: computed(conv()), reps),
        "looked up": median_ms(lambda: looked_up(conv(), table), reps),
    }


def silu_outside_table(shapes: Counter, reps: int) -> None:
    print("| conv | n | oneDNN SiLU epilogue ms | conv alone | + inductor SiLU kernel | + inductor 256-entry lookup |")
    print("|---|---:|---:|---:|---:|---:|")
    totals: Counter = Counter()
    silu_shapes = {s: n for s, n in shapes.items() if s.silu}
    for s, n in sorted(silu_shapes.items(), key=lambda kv: -kv[0].gops() * kv[1]):
        t = silu_outside(s, reps)
        for k, v in t.items():
            totals[k] += n * v
        cells = " | ".join(f"{n * t[k]:.1f}" for k in ("epilogue", "bare", "computed", "looked up"))
        print(f"| {s.label()} | {n} | {cells} |", flush=True)
    cells = " | ".join(f"**{totals[k]:.0f}**" for k in ("epilogue", "bare", "computed", "looked up"))
    print(f"| **all {sum(silu_shapes.values())} convs with SiLU** | | {cells} |")


def bf16_conv(s: ConvShape, epilogue: str) -> Callable[[], Any]:
    x = torch.randn(s.batch, s.in_chans, *s.size, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(s.out_chans, s.in_chans // s.groups, s.kernel, s.kernel, dtype=torch.bfloat16)
    geometry = (s.padding, [s.stride] * 2, [1, 1], s.groups)
    packed = torch.ops.mkldnn._reorder_convolution_weight(w, *geometry, x.shape)
    bias = torch.randn(s.out_chans, dtype=torch.bfloat16)
    return lambda: torch.ops.mkldnn._convolution_pointwise(x, packed, bias, *geometry, epilogue, [], "")


def median_ms(fn: Callable[[], Any], reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="efficientnetv2_rw_m", choices=effnetv2.list_models())
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--silu-outside", action="store_true", help="int8 SiLU in oneDNN's epilogue or in inductor")
    args = p.parse_args(argv)
    info = machine_info(torch.device("cpu"))
    log(f"{info['cpu']} ({cpu_kind()}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    shapes = conv_shapes(args.model, args.img_size, args.batch_size)
    if args.silu_outside:
        with torch.no_grad():
            silu_outside_table(shapes, args.reps)
        return 0
    header = "| conv | n | GOP | int8 ms | bf16 ms | int8/bf16 | int8 no-epilogue | bf16 no-epilogue |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    totals: Counter = Counter()
    with torch.no_grad():
        for s, n in sorted(shapes.items(), key=lambda kv: -kv[0].gops() * kv[1]):
            epilogue = "swish" if s.silu else "none"
            t = {
                "int8": median_ms(int8_conv(s, epilogue), args.reps),
                "bf16": median_ms(bf16_conv(s, epilogue), args.reps),
                "int8 bare": median_ms(int8_conv(s, "none"), args.reps),
                "bf16 bare": median_ms(bf16_conv(s, "none"), args.reps),
            }
            for k, v in t.items():
                totals[k] += n * v
            print(
                f"| {s.label()} | {n} | {n * s.gops():.2f} | {n * t['int8']:.1f} | {n * t['bf16']:.1f} | "
                f"{t['int8'] / t['bf16']:.2f} | {n * t['int8 bare']:.1f} | {n * t['bf16 bare']:.1f} |",
                flush=True,
            )
    print(
        f"| **all {sum(shapes.values())} convs** | | {sum(n * s.gops() for s, n in shapes.items()):.1f} | "
        f"**{totals['int8']:.0f}** | **{totals['bf16']:.0f}** | {totals['int8'] / totals['bf16']:.2f} | "
        f"{totals['int8 bare']:.0f} | {totals['bf16 bare']:.0f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
