"""Issue 30's limit estimate: the model's counts by kind of layer, and the arithmetic that turns them and a CPU's
peaks into img/s. Nothing here is timed: the peaks are given, the counts run on the meta device."""

from __future__ import annotations

import pytest
import torch
from conftest import import_script

import effnetv2
from effnetv2.complexity import KINDS, complexity, macs_and_activations
from effnetv2.inference import int8_kernels as kernels

bench = import_script("_bench")
benchmark_cpu = import_script("benchmark_cpu")

PEAKS = {"fp32_gflops": 200.0, "bf16_gflops": 1000.0, "int8_gflops": None, "copy_gbs": 10.0}


@pytest.fixture(scope="module")
def rw_m_320():
    with torch.device("meta"):
        model = effnetv2.create_model("efficientnetv2_rw_m").eval()
    return model, complexity(model, (3, 320, 320))


@pytest.fixture(scope="module")
def limit():
    return bench.limit_estimate("efficientnetv2_rw_m", 320, PEAKS)


def test_flops_by_kind_add_up_to_the_model_cards_gmacs(rw_m_320):
    model, c = rw_m_320
    assert set(c.flops) == set(KINDS) and c.flops["other"] == 0  # every FLOP is in a conv or linear layer
    assert all(c.flops[k] > 0 for k in KINDS if k != "other")
    assert round(c.macs / 1e9, 1) == 12.7  # the model card's 12.7 GMACs (fvcore: convs, linears, BN, pooling)
    assert (c.macs, c.activations) == (12_721_778_144, 47_144_762)  # fvcore 0.1.5 on timm's model, exactly
    layers_macs = sum(c.flops.values()) / 2
    assert layers_macs + c.norm_pool_macs == c.macs
    assert layers_macs == pytest.approx(12.7e9, rel=0.01)  # BN and pooling are under 1 % of it
    assert c.flops["1x1 conv"] > c.flops["kxk conv"] > 40 * c.flops["depthwise conv"]
    assert c.moved > c.activations  # every layer's input is read, the image included
    assert macs_and_activations(model, (3, 320, 320)) == (c.macs, c.activations)  # the same count


def test_limit_estimate_arithmetic(rw_m_320, limit):
    _, c = rw_m_320
    assert set(limit["limits"]) == {"fp32", "bf16"}  # no int8 peak, no int8 limit
    flops = sum(c.flops.values())
    for name, element, peak in (("fp32", 4, 200.0), ("bf16", 2, 1000.0)):
        lim = limit["limits"][name]
        assert lim["compute_ms"] == pytest.approx(1e3 * flops / (peak * 1e9))
        assert lim["memory_ms"] == pytest.approx(1e3 * c.moved * element / 10e9)
        assert lim["img_s"] == pytest.approx(1e3 / (lim["compute_ms"] + lim["memory_ms"]))
    assert bench.precision_of("effnetv2 int8 (PT2E, compiled)") == "int8"
    assert bench.precision_of("timm eager fp32 channels_last") == "fp32"


def test_benchmark_cpu_reports_each_figure_against_its_limit(limit):
    bf16_limit = limit["limits"]["bf16"]["img_s"]
    speed = {
        8: {
            benchmark_cpu.TIMM: dict(
                ms=2000.0, vs_timm_cl=1.0, img_s=4.0, limit_img_s=None, of_limit=0.2, first_call_s=2.25
            ),
            "effnetv2 optimised bf16": dict(
                ms=800.0,
                vs_timm_cl=2.5,
                img_s=10.0,
                limit_img_s=bf16_limit,
                of_limit=10.0 / bf16_limit,
                first_call_s=42.5,
            ),
        }
    }
    machine = dict(
        cpu="a CPU", cores=2, torch_threads=2, cpu_isa=["avx512_bf16"], torch="x", torch_cpu_capability="y", timm="z"
    )
    flags = {flag: flag in machine["cpu_isa"] for flag in benchmark_cpu.ISA_FLAGS}
    r = dict(model="efficientnetv2_rw_m", img_size=320, machine=machine, cpu_flags=flags, limit=limit, speed=speed)
    report = benchmark_cpu.limit_report(r)
    assert "amx_bf16 no" in report and "avx512_bf16 yes" in report
    assert f"{100 * 10.0 / bf16_limit:.0f} % of the bf16 limit" in report
    assert f"= {bf16_limit:.1f} img/s ({bf16_limit / 4.0:.2f}× timm at batch 8)" in report
    assert "2.50× timm" in report and "first call 42.5 s" in report
    first_calls = benchmark_cpu.first_call_table(r)
    assert "| effnetv2 optimised bf16 | 42.5 |" in first_calls and f"| {benchmark_cpu.TIMM} | 2.2 |" in first_calls
    args = benchmark_cpu.parse_args(["--limit-only", "--rounds", "3", "--warmup", "1"])
    text = benchmark_cpu.markdown(r, args)
    assert "| bf16 | 1000 |" in text and "of limit" in text and "--limit-only" in text
    assert "--max-autotune" not in text
    tuned = benchmark_cpu.markdown(r, benchmark_cpu.parse_args(["--limit-only", "--max-autotune"]))
    assert "`python scripts/benchmark_cpu.py --limit-only --max-autotune`" in tuned
    # whether the CPU's int8 kernels saturate, where the run recorded it (runs before it did not)
    assert "pair sums" not in text
    for saturate, words in ((True, "oneDNN's int8 pair sums saturate (no VNNI)"), (False, "int8 pair sums exact")):
        machine["int8_pair_sums_saturate"] = saturate
        assert words in benchmark_cpu.markdown(r, args)


def _judged(error: float, top1: float, clear: tuple[float, int]) -> dict:
    return dict(images=192, error=error, limit=None, top1=top1, clear=list(clear))


def test_benchmark_cpu_leaves_bf16_unjudged_where_the_cpu_has_no_native_bf16(limit):
    avx2 = {flag: False for flag in benchmark_cpu.ISA_FLAGS}
    assert not benchmark_cpu.native_bf16(avx2)
    assert benchmark_cpu.native_bf16({**avx2, "avx512_bf16": True})
    assert benchmark_cpu.native_bf16({**avx2, "amx_bf16": True})
    assert benchmark_cpu.parse_args([]).bf16_quality == "auto"

    row = dict(ms=100.0, vs_timm_cl=1.0, img_s=80.0, limit_img_s=None, of_limit=None, first_call_s=1.0)
    names = (benchmark_cpu.TIMM, "effnetv2 optimised fp32", "effnetv2 optimised bf16", benchmark_cpu.INT8)
    speed = {8: {name: dict(row, vs_timm_cl=ratio) for name, ratio in zip(names, (1.0, 1.1, 0.1, 1.6), strict=True)}}
    quality = {
        "effnetv2 optimised fp32": _judged(2e-6, 1.0, (1.0, 128)),
        benchmark_cpu.INT8: _judged(0.149, 0.98, (127 / 128, 128)),
        "eager_fp32_error": 2e-6,
    }
    machine = dict(cpu="a CPU", cores=2, torch_threads=2, cpu_isa=[], torch="x", torch_cpu_capability="y", timm="z")
    r = dict(
        model="efficientnetv2_rw_m",
        img_size=320,
        machine=machine,
        cpu_flags=avx2,
        limit=limit,
        speed=speed,
        quality=quality,
        int8_quantize_s=269.0,
        int8_calibration_images=192,
        int8_heldout=dict(top1=0.97),
    )
    text = benchmark_cpu.markdown(r, benchmark_cpu.parse_args([]))
    assert "| effnetv2 optimised bf16 | not judged | – | – | – |" in text
    assert "| timm eager, bf16 autocast | not judged | – | – | – |" in text
    assert "| bf16 top-1 agreement ≥ 99 % where fp64 is clear | not judged | – |" in text
    # the share, its 95 % interval, and whether 128 images decide the bar (they cannot)
    assert (
        "| int8 top-1 agreement ≥ 99 % where fp64 is clear | 99.2 % of 128 (95 %: 95.7–99.9 %) "
        "| yes (undecided: the 95 % interval spans 99 %) |"
    ) in text
    assert "| 98.0 % | 99.2 % of 128 (95 %: 95.7–99.9 %) | 0.149 | not judged |" in text
    assert benchmark_cpu.agreement_verdict(1.0, 526) == "yes"  # 95 %: 99.3-100 %
    assert benchmark_cpu.agreement_verdict(500 / 526, 526) == "**no**"  # 95 %: 92.8-96.6 %
    assert benchmark_cpu.agreement_verdict(523 / 526, 526).startswith("yes (undecided")
    assert benchmark_cpu.agreement_verdict(float("nan"), 0) == "**no** (no image with a clear answer)"
    assert "bf16 not judged: this CPU has no native bf16" in text
    native = dict(r, cpu_flags={**avx2, "amx_bf16": True})  # --bf16-quality off on a CPU with bf16
    assert "bf16 not judged (--bf16-quality off)" in benchmark_cpu.markdown(native, benchmark_cpu.parse_args([]))
    assert "| bf16 ≥ 4.0× timm eager fp32 channels_last | effnetv2 optimised bf16: 0.10× (batch 8) | **no** |" in text


def test_the_float_peak_counts_a_1x1_convolution_as_the_same_matmul():
    a, b = torch.randn(48, 32, dtype=torch.float64), torch.randn(32, 40, dtype=torch.float64)
    x, w = bench.matmul_as_conv(a, b)
    out = torch.nn.functional.conv2d(x, w)
    assert out.shape == (1, 40, 1, 48)
    torch.testing.assert_close(out.reshape(40, 48).t(), a @ b, rtol=1e-12, atol=1e-12)
    assert bench.conv_matmul(16, torch.float32)().shape == (1, 16, 1, 16)


def test_the_saturation_probe_reads_what_onednns_int8_conv_sums():
    """int8_kernels.int8_pair_sums_saturate (recorded with every benchmark's machine; an int8 model's kernel_caveat)
    asks oneDNN's int8 convolution for a sum whose pairs of products overflow int16: exact with VNNI or AMX, 32767 per
    pair without (AVX2). Sums that cannot overflow are exact on every CPU."""
    pairs = kernels.SUM_CHANNELS // 2
    assert kernels.int8_conv_sum(127, 127) == 2 * pairs * 127 * 127  # 32258 per pair: fits int16
    assert kernels.int8_conv_sum(255, 64) == 2 * pairs * 255 * 64  # 32640: fits
    assert kernels.int8_conv_sum(3, -5, channels=8) == -120
    total = kernels.int8_conv_sum(255, 127)
    saturates = kernels.int8_pair_sums_saturate()
    assert (total, saturates) in ((2 * pairs * 255 * 127, False), (pairs * 32767, True)), total
    assert bench.machine_info(torch.device("cpu"))["int8_pair_sums_saturate"] is saturates
