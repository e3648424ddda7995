"""`effnetv2 validate`: timm's validate.py numbers on a labelled folder, class folders matched by synset, label name or
index, and clear errors for folders that fit no scheme."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import timm
import torch
from conftest import HANG_GUARD_S, image_batch
from PIL import Image

from effnetv2.cli import main
from effnetv2.data.assets import imagenet_synsets
from effnetv2.data.class_map import ClassMapError, folder_class_indices

SIZE = 96
REPO = Path(__file__).resolve().parents[1]
# The rank, in the oracle's logits, of the class each image's folder names: 3 of 8 are top-1, 6 of 8 top-5.
RANKS = [0, 0, 0, 1, 2, 4, 6, 50]


def save_png(image: torch.Tensor, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = ((image.permute(1, 2, 0) * 0.25 + 0.45).clamp(0, 1) * 255).to(torch.uint8).numpy()
    Image.fromarray(array).save(path)


def timm_eval(timm_model, root: Path, class_map) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets as timm's validate.py computes them (its dataset, class map and eval transform)."""
    config = timm.data.resolve_data_config({"img_size": SIZE}, model=timm_model, use_test_size=True)
    dataset = timm.data.ImageDataset(str(root), class_map=class_map, transform=timm.data.create_transform(**config))
    images, targets = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    with torch.no_grad():
        return timm_model.eval()(torch.stack(images)), torch.tensor(targets)


@pytest.fixture(scope="module")
def imagenet_folder(timm_model, tmp_path_factory) -> Path:
    """8 images, each in the synset folder of the class of rank RANKS[i] in the oracle's own prediction."""
    scratch = tmp_path_factory.mktemp("unsorted")
    for i, image in enumerate(image_batch(len(RANKS), SIZE, SIZE, seed=7)):
        save_png(image, scratch / "x" / f"{i}.png")
    logits, _ = timm_eval(timm_model, scratch, None)
    root = tmp_path_factory.mktemp("imagenet") / "val"
    synsets = imagenet_synsets()
    for i, rank in enumerate(RANKS):
        cls = logits[i].argsort(descending=True)[rank].item()
        (root / synsets[cls]).mkdir(parents=True, exist_ok=True)
        (scratch / "x" / f"{i}.png").rename(root / synsets[cls] / f"{i}.png")
    return root


def run_json(capsys, *args: str) -> dict:
    assert main(["validate", *args, "--format", "json", "--workers", "0"]) == 0
    return json.loads(capsys.readouterr().out)


def test_equals_timm_validate_on_synset_folders(imagenet_folder, hub_folder, timm_model, capsys):
    logits, targets = timm_eval(timm_model, imagenet_folder, str(files("timm.data") / "_info/imagenet_synsets.txt"))
    top1, top5 = timm.utils.accuracy(logits, targets, topk=(1, 5))
    loss = torch.nn.CrossEntropyLoss()(logits, targets).item()
    assert (top1.item(), top5.item()) == (37.5, 75.0)  # the folder layout did what RANKS says

    # the DATA folder holding val/ is found as train's layout has it
    result = run_json(capsys, str(imagenet_folder.parent), "--checkpoint", str(hub_folder), "--img-size", str(SIZE))
    assert result["class_folders_matched_by"] == "synsets"
    assert (result["top1"], result["top5"], result["num_images"]) == (37.5, 75.0, 8)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert (result["top1_err"], result["top5_err"]) == (62.5, 25.0)
    timm_config = timm.data.resolve_data_config({"img_size": SIZE}, model=timm_model, use_test_size=True)
    assert result["img_size"] == SIZE and result["crop_pct"] == timm_config["crop_pct"]
    assert result["checkpoint"] == str(hub_folder / "model.safetensors")


def test_predictions_out_and_table(imagenet_folder, hub_folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    args = [str(imagenet_folder), "--checkpoint", str(hub_folder), "--img-size", str(SIZE), "--workers", "0"]
    assert main(["validate", *args, "--batch-size", "3", "--predictions-out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "top-1  37.500 %" in table and "top-5  75.000 %" in table and "8 images" in table
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == [str(p) for p in sorted(imagenet_folder.rglob("*.png"))]  # ImageFolder order
    correct = {Path(r["path"]).name for r in rows if r["target"] == r["prediction"]}
    assert correct == {"0.png", "1.png", "2.png"}  # RANKS: the first three are top-1
    row = rows[0]
    synset = Path(row["path"]).parent.name
    assert imagenet_synsets()[int(row["target"])] == synset and row["target_label"] != synset  # ImageNet names
    assert 0 < float(row["prob"]) <= 1


def test_class_folder_schemes():
    assert folder_class_indices(["dogs", "cats"], 2, ["cats", "dogs"]) == ([1, 0], "label_names")
    assert folder_class_indices(["0", "1"], 2, ["cats", "dogs"]) == ([0, 1], "indices")
    assert folder_class_indices(["n01443537", "n01440764"], 1000) == ([1, 0], "synsets")
    assert folder_class_indices(["2", "999"], 1000) == ([2, 999], "indices")
    with pytest.raises(ClassMapError, match=r"\['lions'\] match none of the model's 2 classes by label_names"):
        folder_class_indices(["cats", "lions"], 2, ["cats", "dogs"])
    with pytest.raises(ClassMapError, match="synsets, indices"):  # one scheme for all folders, not a mix
        folder_class_indices(["n01443537", "7"], 1000)
    with pytest.raises(ClassMapError, match=r"by indices; .*\(its config.json has none\) or by class index 0..2$"):
        folder_class_indices(["3"], 3)


def test_bad_data_folders_are_one_line_errors(tmp_path, hub_folder, capsys):
    (tmp_path / "empty").mkdir()
    save_png(image_batch(1, 40, 40)[0], tmp_path / "pets" / "lions" / "0.png")
    cases = [
        (tmp_path / "nope", "nope: no such folder"),
        (tmp_path / "empty", "empty: Couldn't find any class folder"),
        (tmp_path / "pets", "pets: class folders ['lions'] match none of the model's 1000 classes"),
    ]
    for data, message in cases:
        assert main(["validate", str(data), "--checkpoint", str(hub_folder)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_torchrun_and_optimize_give_the_same_numbers(imagenet_folder, hub_folder, tmp_path, capsys):
    """Two torchrun processes (each scores every 2nd image, the counts summed) and --optimize (the folded model)
    report what one plain process does; the predictions CSV keeps the folder's order."""
    args = [str(imagenet_folder), "--checkpoint", str(hub_folder), "--img-size", str(SIZE), "--workers", "0"]
    args += ["--batch-size", "3", "--format", "json"]
    assert main(["validate", *args, "--predictions-out", str(tmp_path / "one.csv")]) == 0
    single = json.loads(capsys.readouterr().out)
    assert main(["validate", *args, "--optimize"]) == 0
    optimized = json.loads(capsys.readouterr().out)
    assert (optimized["top1"], optimized["top5"]) == (single["top1"], single["top5"]) == (37.5, 75.0)
    assert optimized["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert optimized["param_count"] == single["param_count"]  # the model's, not the folded copy's

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m"]
    cmd = [*torchrun, "effnetv2", "validate", *args, "--predictions-out", str(tmp_path / "two.csv")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pair = json.loads(proc.stdout)  # printed once, by rank 0
    assert pair.pop("loss") == pytest.approx(single.pop("loss"), rel=1e-6) and pair == single
    one, two = (list(csv.reader((tmp_path / name).open())) for name in ("one.csv", "two.csv"))
    assert [r[:5] for r in two] == [r[:5] for r in one] and len(one) == 9  # header and 8 images
