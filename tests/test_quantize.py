"""int8 in PyTorch (issue 16): optimize_for_inference(dtype=torch.int8) through PT2E and the x86 inductor quantizer,
its calibration inputs, its held-out check, the oneDNN int8 kernels it compiles to, and predict --int8.

int8 has no eager counterpart, so each number is judged by the one comparison (effnetv2.inference.compare) against
an fp64 copy with int8's own measured error as the yardstick: the held-out error the library reports, or the
uncompiled quantized graph's error for its compiled form; top-1 is counted on images with a clear fp64 answer only.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
import timm
import torch
from conftest import Embedder, import_script
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import SqueezeExcitation

import effnetv2
from effnetv2 import testing as calibrated_model
from effnetv2.cli import main
from effnetv2.data import create_transform, resolve_model_data_config
from effnetv2.data.images import open_image
from effnetv2.inference.calibration import HOLDOUT_EVERY, calibration_images
from effnetv2.inference.compare import CLEAR_MARGIN, compare, reference, run_batched
from effnetv2.inference.int8 import Int8EfficientNetV2, quantize_int8
from effnetv2.inference.int8_kernels import int8_pair_sums_saturate
from effnetv2.weights.loading import load_state_dict_into

IMG = 64
aten, qd = torch.ops.aten, torch.ops.quantized_decomposed


@pytest.fixture(scope="module")
def b0(tmp_path_factory):
    """Well-conditioned tf_efficientnetv2_b0 (timm-made weights), that checkpoint as a file, and the model with a
    10-class nearest-prototype classifier (so top-1 agreement means something) and its exemplar images."""
    torch.manual_seed(0)
    theirs = timm.create_model("tf_efficientnetv2_b0")
    theirs = calibrated_model.condition(theirs, calibrated_model.smooth_images(8, IMG, seed=1)).eval()
    ours = effnetv2.create_model("tf_efficientnetv2_b0")
    load_state_dict_into(ours, theirs.state_dict(), source="timm")
    path = tmp_path_factory.mktemp("b0") / "b0.safetensors"
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, path)
    classes = effnetv2.create_model("tf_efficientnetv2_b0")
    load_state_dict_into(classes, theirs.state_dict(), source="timm")
    exemplars = calibrated_model.smooth_images(10, IMG, seed=2)
    calibrated_model.prototype_classifier(classes, exemplars)
    return ours.eval(), path, classes.eval(), exemplars


def png_folder(folder: Path, images: torch.Tensor) -> Path:
    """Normalised images as PNG files ``00.png``, ``01.png``, ... (a unit-variance field in mid-range pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        pixels = ((image * 0.25 + 0.5).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
    return folder


def image_folder(folder: Path, count: int, size: int, seed: int) -> Path:
    """``count`` natural-looking images as PNG files."""
    return png_folder(folder, calibrated_model.smooth_images(count, size, seed=seed))


def calibration(exemplars: torch.Tensor) -> torch.Tensor:
    return torch.cat([calibrated_model.smooth_images(24, IMG, seed=7), calibrated_model.mixed_images(exemplars, 24)])


@pytest.fixture(scope="module")
def classes128(b0):
    """The 10-class b0 at 128 px, its exemplars and calibration images: at 64-96 px the last maps are 2x2-3x3 and
    int8 error grows (keep_float="*.project" helps there)."""
    model = copy.deepcopy(b0[2])
    exemplars = calibrated_model.smooth_images(10, 128, seed=2)
    calibrated_model.prototype_classifier(model, exemplars)
    images = torch.cat([calibrated_model.smooth_images(24, 128, seed=7), calibrated_model.mixed_images(exemplars, 24)])
    return model.eval(), exemplars, images


def held_out_check(int8, model, images: torch.Tensor):
    """What int8's report should hold: the held-out calibration images (every 4th) through ``int8``, run as the
    library runs them (batches of 8), against fp64."""
    check = images[::HOLDOUT_EVERY]
    with torch.no_grad():
        return compare(run_batched(int8, check), reference(model, check), torch.int8)


def test_int8_agrees_with_fp64_where_the_answer_is_clear(classes128):
    model, exemplars, images = classes128
    int8 = effnetv2.optimize_for_inference(model, torch.int8, calibration=images, compile=False)
    held_out = held_out_check(int8, model, images)
    assert int8.agreement.images == 12 and int8.calibration_images == 36 and int8.agreement.limit is None
    assert int8.agreement.error == pytest.approx(held_out.error, rel=1e-3) and int8.agreement.clear == held_out.clear
    test = calibrated_model.mixed_images(exemplars, 192, seed=5)
    with torch.no_grad():
        out = run_batched(int8, test)
    # judged against int8's own held-out error (the yardstick it reports), not a fixed tolerance
    comparison = compare(out, reference(model, test), torch.int8, baseline=int8.agreement.error)
    assert comparison.accepted, comparison.describe()
    assert comparison.error > 1e3 * comparison.eager_error  # quantized
    share, clear = comparison.clear
    # Which clear answers int8 flips depends on the CPU: its fp32 rounding moves the calibrated ranges (under SSE41
    # 52 of 57 activation scales, by up to 1.3 %), so each CPU quantizes to another, equally good realization.
    # Of these 132 clear images it kept 132 (AVX2, 2 threads), 131 (AVX2, 1 thread; ONEDNN_MAX_CPU_ISA=SSE41, 2
    # threads) and 129 (SSE41, 1 thread): a 1-2 % flip rate for b0 at 128 px, where the 64 images this test used
    # before decided nothing (45 of 45 against 43 of 45, 95 % intervals 92-100 % and 85-99 %). Issue 16's 99 % bar is
    # measured on rw_m at 320 px over 526 clear images (scripts/int8_agreement.py, BENCHMARKS.md); here int8 must
    # keep 95 % (at most 6 flips), which a broken quantization (near chance, 10 %) does not.
    assert clear >= 120 and share >= 0.95, comparison.describe()
    assert out[0].dtype == torch.float32 and out[0].shape == (192, 10)

    # What is int8 and what stays float: every conv's weight is dequantized per channel from int8, except the stem's
    # and the last conv's; tf_ models' stride-2 convs after TF "same" padding too (a Conv2dSame stayed float).
    graph = int8.graph.graph
    convs = [n for n in graph.nodes if n.target == aten.conv2d.default]
    quantized = [c for c in convs if c.args[1].target == qd.dequantize_per_channel.default]
    pads = [n for n in graph.nodes if n.target in (aten.pad.default, aten.constant_pad_nd.default)]
    assert convs[0].args[1].op == convs[-1].args[1].op == "get_attr"  # stem and head: float weights
    assert len(pads) == 5 and len(quantized) == len(convs) - 2 == 57  # the stem and four strided convs pad
    assert all(n.args[1].op == "get_attr" for n in graph.nodes if n.target == aten.linear.default)  # SE, classifier
    # SiLU and the gates compute in float: none of them reads a dequantized tensor (a quantized activation would)
    activations = [n for n in graph.nodes if n.target in (aten.silu_.default, aten.sigmoid_.default)]
    dequantize = (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor)
    expected = sum(isinstance(m, (torch.nn.SiLU, torch.nn.Sigmoid)) for m in model.modules())
    assert len(activations) == expected and not any(n.args[0].target in dequantize for n in activations)


def activation_ranges(int8) -> list[tuple]:
    """The (scale, zero point) of every activation quantization in an int8 model's graph: what calibration set."""
    graph = int8.graph.graph
    return [tuple(n.args[1:3]) for n in graph.nodes if n.target == qd.quantize_per_tensor.default]


def test_held_out_images_do_not_calibrate(b0):
    """Every 4th image checks and none of them calibrates: changing only those images (to 3x the contrast, which
    would widen the activation ranges of any calibration that saw them) leaves every quantization parameter as it
    was, and changes the check. A leak of held-out images into calibration fails here."""
    model = b0[0]
    images = calibrated_model.smooth_images(16, IMG, seed=7)
    bolder = images.clone()
    bolder[::HOLDOUT_EVERY] *= 3
    plain = quantize_int8(model, images, compile=False)
    changed = quantize_int8(model, bolder, compile=False)
    ranges = activation_ranges(plain)
    assert len(ranges) > 50 and ranges == activation_ranges(changed)
    assert plain.agreement.images == changed.agreement.images == 4
    assert plain.agreement.error != changed.agreement.error  # the check ran on the changed images
    leaked = quantize_int8(
        model, torch.cat([images[1::HOLDOUT_EVERY], bolder]), compile=False
    )  # the oracle sees a leak
    assert activation_ranges(leaked) != ranges


def test_compiled_int8_runs_onednn_int8_kernels(classes128):
    model, exemplars, images = classes128
    int8 = effnetv2.optimize_for_inference(model, torch.int8, calibration=images)  # compiled by default
    assert int8.compiled and "compiled=True" in repr(int8)
    # where this CPU's kernels saturate (no VNNI: tests/test_limit.py reads the probe's sums), the model says so
    saturating = bool(int8_pair_sums_saturate())
    assert int8.saturating_kernels is saturating and ("pair sums saturate" in repr(int8)) is saturating
    assert (int8.kernel_caveat is not None) is saturating
    # the quantized graph it compiled, uncompiled: its reference ops (one quantization, not two: ~8 s of the suite)
    reference_int8 = Int8EfficientNetV2(int8.graph._orig_mod, model, int8.img_size, None, 0, False, int8.kept_float)
    assert reference_int8.kernel_caveat is None  # the reference ops sum exactly everywhere
    # the compiled model reports the check its uncompiled graph made
    held_out = held_out_check(reference_int8, model, images)
    assert int8.agreement.error == pytest.approx(held_out.error, rel=1e-3) and int8.agreement.clear == held_out.clear
    test = calibrated_model.mixed_images(exemplars, 8, seed=5)
    with torch.no_grad(), torch.profiler.profile() as prof:
        out = int8(test)
    kernels = {e.name for e in prof.events()}
    assert any("qconv" in k for k in kernels), sorted(kernels)  # oneDNN's int8 convolution, not float emulation
    ref = reference(model, test)
    with torch.no_grad():
        uncompiled = compare(reference_int8(test), ref, torch.int8)
    # the same quantized graph, fused: requantization rounds differently, so as far from fp64 as the uncompiled graph
    # (within the comparison's factor), not equal (batch 1 compiles a graph of its own: test_embed_int8_command)
    compiled = compare(out, ref, torch.int8, baseline=uncompiled.error)
    assert compiled.accepted and compiled.error != uncompiled.error, (compiled.describe(), uncompiled.describe())


def test_calibration_from_a_folder_or_a_loader_is_what_the_model_sees(b0, tmp_path):
    model = b0[0]
    folder = tmp_path / "calibration"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(calibrated_model.smooth_images(5, 80, seed=3)):
        pixels = ((image * 0.25 + 0.5).clamp(0, 1) * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(folder / ("sub" if i % 2 else ".") / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")  # not an image extension: not read
    transform = create_transform(**resolve_model_data_config(model, use_test_size=True), is_training=False)
    files = sorted(folder.rglob("*.png"))
    expected = torch.stack([transform(open_image(f)) for f in files])
    assert torch.equal(calibration_images(folder, model), expected)
    assert torch.equal(calibration_images(str(folder), model, limit=3), expected[:3])
    assert torch.equal(calibration_images(files, model), expected)  # a list of files (what the commands pass)
    # one rule for an unreadable image, whoever reads: skipped and reported, the rest calibrate
    (folder / "0-broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match=r"calibration: skipped .*0-broken\.png"):
        assert torch.equal(calibration_images(folder, model), expected)
    skipped = []
    assert torch.equal(calibration_images(folder, model, on_skip=lambda p, e: skipped.append(p.name)), expected)
    assert skipped == ["0-broken.png"]

    images, targets = torch.randn(7, 3, IMG, IMG), torch.arange(7)
    loader = DataLoader(TensorDataset(images, targets), batch_size=3)  # (images, targets) batches
    assert torch.equal(calibration_images(loader, model, limit=5), images[:5])
    assert torch.equal(calibration_images([images[:2], images[2:]], model), images)  # batches of images


def test_int8_bad_use_gives_clear_errors(b0, tmp_path, monkeypatch):
    model = b0[0]
    images = calibrated_model.smooth_images(4, IMG, seed=7)
    for kwargs, error, message in (
        ({}, ValueError, "needs calibration images"),
        ({"calibration": images[:1]}, ValueError, "2 or more images"),
        ({"calibration": images[0]}, ValueError, "2 or more images"),
        ({"calibration": images.clone().fill_(float("nan"))}, ValueError, "NaN"),
        ({"calibration": (images * 100).byte()}, TypeError, "float"),
        ({"calibration": images[:, :1]}, ValueError, "channels"),
        ({"calibration": 3}, TypeError, "DataLoader"),
        ({"calibration": [("a", 1)]}, TypeError, "image tensors"),
        ({"calibration": []}, ValueError, "no batches"),
        ({"calibration": tmp_path / "missing"}, FileNotFoundError, "no such file"),
        ({"calibration": tmp_path}, ValueError, "no images"),
        ({"calibration": images, "channels_last": False}, ValueError, "channels_last"),
        ({"calibration": images, "compile": "fastest"}, ValueError, "not a torch.compile mode"),
    ):
        with pytest.raises(error, match=message):
            effnetv2.optimize_for_inference(model, torch.int8, **kwargs)
    with pytest.raises(ValueError, match="calibration is for dtype=torch.int8"):
        effnetv2.optimize_for_inference(model, calibration=images)
    for name in ("torchao", "torchao.quantization", "torchao.quantization.pt2e"):
        monkeypatch.setitem(sys.modules, name, None)  # torchao not installed
    with pytest.raises(ImportError, match=r"pip install \"effnetv2\[int8\]\""):
        effnetv2.optimize_for_inference(model, torch.int8, calibration=images)
    monkeypatch.undo()

    int8 = effnetv2.optimize_for_inference(model, torch.int8, calibration=images, compile=False)
    with pytest.raises(ValueError, match="calibrated and captured for 64x64 inputs, got 96x96"):
        int8(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="input channels"):
        int8(torch.randn(1, 4, IMG, IMG))
    with pytest.raises(RuntimeError, match="inference only"):
        int8.train()
    assert int8.eval() is int8 and not int8.training
    assert int8.agreement.top1 is not None and int8.agreement.images == 4  # fewer than 8: checked in-sample
    with pytest.raises(ValueError, match="no module of the inference copy is named like 'stages.*.nothing'"):
        quantize_int8(model, images, keep_float=("stages.*.nothing",))
    with pytest.raises(TypeError, match="module names"):
        quantize_int8(model, images, keep_float=(3,))
    tuned = quantize_int8(model, images, compile="max-autotune")  # compiles at its first call: not called here
    assert tuned.compiled and tuned.graph.mode == "max-autotune"


def test_keep_float_and_features_only(b0):
    """keep_float adds modules by name pattern; a features_only model (no "head") quantizes with the defaults and
    returns its float feature maps."""
    model = b0[0]
    images = calibrated_model.smooth_images(8, IMG, seed=7)
    int8 = quantize_int8(model, images, compile=False, keep_float=("stem", "head", torch.nn.Linear, "*.project"))
    convs = [n for n in int8.graph.graph.nodes if n.target == aten.conv2d.default]
    float_convs = [c for c in convs if c.args[1].op == "get_attr"]
    projections = [n for n, _ in effnetv2.optimize_for_inference(model).named_modules() if n.endswith(".project")]
    assert len(projections) == 20 and len(float_convs) == 2 + len(projections)  # stem, head, projections
    assert "*.project" in repr(int8)

    features = effnetv2.create_model("tf_efficientnetv2_b0", features_only=True)
    loaded = features.load_state_dict(model.state_dict(), strict=False)  # all but the classifier's head
    assert not loaded.missing_keys and all(k.startswith(("head.", "classifier.")) for k in loaded.unexpected_keys)
    features.eval()
    int8 = effnetv2.optimize_for_inference(features, torch.int8, calibration=images, compile=False)
    with torch.no_grad():
        maps = int8(images[:2])
    ref = reference(features, images[:2])
    assert [m.shape for m in maps] == [e.shape for e in ref.fp64] and len(maps) == 5
    # every level as far from fp64 as int8's own held-out check found (within the comparison's factor)
    comparison = compare(maps, ref, torch.int8, baseline=int8.agreement.error, logits=False)
    assert comparison.accepted and comparison.error > 1e3 * comparison.eager_error, comparison.describe()
    assert int8.agreement.top1 is None and int8.num_classes == 0


KEEP_FLOAT_VARIANTS = ("head-int8", "strided-float")


def test_the_measured_int8_variants_change_what_they_say(b0):
    """scripts/int8_variants_ab.py's variants (BENCHMARKS.md's int8 findings rest on them) change the quantized graph
    as they claim, against the default graph, which does the opposite."""
    variants = import_script("int8_variants_ab")
    images = calibrated_model.smooth_images(16, IMG, seed=7)
    graphs = {"default": quantize_int8(b0[0], images, compile=False).graph.graph}
    configs = ("reduce-range", "weights-7bit", "min-max")
    for name in ("residual-float", "se-uint8", "se-uint8-full-range", *configs, *KEEP_FLOAT_VARIANTS):
        with variants.variant(name):
            graphs[name] = quantize_int8(b0[0], images, compile=False).graph.graph
    dequantize = (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor)

    def residual_adds_reading_uint8(graph) -> int:  # adds of a conv's output and a dequantized skip input
        adds = [n for n in graph.nodes if n.target in variants.ADDS]
        return sum(any(a.target in dequantize for a in n.args) for n in adds)

    def se_input_scales(graph) -> list[float]:  # the quantization scale of each squeeze-excite's input
        pools = [n for n in graph.nodes if n.target == aten.mean.dim]
        return [float(n.args[0].args[1]) for n in pools if n.args[0].target in dequantize]

    assert (
        residual_adds_reading_uint8(graphs["default"]) > 10
        and residual_adds_reading_uint8(graphs["residual-float"]) == 0
    )
    se_blocks = sum(isinstance(m, SqueezeExcitation) for m in b0[0].modules())
    assert se_input_scales(graphs["default"]) == [] and len(se_input_scales(graphs["se-uint8"])) == se_blocks == 16
    histogram, full = se_input_scales(graphs["se-uint8"]), se_input_scales(graphs["se-uint8-full-range"])
    # min-max ranges clip nothing, so they are at least the histogram's, and wider where its tail was clipped
    assert (
        all(f >= h * (1 - 1e-6) for f, h in zip(full, histogram, strict=True))
        and sum(f > 1.01 * h for f, h in zip(full, histogram, strict=True)) > 0
    )

    def scales_and_maxima(graph) -> list[tuple[float, int]]:  # (scale, quant_max) of each quantized activation
        quantize = (qd.quantize_per_tensor.default, qd.quantize_per_tensor.tensor)
        return [(float(n.args[1]), int(n.args[4])) for n in graph.nodes if n.target in quantize]

    default, seven_bit, min_max = (scales_and_maxima(graphs[k]) for k in ("default", "reduce-range", "min-max"))
    assert {q for _, q in default} == {255} and {q for _, q in seven_bit} == {127} and len(seven_bit) == len(default)
    # the calibration's minimum to maximum everywhere: no range narrower than the histogram's, many wider
    assert len(min_max) == len(default) and all(
        m >= d * (1 - 1e-6) for (m, _), (d, _) in zip(min_max, default, strict=True)
    )
    assert sum(m > 1.01 * d for (m, _), (d, _) in zip(min_max, default, strict=True)) > len(default) // 4

    def weight_ranges(graph) -> set[tuple[int, int]]:  # (quant_min, quant_max) of the per-channel int8 weights
        return {(n.args[4], n.args[5]) for n in graph.nodes if n.target == qd.dequantize_per_channel.default}

    assert weight_ranges(graphs["default"]) == {(-128, 127)} and weight_ranges(graphs["weights-7bit"]) == {(-64, 63)}
    weights = [
        getattr(graphs["weights-7bit"].owning_module, n.args[0].target)
        for n in graphs["weights-7bit"].nodes
        if n.target == qd.dequantize_per_channel.default
    ]
    assert len(weights) == 57 and min(w.min() for w in weights) >= -64 and max(w.max() for w in weights) == 63

    def float_convs(graph) -> set[str]:  # the modules whose convolution weight is not dequantized int8
        convs = [n for n in graph.nodes if n.target == aten.conv2d.default]
        return {n.args[1].target.removesuffix(".weight") for n in convs if n.args[1].op == "get_attr"}

    # the policy keeps the stem and head convs float, and only those: tf_ networks' strided convs with TensorFlow's
    # padding are quantized too; head-int8 quantizes the head conv as well
    assert float_convs(graphs["default"]) == {"stem.conv", "head.conv"}
    assert float_convs(graphs["head-int8"]) == {"stem.conv"}
    strided = {f"stages.{i}.0.{c}.conv" for i, c in ((1, "expand"), (2, "expand"), (3, "depthwise"), (5, "depthwise"))}
    assert float_convs(graphs["strided-float"]) == {"stem.conv", "head.conv", *strided}  # as before they were quantized


def as_the_cli_reads(model: torch.nn.Module, folder: Path, img_size: int = 128) -> torch.Tensor:
    """The images of ``folder``, sorted, through the model's eval transform at ``img_size`` (what the commands feed)."""
    transform = create_transform(
        **resolve_model_data_config(model, args={"img_size": img_size}, use_test_size=True), is_training=False
    )
    return torch.stack([transform(open_image(f)) for f in sorted(folder.iterdir())])


def held_out_error(stderr: str) -> float:
    """int8's own error from fp64 as the command reports it (its held-out check)."""
    match = re.search(r"int8 on \d+ (held-out|calibration) images: error (\S+) from fp64", stderr)
    assert match, stderr
    return float(match.group(2))


def test_predict_int8_command(classes128, tmp_path, capsys):
    """predict --optimize --int8 on a 10-class model: on every image whose fp64 answer is clear (top-1 probability
    CLEAR_MARGIN above the second, the reports' definition), the int8 top-1 is fp64's; near-ties are not counted."""
    model, exemplars, calibration = classes128
    # the prototypes as the command sees the exemplars (PNG pixels through the eval transform), so that images near an
    # exemplar have a clear answer
    model = copy.deepcopy(model)
    seen = as_the_cli_reads(model, png_folder(tmp_path / "exemplars", exemplars))
    calibrated_model.prototype_classifier(model, seen)
    saved = effnetv2.save_pretrained(model.eval(), tmp_path / "model")
    folder = png_folder(tmp_path / "images", calibrated_model.mixed_images(exemplars, 16, max_mix=0.2, seed=4))
    calibration_folder = png_folder(tmp_path / "calibration", calibration)  # 48 images: 36 calibrate, 12 check
    common = ["predict", str(folder), "--model", f"local-dir:{saved}", "--img-size", "128", "--device", "cpu"]
    common += ["--workers", "0", "--topk", "1", "--format", "json"]
    # one batch of 16, one compile (~20 s)
    int8_args = ["--optimize", "--int8", "--calibration", str(calibration_folder), "--batch-size", "16"]
    assert main([*common, *int8_args]) == 0
    captured = capsys.readouterr()
    assert re.search(
        r"int8 on 12 held-out images: error \S+ from fp64 \(eager float32: \S+; not judged\)", captured.err
    )
    # the check is of the quantized graph; where the compiled kernels saturate, the line says so
    assert ("saturating 16-bit sums" in captured.err) is bool(int8_pair_sums_saturate()), captured.err
    int8_rows = json.loads(captured.out)
    assert main([*common, "--optimize"]) == 0
    fp32_rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in int8_rows] == [r["path"] for r in fp32_rows] == sorted(map(str, folder.iterdir()))
    with torch.no_grad():
        fp64 = copy.deepcopy(model).double()(as_the_cli_reads(model, folder).double())
    top2 = fp64.softmax(1).topk(2, dim=1)
    clear = (top2.values[:, 0] - top2.values[:, 1] >= CLEAR_MARGIN).tolist()
    assert sum(clear) >= 8, top2.values  # the check is not vacuous
    fp64_top1 = top2.indices[:, 0].tolist()
    answers = [(row["topk"][0]["index"], top) for row, top, c in zip(int8_rows, fp64_top1, clear, strict=True) if c]
    assert all(a == b for a, b in answers), answers
    assert any(a["topk"][0]["prob"] != b["topk"][0]["prob"] for a, b in zip(int8_rows, fp32_rows, strict=True))

    for extra, message in (
        (["--int8"], "--int8 is an optimised copy of the model: give --optimize --int8 --calibration DIR"),
        (["--optimize", "--int8"], "--int8 needs --calibration DIR"),
        (["--calibration", str(folder)], "--calibration is for --int8"),
        (["--optimize", "--int8", "--calibration", str(folder), "--amp", "bf16"], "exclude each other"),
        (["--optimize", "--int8", "--calibration", str(tmp_path / "none")], "no such file or folder"),
    ):
        assert main([*common, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err, err


def test_embed_int8_command(b0, tmp_path, capsys):
    """embed --optimize --int8, one image per batch (batch 1 compiles a graph of its own): pooled embeddings (no
    classifier, so the report gives the error only) within int8's own reported error from fp64, row for row."""
    import numpy as np

    _, weights, _, _ = b0
    folder = image_folder(tmp_path / "images", 8, 128, seed=6)
    common = ["embed", str(folder), "--model", "tf_efficientnetv2_b0", "--checkpoint", str(weights)]
    common += ["--img-size", "128", "--device", "cpu", "--workers", "0", "--batch-size", "1", "--optimize"]
    assert main([*common, "--int8", "--calibration", str(folder), "-o", str(tmp_path / "int8.npy")]) == 0
    err = capsys.readouterr().err
    assert "int8 on 2 held-out images: error" in err and "top-1" not in err
    assert main([*common, "-o", str(tmp_path / "fp32.npy")]) == 0
    int8, fp32 = np.load(tmp_path / "int8.npy"), np.load(tmp_path / "fp32.npy")
    assert int8.shape == fp32.shape == (8, 1280) and not np.array_equal(int8, fp32)
    # each row as far from fp64 as int8's own held-out check found (the comparison's factor)
    ref = reference(Embedder(b0[0]), as_the_cli_reads(b0[0], folder))
    comparison = compare(torch.from_numpy(int8), ref, torch.int8, baseline=held_out_error(err))
    assert comparison.accepted, comparison.describe()
    assert (tmp_path / "int8.paths.txt").read_text() == (tmp_path / "fp32.paths.txt").read_text()


def test_features_int8_command(b0, tmp_path, capsys):
    """features --optimize --int8: every level's maps, in float, close to fp32's (a list output through the compiled
    graph and the file writer)."""
    from safetensors.torch import load_file

    _, weights, _, _ = b0
    folder = image_folder(tmp_path / "images", 4, 128, seed=8)
    common = ["features", str(folder), "--model", "tf_efficientnetv2_b0", "--checkpoint", str(weights)]
    common += ["--img-size", "128", "--device", "cpu", "--workers", "0", "--batch-size", "4", "--optimize"]
    common += ["--out-indices", "2,4"]
    assert main([*common, "--int8", "--calibration", str(folder), "-o", str(tmp_path / "int8.safetensors")]) == 0
    err = capsys.readouterr().err
    assert "int8 on 4 calibration images: error" in err
    assert main([*common, "-o", str(tmp_path / "fp32.safetensors")]) == 0
    int8, fp32 = load_file(tmp_path / "int8.safetensors"), load_file(tmp_path / "fp32.safetensors")
    assert set(int8) == set(fp32) == {"features.2", "features.4"}
    for name, maps in int8.items():
        assert maps.dtype == torch.float32 and maps.shape == fp32[name].shape and not torch.equal(maps, fp32[name])
    # every level as far from fp64 as int8's own check found (the comparison's factor)
    features = effnetv2.create_model("tf_efficientnetv2_b0", features_only=True, out_indices=(2, 4))
    features.load_state_dict(b0[0].state_dict(), strict=False)
    ref = reference(features.eval(), as_the_cli_reads(features, folder))
    ours = [int8["features.2"], int8["features.4"]]
    comparison = compare(ours, ref, torch.int8, baseline=held_out_error(err), logits=False)
    assert comparison.accepted, comparison.describe()
