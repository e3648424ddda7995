"""The ``effnetv2`` command line, run in-process through ``effnetv2.cli.main`` (and once as ``python -m effnetv2``).

Weights come from the timm-made test oracle (conftest's well-conditioned ``timm_model``), through ``--checkpoint`` or
the offline hub cache (``hf_cache``); reference numbers from timm with its own eval transform. On photos the oracle
gives informative probabilities (not one-hot): its BatchNorm is calibrated on natural-looking images, its logits
are a few units.
"""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from conftest import HANG_GUARD_S, PARITY, assert_close, cli, save_sample_crops
from PIL import Image
from safetensors import safe_open
from test_validate import RANKED, RANKED_LABELS, ranked_probs, save_ranked_model

import effnetv2
from effnetv2.cli import build_parser
from effnetv2.cli.batches import ImageRun, run_model
from effnetv2.data import imagenet_class_names, sample_image_path
from effnetv2.inference.compare import Reference, compare, relative_difference

SIZE = 96  # small inputs keep the 53 M-parameter model fast; the default (416) is checked once
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """A folder of real photos (crops of the sample) in three formats, one in a subfolder, plus a non-image."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "sub").mkdir()
    with Image.open(sample_image_path()) as img:
        img.crop((100, 0, 400, 300)).save(folder / "a.png")
        img.resize((200, 133)).save(folder / "sub" / "b.jpg")
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "c.bmp")
    (folder / "notes.txt").write_text("not looked at: not an image extension")
    return folder


def timm_eval(timm_model, paths, img_size=None, forward=None) -> torch.Tensor:
    """timm's own pipeline: its data config (test size unless ``img_size``), its transform, its model."""
    args = {"img_size": img_size} if img_size else None
    cfg = timm.data.resolve_model_data_config(timm_model, args=args, use_test_size=True)
    transform = timm.data.create_transform(**cfg, is_training=False)
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return (forward or timm_model)(x)


def test_predict_default_is_the_sample_at_test_size_from_the_hub_and_equals_timm(timm_model, hf_cache, capsys):
    """`effnetv2 predict` with no argument: the sample photo, hub weights, the test size; top-5 as timm's."""
    theirs = timm_model
    sample_logits = timm_eval(theirs, [sample_image_path()])
    rc, out, err = cli(capsys, "predict", "--format", "json")
    assert (rc, err) == (0, "")
    [result] = json.loads(out)
    assert result["path"] == str(sample_image_path())

    cfg = timm.data.resolve_model_data_config(theirs, use_test_size=True)
    assert cfg["input_size"] == (3, 416, 416)
    probs, indices = sample_logits.softmax(dim=1).topk(5)  # timm's eval transform at the test size, timm's model
    assert [t["index"] for t in result["topk"]] == indices[0].tolist()
    assert [t["label"] for t in result["topk"]] == [imagenet_class_names()[i] for i in indices[0].tolist()]
    ours = [t["prob"] for t in result["topk"]]
    # the fp32 parity contract, through both image pipelines (ours and timm's)
    assert_close(torch.tensor(ours, dtype=torch.float64), probs[0])
    assert ours[0] < 0.99 and ours[4] > 1e-3  # informative probabilities: the calibrated weights were used


def test_predict_formats_agree_and_follow_img_size(timm_model, checkpoint, images, capsys, monkeypatch):
    theirs = timm_model
    files = [images / "a.png", images / "sub" / "b.jpg"]
    common = ["--checkpoint", checkpoint, "--img-size", SIZE, "--topk", 3]
    rc, out, err = cli(capsys, "predict", *files, *common, "--format", "json")
    assert (rc, err) == (0, "")  # stderr is not a terminal: no progress bar
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(f) for f in files]

    probs, indices = timm_eval(theirs, files, img_size=SIZE).softmax(dim=1).topk(3)
    for result, p, i in zip(results, probs, indices, strict=True):
        assert [t["index"] for t in result["topk"]] == i.tolist()
        assert_close(torch.tensor([t["prob"] for t in result["topk"]], dtype=torch.float64), p)

    rc, out, _ = cli(capsys, "predict", *files, *common, "--format", "csv")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "path,rank,index,label,prob"
    expected = [
        f"{r['path']},{rank},{t['index']},{t['label']},{t['prob']}"
        for r in results
        for rank, t in enumerate(r["topk"], start=1)
    ]
    assert lines[1:] == expected

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: the progress bar shows
    rc, out, err = cli(capsys, "predict", *files, *common)
    assert rc == 0
    assert "2/2" in err
    blocks = out.strip().split("\n\n")
    assert len(blocks) == 2
    for block, result in zip(blocks, results, strict=True):
        head, header, *rows = block.splitlines()
        assert head == result["path"] and header.split() == ["rank", "class", "prob", "label"]
        for rank, (row, top) in enumerate(zip(rows, result["topk"], strict=True), start=1):
            assert row.split(maxsplit=3) == [str(rank), str(top["index"]), f"{top['prob']:.4f}", top["label"]]


@pytest.fixture(scope="module")
def ranked_model(tmp_path_factory) -> Path:
    return save_ranked_model(tmp_path_factory.mktemp("ranked"))


def test_predict_topk_k_lists_ranks_1_to_k_of_a_ranking_made_by_hand(ranked_model, images, capsys):
    """--topk K lists the K top classes, the K-th and no (K+1)-th: on test_validate's ranked model (logits that are
    its classifier's bias whatever the image) the answer is the first K of the ranking chosen by hand, with softmax
    probabilities computed by hand, for K at either side of the default 5, 1, and all 10."""
    files = [images / "a.png", images / "sub" / "b.jpg"]
    common = ["--model", "tf_efficientnetv2_b0", "--checkpoint", ranked_model, "--img-size", 64, "--format", "json"]
    probs = ranked_probs()
    for k in (None, 1, 4, 5, 6, 10):  # None: the default, 5 of 10 classes
        rc, out, err = cli(capsys, "predict", *files, *common, *([] if k is None else ["--topk", k]))
        assert (rc, err) == (0, ""), f"--topk {k}"
        expected = RANKED[: k or 5]
        for result in json.loads(out):
            assert [t["index"] for t in result["topk"]] == list(expected), f"--topk {k}"
            assert [t["label"] for t in result["topk"]] == [RANKED_LABELS[i] for i in expected]
            got = torch.tensor([t["prob"] for t in result["topk"]], dtype=torch.float64)
            assert relative_difference(got, torch.tensor([probs[i] for i in expected], dtype=torch.float64)) <= PARITY
    rc, out, _ = cli(capsys, "predict", files[0], *common[:-2], "--topk", 6, "--format", "csv")
    assert rc == 0
    rows = out.splitlines()[1:]  # path,rank,index,label,prob: ranks 1..6, the 6th class last
    assert [row.split(",")[1:3] for row in rows] == [[str(r), str(c)] for r, c in enumerate(RANKED[:6], start=1)]
    rc, _, err = cli(capsys, "predict", files[0], *common, "--topk", 11)
    assert rc == 2 and "--topk 11 is more than the model's 10 classes" in err


def test_folder_with_corrupt_files_via_python_m(checkpoint, images, tmp_path):
    """Bad files are reported by path and skipped, the rest classified, exit status 1, no traceback."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "c.bmp"):
        (folder / name).write_bytes((images / name).read_bytes())
    (folder / "nested").mkdir()
    (folder / "nested" / "b.jpg").write_bytes((images / "sub" / "b.jpg").read_bytes())
    (folder / "garbage.jpg").write_bytes(b"this is not a jpeg")
    jpeg = (images / "sub" / "b.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "readme.txt").write_text("skipped: not an image extension")

    cmd = [sys.executable, "-m", "effnetv2", "predict", folder, "--checkpoint", checkpoint, "--img-size", SIZE]
    cmd += ["--batch-size", 2, "--workers", 2, "--format", "json"]  # 5 files → 3 batches through 2 workers
    proc = subprocess.run([str(c) for c in cmd], cwd=REPO, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    skipped = sorted(line for line in proc.stderr.splitlines() if line.startswith("effnetv2: skipped "))
    assert len(skipped) == 2, proc.stderr
    assert skipped[0].startswith(f"effnetv2: skipped {folder / 'garbage.jpg'}: not an image")
    assert skipped[1].startswith(f"effnetv2: skipped {folder / 'truncated.jpg'}: OSError")
    results = json.loads(proc.stdout)
    assert [r["path"] for r in results] == [str(folder / n) for n in ("a.png", "c.bmp", "nested/b.jpg")]
    assert all(len(r["topk"]) == 5 for r in results)


def test_embed_npy_and_safetensors_equal_timm_pre_logits(timm_model, checkpoint, images, tmp_path, capsys):
    theirs = timm_model
    files = [images / "a.png", images / "sub" / "b.jpg"]
    expected = timm_eval(theirs, files, SIZE, forward=lambda x: theirs.forward_head(theirs.forward_features(x), True))
    assert expected.shape == (2, 2152)

    npy = tmp_path / "emb.npy"
    rc, out, err = cli(capsys, "embed", *files, "-o", npy, "--checkpoint", checkpoint, "--img-size", SIZE)
    paths_txt = tmp_path / "emb.paths.txt"
    assert (rc, out, err) == (0, "", f"effnetv2: wrote 2 × 2152 embeddings to {npy} (+ {paths_txt}), 0 skipped\n")
    assert_close(torch.from_numpy(np.load(npy)), expected)
    assert (tmp_path / "emb.paths.txt").read_text().splitlines() == [str(f) for f in files]

    st = tmp_path / "emb.safetensors"
    rc, _, _ = cli(capsys, "embed", images / "sub", images / "a.png", "-o", st, "--checkpoint", checkpoint,
                   "--img-size", SIZE)  # fmt: skip
    assert rc == 0
    with safe_open(st, "pt") as f:
        assert json.loads(f.metadata()["paths"]) == [str(files[1]), str(files[0])]
        assert json.loads(f.metadata()["input_size"]) == [3, SIZE, SIZE]
        assert_close(f.get_tensor("embeddings"), expected.flip(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.npy", "emb.paths.txt", "emb.safetensors"]


def test_features_to_safetensors_equal_timm(timm_model, checkpoint, images, tmp_path, capsys):
    theirs = timm_model
    files = [images / "a.png", images / "c.bmp"]
    out_file = tmp_path / "feats.safetensors"
    rc, out, err = cli(capsys, "features", *files, "-o", out_file, "--out-indices", "1,3", "--checkpoint", checkpoint,
                       "--img-size", SIZE)  # fmt: skip
    closing = f"effnetv2: wrote feature maps of 2 images, levels 1,3, to {out_file}, 0 skipped\n"
    assert (rc, out, err) == (0, "", closing)
    expected = timm_eval(
        theirs, files, SIZE, forward=lambda x: theirs.forward_intermediates(x, [1, 3], intermediates_only=True)
    )
    with safe_open(out_file, "pt") as f:
        assert sorted(f.keys()) == ["features.1", "features.3"]
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        assert meta["paths"] == [str(p) for p in files]
        assert (meta["channels"], meta["reductions"], meta["out_indices"]) == ([56, 192], [4, 16], [1, 3])
        assert f.get_tensor("features.1").shape == (2, 56, SIZE // 4, SIZE // 4)
        assert f.get_tensor("features.3").shape == (2, 192, SIZE // 16, SIZE // 16)
        assert_close(f.get_tensor("features.1"), expected[0])
        assert_close(f.get_tensor("features.3"), expected[1])
    assert build_parser().parse_args(["features", "x.jpg", "-o", "y.safetensors"]).out_indices == (0, 1, 2, 3, 4)


def test_info_matches_timm_model_card_without_weights(capsys, monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("info must not load weights")

    monkeypatch.setattr(effnetv2.registry, "read_pinned_state_dict", no_weights)  # how create_model reads weights
    rc, out, err = cli(capsys, "info", "--format", "json")
    assert (rc, err) == (0, "")
    info = json.loads(out)
    # timm's published stats (model card: 53.2 M params, 12.7 GMACs, 47.1 M activations at 320) are fvcore's
    # counts; fvcore 0.1.5 on timm's efficientnetv2_rw_m gives exactly these two numbers.
    assert info["params"] == 53_236_442
    assert info["input_size"] == [3, 320, 320]
    assert info["macs"] == 12_721_778_144
    assert info["activations"] == 47_144_762
    assert [(lvl["channels"], lvl["stride"], lvl["module"]) for lvl in info["feature_levels"]] == [
        (32, 2, "stages.0"),
        (56, 4, "stages.1"),
        (80, 8, "stages.2"),
        (192, 16, "stages.4"),
        (328, 32, "stages.5"),
    ]
    assert info["pretrained_cfg"]["test_input_size"] == [3, 416, 416]
    assert info["pretrained_cfg"]["hf_hub_id"] == "timm/efficientnetv2_rw_m.agc_in1k"

    rc, out, _ = cli(capsys, "info", "--img-size", 416)
    assert rc == 0
    assert "53,236,442" in out and "stages.5" in out and "test_input_size" in out
    gmacs = next(line for line in out.splitlines() if line.startswith("GMACs")).split()
    assert gmacs[1:] == ["21.49", "at", "3×416×416"]  # MACs grow with the pixel count: 12.72 × (416/320)² ≈ 21.5


@pytest.mark.parametrize(
    "args, message",
    [
        (["predict", "missing.jpg"], "missing.jpg: no such file or folder"),
        (["embed", "{empty}", "-o", "e.npy"], "no images in this folder"),
        (["embed", "{image}", "-o", "e.csv"], "unsupported output type '.csv'; use .npy or .safetensors"),
        (["embed", "{image}", "-o", "{empty}/no/e.npy"], "output folder does not exist"),
        (["predict", "--topk", "0"], "argument --topk: must be an integer >= 1, got 0"),
        (["predict", "--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["predict", "--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
        (["features", "{image}", "-o", "f.safetensors", "--out-indices", "a,b"], "expected comma-separated integers"),
        (["predict", "--checkpoint", "{empty}/nope.safetensors"], "checkpoint file not found"),
        (["info", "--model", "efficientnetv2_rw_x"], "unknown model 'efficientnetv2_rw_x'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, message, images, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", image=images / "a.png") for a in args]
    rc, out, err = cli(capsys, *args)
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert message in err and "error:" in err


def test_features_out_of_range_index_and_topk_beyond_classes(checkpoint, images, tmp_path, capsys):
    out_file = tmp_path / "f.safetensors"
    args = ["features", images / "a.png", "-o", out_file, "--checkpoint", checkpoint]
    rc, _, err = cli(capsys, *args, "--out-indices", "2,5")
    assert rc == 2 and "feature index 5 is out of range (0 to 4)" in err and len(err.splitlines()) == 1
    rc, _, err = cli(capsys, "predict", images / "a.png", "--checkpoint", checkpoint, "--topk", 1001)
    assert rc == 2 and "--topk 1001 is more than the model's 1000 classes" in err
    assert not out_file.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_is_a_user_error(images, capsys):
    rc, _, err = cli(capsys, "predict", images / "a.png", "--device", "cuda")
    assert rc == 2 and "--device cuda:" in err and "no cuda device" in err


def test_package_data_labels_and_sample():
    from torchvision.models._meta import _IMAGENET_CATEGORIES  # the labels' source, see effnetv2/data/README.md

    names = imagenet_class_names()
    assert list(names) == list(_IMAGENET_CATEGORIES)
    assert (names[0], names[281], names[999]) == ("tench", "tabby", "toilet tissue")
    sample = sample_image_path()
    assert sample.stat().st_size < 150_000
    with Image.open(sample) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (451, 300))
    assert "CC0" in (sample.parent / "README.md").read_text()


def test_amp_bf16_autocasts(timm_model, checkpoint, images, capsys):
    """``--amp bf16`` is judged against fp64 with timm under the same autocast as the yardstick, not a fixed tolerance.

    How far bfloat16 lands from fp64 depends on the CPU: oneDNN converts bf16 to fp32 on plain AVX2, while
    AVX512-BF16 / AMX multiply in bf16 with their own accumulation order. timm's model under the same autocast on
    the same input runs the same kernels, so its error is the yardstick on every CPU.
    """
    image = images / "a.png"
    args = ["predict", image, "--img-size", SIZE, "--format", "json", "--device", "cpu", "--checkpoint", checkpoint]
    rc, out, err = cli(capsys, *args, "--amp", "bf16", "--topk", 1000)
    assert (rc, err) == (0, "")
    ours = torch.zeros(1000, dtype=torch.float64)
    for t in json.loads(out)[0]["topk"]:  # every class: log-probabilities are the logits up to a constant
        ours[t["index"]] = np.log(t["prob"])

    def autocast_bf16(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return timm_model(x).float()

    # The one comparison, on log-probabilities: against an fp64 copy, with timm under the same autocast as the
    # yardstick (the eager model in bfloat16 on this CPU's kernels).
    fp64_model = copy.deepcopy(timm_model).double()
    fp64 = timm_eval(timm_model, [image], img_size=SIZE, forward=lambda x: fp64_model(x.double())).log_softmax(1)
    fp32 = timm_eval(timm_model, [image], img_size=SIZE).double().log_softmax(1)
    timm_bf16 = timm_eval(timm_model, [image], img_size=SIZE, forward=autocast_bf16).double().log_softmax(1)
    ref = Reference(fp64, [fp64], torch.float32, {torch.float32: relative_difference(fp32, fp64)})
    comparison = compare([ours[None]], ref, torch.bfloat16, baseline=relative_difference(timm_bf16, fp64))
    assert comparison.accepted, comparison.describe()  # no farther from fp64 than 4x timm's own bfloat16
    assert comparison.error > 100 * ref.eager_error  # and really bfloat16: autocast took effect


@pytest.mark.parametrize("amp, hint", [(None, ""), ("fp16", " (float16 overflow? try --amp bf16)")])
def test_non_finite_outputs_are_flagged_once(amp, hint, images, capsys):
    # float16 overflows to inf/NaN on activations past 65504 (fp16 on the CPU is too slow to show it for real).
    files = [images / "a.png", images / "c.bmp"]
    run = ImageRun(files, lambda img: torch.zeros(3, 8, 8), batch_size=1, workers=0)
    outputs = list(run_model(lambda x: x.sum((2, 3)) * float("nan"), run, torch.device("cpu"), amp))
    assert [paths for paths, _ in outputs] == [[files[0]], [files[1]]]
    assert all(o.dtype == torch.float32 and torch.isnan(o).all() for _, o in outputs)
    assert capsys.readouterr().err == f"effnetv2: warning: the model produced NaN or infinite values{hint}\n"


# --- Inputs listed in a file, and --optimize (on three crops of the sample photo, 64 px) -----------------------------


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """A folder of three crops of the sample photo: 0.png, 1.png, 2.png."""
    folder = tmp_path_factory.mktemp("crops")
    save_sample_crops(folder, 3, step=(60, 20), size=(240, 220), name="{}.png")
    return folder


def quick(checkpoint) -> list:
    """The weights, 64 px and no worker processes: a quick run."""
    return ["--checkpoint", checkpoint, "--img-size", 64, "--workers", "0"]


def predicted_probs(results: list[dict]) -> torch.Tensor:
    """The top-k probabilities of predict's JSON output, image by image."""
    return torch.tensor([[t["prob"] for t in r["topk"]] for r in results], dtype=torch.float64)


def test_files_from_a_list_and_from_stdin(checkpoint, crops, tmp_path, capsys, monkeypatch):
    listed = [crops / "2.png", tmp_path / "gone.png", crops / "0.png"]
    list_file = tmp_path / "list.txt"
    list_file.write_bytes(b"".join(os.fsencode(p) + b"\n" for p in listed) + b"\n")  # and a blank line
    base = ["predict", *quick(checkpoint), "--format", "json"]
    rc, out, err = cli(capsys, *base, "--files-from", list_file)
    assert rc == 1 and f"skipped {tmp_path / 'gone.png'}: FileNotFoundError" in err  # reported, the rest goes on
    from_list = json.loads(out)
    rc, out, _ = cli(capsys, *base, crops / "2.png", crops / "0.png")
    assert rc == 0 and [r["path"] for r in json.loads(out)] == [r["path"] for r in from_list]  # the list's order
    assert_close(predicted_probs(json.loads(out)), predicted_probs(from_list))

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(list_file.read_bytes())))
    rc, out, _ = cli(capsys, *base, crops / "1.png", "--files-from", "-")  # named paths first, then the list
    assert rc == 1 and [r["path"] for r in json.loads(out)] == [str(crops / n) for n in ("1.png", "2.png", "0.png")]

    (tmp_path / "empty.txt").write_text("\n\n")
    for argv, message in [
        (
            ["--files-from", tmp_path / "missing.txt"],
            "--files-from " + str(tmp_path / "missing.txt") + ": No such file",
        ),
        (["--files-from", tmp_path / "empty.txt"], "empty.txt: no paths in it"),
    ]:
        rc, _, err = cli(capsys, "embed", *argv, "-o", tmp_path / "e.npy", *quick(checkpoint))
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "embed", "-o", tmp_path / "e.npy", *quick(checkpoint))
    assert rc == 2 and "no images: give image files or folders, or --files-from LIST" in err


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)


def test_optimize_gives_the_plain_models_outputs(checkpoint, crops, tmp_path, capsys):
    for command, extra in (("embed", []), ("features", ["--out-indices", "1,4"])):
        for optimize in ([], ["--optimize"]):
            out = tmp_path / f"{command}{len(optimize)}.safetensors"
            assert cli(capsys, command, crops, "-o", out, *quick(checkpoint), *extra, *optimize)[0] == 0
        plain, fast = (
            read_tensors(tmp_path / f"{command}0.safetensors"),
            read_tensors(tmp_path / f"{command}1.safetensors"),
        )
        assert plain.keys() == fast.keys()
        for key in plain:
            assert_close(fast[key], plain[key])
    predictions = []
    for optimize in ([], ["--optimize"]):
        rc, out, _ = cli(capsys, "predict", crops, *quick(checkpoint), "--format", "json", *optimize)
        predictions.append(json.loads(out))
    plain, fast = predictions
    assert [[t["index"] for t in r["topk"]] for r in fast] == [[t["index"] for t in r["topk"]] for r in plain]
    assert_close(predicted_probs(fast), predicted_probs(plain))
    rc, _, err = cli(capsys, "predict", crops, *quick(checkpoint), "--optimize", "--amp", "fp16", "--device", "cpu")
    assert rc == 2 and "--optimize --amp fp16: float16 inference is for CUDA" in err


def test_optimize_with_amp_runs_the_reduced_precision_copy(checkpoint, crops, tmp_path, capsys):
    """--optimize --amp bf16 is optimize_for_inference(model, torch.bfloat16): the numbers of that copy run here on
    the same preprocessed image, within the parity bound (far below bfloat16's own rounding, so the plain model
    under autocast would not pass; bfloat16's distance from fp64 is the library's, tested elsewhere)."""
    out = tmp_path / "bf16.safetensors"
    argv = ["embed", crops / "0.png", "-o", out, "--checkpoint", checkpoint, "--img-size", 32, "--workers", 0]
    assert cli(capsys, *argv, "--optimize", "--amp", "bf16")[0] == 0
    model = effnetv2.create_model("efficientnetv2_rw_m", num_classes=0, checkpoint_path=checkpoint).eval()
    config = effnetv2.data.resolve_model_data_config(model, args={"img_size": 32}, use_test_size=True)
    x = effnetv2.data.create_transform(**config)(Image.open(crops / "0.png").convert("RGB"))[None]
    with torch.inference_mode():
        expected = effnetv2.optimize_for_inference(model, torch.bfloat16)(x)
        plain = model(x)
    got = read_tensors(out)["embeddings"]
    assert_close(got, expected)
    assert relative_difference(got, plain) > 100 * PARITY  # reduced precision did run
