"""A library for the benchmark scripts of ``scripts/``, not a script: timing, the machine, timm's twin, BENCHMARKS.md.

The scripts never import each other; what they share is here. A script run as ``python scripts/<name>.py`` finds
this module next to it (Python puts the script's folder first on ``sys.path``); the tests import scripts through
``tests/conftest.py``'s ``import_script``, which does the same.

- Timing: :func:`paired_rounds` runs every configuration once per round, after untimed warm-up rounds (where
  ``torch.compile`` compiles), synchronising CUDA around each call; :func:`paired_ratio` is the median of
  per-round ratios. The configurations of one round run back to back, so a ratio within a round cancels the slow
  swings in speed that a shared machine has (measured: ±15 % between minutes); a ratio of overall medians does not.
- The machine: :func:`machine_info` (CPU, ISA flags, threads, versions, GPU, whether oneDNN's int8 kernels
  saturate: :func:`effnetv2.inference.int8_kernels.int8_pair_sums_saturate`), :func:`matmul_gflops` (a peak),
  :func:`copy_gbs` (memory bandwidth), :func:`machine_peaks` (both, per precision).
- The limit: :func:`limit_estimate`, a model's convolution FLOPs at the matmul peak plus the bytes its
  convolutions read and write at the copy bandwidth, in img/s per precision.
- Models: :func:`stand_in_pair` (the well-conditioned stand-in of :mod:`effnetv2.testing` with a prototype
  classifier, and timm's model with the same weights), :func:`timm_twin`.
- Reports: :func:`write_markdown` replaces one generated section of BENCHMARKS.md; :func:`comparison_dict`.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

import effnetv2
from effnetv2.atomic import write_text
from effnetv2.complexity import complexity
from effnetv2.inference.compare import Comparison
from effnetv2.inference.int8_kernels import int8_pair_sums_saturate
from effnetv2.testing import make_calibrated_model, mixed_images, smooth_images
from effnetv2.weights import KeyMap

ARCH = "efficientnetv2_rw_m"


def log(message: str) -> None:
    """Progress on stderr (stdout carries the results)."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------
# Timing


def sync(device: Optional[torch.device]) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Optional[torch.device] = None) -> float:
    """Seconds ``fn()`` takes, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def paired_rounds(
    runs: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 0,
    device: Optional[torch.device] = None,
    label: Optional[str] = None,
) -> dict[str, list[float]]:
    """Seconds per call of each run in ``rounds`` timed rounds, after ``warmup`` untimed ones.

    Each round calls every run once, in order, so a slow moment of the machine hits all of them alike. ``label``:
    log each round's progress under that name.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(warmup + rounds):
        for name, fn in runs.items():
            seconds = timed(fn, device)
            if round_ >= warmup:
                times[name].append(seconds)
        if label:
            log(f"  {label} round {round_ + 1}/{warmup + rounds}")
    return times


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of ``numerator[i] / denominator[i]`` (a base's time over a configuration's: its speed-up)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each run's times."""
    return {name: statistics.median(t) for name, t in times.items()}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (inclusive method; one value is every percentile of itself)."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def int8_matmul(n: int) -> Callable[[], Any]:
    """An n×n×n int8 matmul as the int8 models run it: oneDNN's quantized linear (u8 × s8, prepacked weights; AMX
    or VNNI where the CPU has them). ``torch._int_mm`` is the fallback: on the CPU it runs oneDNN's plain s8 gemm,
    which uses neither (measured on an AMX Xeon: half the bf16 matmul's rate, the quantized linear twice it)."""
    x = torch.randint(0, 255, (n, n), dtype=torch.uint8)
    w = torch.randint(-127, 128, (n, n), dtype=torch.int8)
    try:
        packed = torch.ops.onednn.qlinear_prepack(w, [n, n])
        scales, zeros = torch.ones(n), torch.zeros(n, dtype=torch.long)
        fn: Callable[[], Any] = lambda: torch.ops.onednn.qlinear_pointwise(  # noqa: E731
            x, 0.1, 0, packed, scales, zeros, None, 1.0, 0, torch.uint8, "none", [], ""
        )
        fn()
    except (RuntimeError, AttributeError):  # no oneDNN quantized linear in this build
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8)
        fn = lambda: torch._int_mm(a, w)  # noqa: E731
    return fn


def matmul_gflops(
    dtype: torch.dtype, n: int = 2048, reps: int = 5, statistic: Callable[[list[float]], float] = min
) -> Optional[float]:
    """GFLOP/s (int8: GOP/s, :func:`int8_matmul`) of ``reps`` n×n×n matmuls after one untimed, their fastest (or
    ``statistic`` of their times): what this CPU's cores reach in ``dtype`` (floats: :func:`faster_gemm`). None
    where this build has no such kernel."""
    if dtype == torch.int8:
        fn = int8_matmul(n)
    else:
        fn = faster_gemm(n, dtype)
    try:
        fn()
    except RuntimeError:  # no such kernel on this build
        return None
    return 2 * n**3 / statistic([timed(fn) for _ in range(reps)]) / 1e9


def faster_gemm(n: int, dtype: torch.dtype) -> Callable[[], Any]:
    """The faster of :func:`float_matmul` and :func:`conv_matmul` (the two GEMM libraries torch uses on the CPU) for
    an n×n×n product, chosen on (n/4)³ ones: on a CPU without bf16, torch.mm in bf16 ran 60× slower than oneDNN's
    convolution (a minute a call at n=2048), so only the faster is run at full size."""
    probe = max(n // 4, 16)
    rates = {}
    for make in (float_matmul, conv_matmul):
        fn = make(probe, dtype)
        try:
            fn()
        except RuntimeError:  # no such kernel on this build
            continue
        rates[make] = 1 / min(timed(fn) for _ in range(3))
    return max(rates, key=rates.get, default=float_matmul)(n, dtype)


def float_matmul(n: int, dtype: torch.dtype) -> Callable[[], Any]:
    """An n×n×n matmul through ``torch.mm`` (MKL's or oneDNN's GEMM, whichever this build picks for ``dtype``)."""
    a, b = (torch.randn(n, n, dtype=dtype) for _ in range(2))
    return lambda: a @ b


def conv_matmul(n: int, dtype: torch.dtype) -> Callable[[], Any]:
    """The same n×n×n product as a 1×1 convolution in channels_last (:func:`matmul_as_conv`): oneDNN's convolution,
    the kernels the models' convs run. In one run on an AVX2-only EPYC torch.mm's fp32 (MKL) reached 93 GFLOP/s,
    below what timm's convs reach, so a peak from torch.mm alone was no bound there."""
    x, w = matmul_as_conv(*(torch.randn(n, n, dtype=dtype) for _ in range(2)))
    return lambda: torch.nn.functional.conv2d(x, w)


def matmul_as_conv(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An image and 1×1 kernels whose convolution is ``a @ b`` (m×k @ k×n): a's m rows as m pixels of k channels
    (channels_last), b's n columns as n kernels; output channel j at pixel i is ``(a @ b)[i, j]``."""
    (m, k), n = a.shape, b.shape[1]
    x = a.t().reshape(1, k, 1, m).contiguous(memory_format=torch.channels_last)
    w = b.t().reshape(n, k, 1, 1).contiguous(memory_format=torch.channels_last)
    return x, w


def copy_gbs(mib: int = 256, reps: int = 7) -> float:
    """GB/s (bytes read + written) of copying a ``mib`` MiB fp32 tensor into another, the median of ``reps``
    copies after one untimed: this CPU's memory bandwidth as element-wise work meets it."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = statistics.median(timed(lambda: dst.copy_(src)) for _ in range(reps))
    return 2 * src.numel() * src.element_size() / seconds / 1e9


LIMIT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}


def machine_peaks(reps: int = 7) -> dict[str, Optional[float]]:
    """This CPU's peaks, each the median of ``reps`` short runs (a loaded machine's slow moments do not count as
    its peak, nor its rare quiet ones): ``<fp32|bf16|int8>_gflops`` (large matmuls; None where no kernel) and
    ``copy_gbs``."""
    peaks = {
        f"{name}_gflops": matmul_gflops(dtype, reps=reps, statistic=statistics.median)
        for name, dtype in LIMIT_DTYPES.items()
    }
    peaks["copy_gbs"] = copy_gbs(reps=reps)
    return peaks


def limit_estimate(arch: str, img_size: int, peaks: Mapping[str, Optional[float]]) -> dict[str, Any]:
    """How fast ``arch`` at ``img_size`` px could run on a CPU with ``peaks`` (:func:`machine_peaks`), per image.

    Per precision with a measured matmul peak: every convolution and linear layer at that peak (``compute_ms``)
    plus their inputs and outputs read and written once at the copy bandwidth, element-wise work fused into them
    (``memory_ms``, activations at the precision's element size; int8: 1 byte) -> ``img_s``. Counts from
    :func:`effnetv2.complexity.complexity` (FLOPs by kind, on the meta device: no weights, nothing measured).
    """
    with torch.device("meta"):
        model = effnetv2.create_model(arch).eval()
    counts = complexity(model, (3, img_size, img_size))
    flops = sum(counts.flops.values())
    limits = {}
    for name, dtype in LIMIT_DTYPES.items():
        peak = peaks.get(f"{name}_gflops")
        if not peak:
            continue
        compute_ms = 1e3 * flops / (peak * 1e9)
        moved = counts.moved * torch.empty((), dtype=dtype).element_size()
        memory_ms = 1e3 * moved / (peaks["copy_gbs"] * 1e9)
        limits[name] = dict(compute_ms=compute_ms, memory_ms=memory_ms, img_s=1e3 / (compute_ms + memory_ms))
    return dict(flops=counts.flops, moved_elements=counts.moved, peaks=dict(peaks), limits=limits)


def precision_of(path: str) -> str:
    """The precision (a key of :data:`LIMIT_DTYPES`) a benchmark path's name says it runs in; fp32 otherwise."""
    return next((name for name in ("bf16", "int8") if name in path), "fp32")


# ----------------------------------------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU's vector ISA flags that matter here (AVX2, FMA, AVX-512, VNNI, AMX)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f in ("avx2", "fma", "avx_vnni") or f.startswith(("avx512", "amx")))
    return []


def cpu_kind() -> str:
    """A short key for the kind of CPU, by vendor and its best reduced-precision hardware: ``intel-amx``,
    ``amd-avx512-bf16``, ``intel-avx512-vnni``, ``amd-avx2``, ... (BENCHMARKS.md keeps one table per kind)."""
    flags = set(cpu_flags())
    model = cpu_model().lower()
    vendor = "intel" if "intel" in model else "amd" if "amd" in model else "cpu"
    for flag, kind in (
        ("amx_bf16", "amx"),
        ("avx512_bf16", "avx512-bf16"),
        ("avx512_vnni", "avx512-vnni"),
        ("avx512f", "avx512"),
        ("avx2", "avx2"),
    ):
        if flag in flags:
            return f"{vendor}-{kind}"
    return vendor


def import_timm():
    """timm, or None where it is not installed."""
    try:
        import timm
    except ImportError:
        return None
    return timm


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a result depends on: CPU, ISA, cores and threads, torch/torchvision/timm/Python versions, the GPU."""
    info: dict[str, Any] = dict(
        cpu=cpu_model(),
        cpu_isa=cpu_flags(),
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
        int8_pair_sums_saturate=int8_pair_sums_saturate(),
        python=platform.python_version(),
        platform=platform.platform(),
    )
    with contextlib.suppress(ImportError):
        import torchvision

        info["torchvision"] = torchvision.__version__
    timm = import_timm()
    info["timm"] = timm.__version__ if timm else None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------------------------------------------
# Models


def timm_twin(arch: str, ours: nn.Module) -> nn.Module:
    """timm's ``arch`` with ``ours``' weights (through the key map) and classes, in eval mode."""
    theirs = import_timm().create_model(arch, num_classes=ours.num_classes)
    key_map = KeyMap(ours.spec)
    theirs.load_state_dict({key_map.to_timm(k): v for k, v in ours.state_dict().items()})
    return theirs.eval()


def stand_in_pair(arch: str, img_size: int) -> tuple[nn.Module, torch.Tensor, nn.Module]:
    """The stand-in with a 10-class prototype classifier (:func:`effnetv2.testing.make_calibrated_model`), its
    exemplar images, and timm's model with the same weights, both in eval mode."""
    ours, exemplars = make_calibrated_model(lambda: effnetv2.create_model(arch), img_size)
    return ours.eval(), exemplars, timm_twin(arch, ours)


def int8_calibration_images(exemplars: torch.Tensor, count: int, img_size: int) -> torch.Tensor:
    """The int8 scripts' calibration set: half smooth fields, half blends of the stand-in's exemplars (fixed seeds,
    so every script calibrates on the same images)."""
    return torch.cat([smooth_images(count // 2, img_size, seed=7), mixed_images(exemplars, count // 2, seed=11)])


def int8_test_images(exemplars: torch.Tensor, count: int) -> torch.Tensor:
    """The int8 scripts' held-apart test set: blends of the exemplars, in halves of two seeds (none calibrates)."""
    half = count // 2
    return torch.cat([mixed_images(exemplars, half, seed=5), mixed_images(exemplars, half, seed=6)])


def channels_last(model: nn.Module) -> nn.Module:
    """A channels_last copy of ``model``."""
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------------------
# Reports


def comparison_dict(c: Comparison) -> dict[str, Any]:
    """A comparison (:mod:`effnetv2.inference.compare`) as JSON-able values."""
    return {**c.__dict__, "precision": str(c.precision), "eager_dtype": str(c.eager_dtype), "accepted": c.accepted}


def marks(section: str) -> tuple[str, str]:
    """The marks around one generated section of BENCHMARKS.md (``benchmark``: the main run; ``family``, ...)."""
    return (
        f"<!-- {section}:begin (generated by scripts/benchmark.py; edit outside these marks) -->",
        f"<!-- {section}:end -->",
    )


def write_markdown(path: Path, body: str, section: str = "benchmark") -> None:
    """Replace one generated section of ``path`` (between its marks), keeping the hand-written rest; atomic.
    A section not there yet is appended."""
    begin, end = marks(section)
    block = f"{begin}\n{body}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = f"{text.rstrip()}\n\n{block}\n"
    write_text(path, text)
