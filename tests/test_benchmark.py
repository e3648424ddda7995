"""scripts/benchmark.py runs end to end in its tiny CI mode and emits the documented JSON and markdown.

Nothing here depends on how fast the machine is: measured times are only checked to be positive and consistent with
each other (img/s is the batch over the p50 latency, timm's ratio to itself is 1), and the subprocesses run under
conftest's HANG_GUARD_S, a hang guard that a loaded machine never reaches (the smoke run takes ~40 s alone on 2 cores,
but several minutes when the suite's other processes share those cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_GUARD_S, import_script

ROOT = Path(__file__).resolve().parents[1]
slow_bf16_profile = import_script("benchmark").slow_bf16_profile


def test_benchmark_smoke_json(tmp_path):
    report = tmp_path / "BENCH.md"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--smoke", "--json", "--threads", "1"]
    cmd += ["--write-markdown", str(report)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout)
    assert {"machine", "settings", "inference", "agreement", "training", "goals"} <= set(results)
    settings = results["settings"]
    assert (settings["img_size"], settings["batch_size"], settings["iters"], settings["train_iters"]) == (64, 1, 1, 1)
    assert results["machine"]["torch"] == torch.__version__ and results["machine"]["torch_threads"] == 1
    names = [row["name"] for row in results["inference"]]
    assert names == [
        "timm eager fp32",
        "timm eager fp32 channels_last",
        "effnetv2 eager fp32",
        "effnetv2 optimised fp32",
        "effnetv2 optimised bf16",
    ]  # --smoke leaves out torch.compile
    for row in results["inference"]:
        (latency,) = row["latencies_s"]  # one timed round, no warm-up
        assert latency > 0 and row["latency_ms_p50"] == row["latency_ms_p90"] == pytest.approx(1000 * latency)
        assert row["img_per_s"] == pytest.approx(1 / latency)
        assert row["img_per_s_vs_timm"] == pytest.approx(results["inference"][0]["latencies_s"][0] / latency)
        if row["name"] == "effnetv2 optimised bf16" and slow_bf16_profile(torch.device("cpu")):
            assert row["peak_memory_mib"] is None  # --smoke skips the ~25 s profile of emulated bf16
        else:
            assert row["peak_memory_mib"] > 100  # at least the weights (bf16: 106 MB)
    assert results["inference"][0]["img_per_s_vs_timm"] == 1.0  # timm against itself, round by round
    train = {row["name"]: row for row in results["training"]}
    assert set(train) == {
        "timm plain",
        "timm checkpointed (per block)",
        "effnetv2 plain",
        "effnetv2 checkpointed (nested, default)",
        "effnetv2 checkpointed (block)",
        "effnetv2 checkpointed (bn_act)",
    }
    assert train["timm plain"]["memory_vs_timm_plain"] == train["timm plain"]["time_vs_timm_plain"] == 1.0
    for row in train.values():
        (step,) = row["step_s"]
        assert step > 0 and row["step_s_p50"] == step and row["img_per_s"] == pytest.approx(1 / step)
        assert row["peak_memory_mib"] > 400  # weights, momentum and the step's activations
    agreement = results["agreement"]
    assert (agreement["images"], agreement["classes"], agreement["img_size"]) == (2, 10, 64)
    # the one comparison against fp64: the folded fp32 and bf16 copies within 4x eager's own error in their precision
    assert agreement["fp32_accepted"] and agreement["reduced_accepted"], agreement
    assert 0 < agreement["eager_fp32_error"] < agreement["fp32_limit"] < agreement["reduced_limit"]
    goals = {g["goal"]: g for g in results["goals"]}
    assert "bf16 top-1 agreement with fp64" in goals
    lower_is_better = {"checkpointed step peak ÷ timm plain step peak", "plain step time ÷ timm plain step time"}
    assert lower_is_better <= set(goals)
    for name, goal in goals.items():  # "met" is the measured value against the target, whatever the speed
        met = goal["measured"] <= goal["target"] if name in lower_is_better else goal["measured"] >= goal["target"]
        assert goal["met"] == met, goal

    text = report.read_text()
    assert text.startswith("# Benchmarks") and text.rstrip().endswith("<!-- benchmark:end -->")
    for row in results["inference"]:  # every configuration is a row of the table, with its measured numbers
        assert f"| {row['name']} | {row['img_per_s']:.2f} | {row['img_per_s_vs_timm']:.2f} |" in text
    for row in results["training"]:
        assert f"| {row['name']} | {row['step_s_p50']:.2f} | {row['img_per_s']:.2f} |" in text
    assert f"| optimised fp32 | {agreement['fp32_error']:.2e} | {agreement['fp32_limit']:.2e} |" in text
    assert "### Goals" in text and all(f"| {goal} | " in text for goal in goals)


def test_benchmark_family_section(tmp_path):
    """--family measures each architecture against timm and writes its own section, keeping the main one."""
    report = tmp_path / "BENCH.md"
    report.write_text("# Benchmarks\n\n<!-- benchmark:begin (x) -->\nmain results\n<!-- benchmark:end -->\n\nmethod\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--smoke", "--json", "--threads", "1"]
    cmd += ["--family", "tf_efficientnetv2_b0", "--write-markdown", str(report)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads(out.stdout)
    assert "inference" not in results and "training" not in results
    (row,) = results["family"]
    assert row["model"] == "tf_efficientnetv2_b0" and row["img_size"] == 64 and row["params"] == 7_139_704
    assert row["timm eager × timm"] == 1.0 and row["effnetv2 eager img/s"] > 0
    text = report.read_text()
    assert "main results" in text and text.index("method") < text.index("<!-- family:begin")
    assert "| `tf_efficientnetv2_b0` | 64 | 7,139,704 |" in text


def test_gpu_script_checks_itself_on_the_cpu(tmp_path):
    """scripts/benchmark_gpu.py is for a GPU machine; --device cpu --smoke runs every part of it here, so that it does
    not rot between the sessions that have a GPU. Its parity figures are real: the same weights in timm and effnetv2."""
    report, raw = tmp_path / "BENCH.md", tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_gpu.py"), "--device", "cpu", "--smoke"]
    cmd += ["--model", "tf_efficientnetv2_b0", "--write-markdown", str(report), "--json", str(raw)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(raw.read_text())
    parity = result["parity"]
    assert set(parity) == {"eager fp32 logits", "optimised fp32 logits", "train-mode loss", "gradients (worst tensor)"}
    assert all(value < 2e-5 for value in parity.values()), parity
    assert set(result["amp"]) == {"effnetv2 autocast bfloat16", "timm autocast bfloat16", "effnetv2 optimised bfloat16"}
    assert all(v > 0 for v in result["inference_img_per_s"].values()) and len(result["training_img_per_s"]) == 2
    assert "### GPU: `tf_efficientnetv2_b0` on" in report.read_text()


SPIN = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.3:\n    pass\n"
SPIN_TESTS = f"""
import subprocess, sys


def test_itself():
    exec({SPIN!r})


def test_child():
    subprocess.run([sys.executable, "-c", {SPIN!r}], check=True)
"""


def test_suite_cpu_times_counts_each_tests_own_and_subprocess_cpu(tmp_path):
    """scripts/suite_cpu_times.py (docs/testing.md's account of where the suite's time goes): a test that spins 0.3
    CPU seconds itself and one whose child process spins them are each charged with that CPU, in the right column."""
    (tmp_path / "test_spin.py").write_text(SPIN_TESTS)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts"), SUITE_CPU_TIMES_DIR=str(tmp_path / "times"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "suite_cpu_times", "test_spin.py"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0, out.stdout[-2000:]
    times = import_script("suite_cpu_times")
    rows = {r["test"]: r for r in times.read(tmp_path / "times")}
    assert set(rows) == {"test_spin.py::test_itself", "test_spin.py::test_child"}
    itself, child = rows["test_spin.py::test_itself"], rows["test_spin.py::test_child"]
    assert itself["own_s"] >= 0.3 and itself["children_s"] == 0
    assert child["children_s"] >= 0.3 and child["own_s"] < 0.3
    text = times.report(list(rows.values()), top=1)
    assert text.startswith("2 tests: ") and "test_spin.py" in text and text.count("::") == 1
    with pytest.raises(FileNotFoundError, match="run pytest with -p suite_cpu_times"):
        times.read(tmp_path)
    for stray in ('[{"test": ', "{}", '[{"test": "x"}]'):  # not written by the plugin (it writes atomically)
        (tmp_path / "times" / "0.json").write_text(stray)
        with pytest.raises(ValueError, match="not this plugin's JSON"):
            times.read(tmp_path / "times")
    assert times.main([str(tmp_path / "none")]) == 1
    # the next run starts from an empty folder: the stray file and the first run's are gone, its own are there
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0 and len(times.read(tmp_path / "times")) == 2, out.stdout[-2000:]
    # a file where the folder goes: one line, and the tests' own outcome
    env["SUITE_CPU_TIMES_DIR"] = str(tmp_path / "test_spin.py")
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert out.returncode == 0 and "suite_cpu_times: cannot write the CPU times into" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr + out.stdout and "INTERNALERROR" not in out.stdout
