"""`effnetv2 validate`: timm's validate.py numbers on a labelled folder, class folders matched by synset, label name or
index, and clear errors for folders that fit no scheme."""

from __future__ import annotations

import csv
import json
import math
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

import effnetv2
from effnetv2.cli import main
from effnetv2.data.assets import imagenet_synsets
from effnetv2.data.class_map import ClassMapError, folder_class_indices

SIZE = 96
REPO = Path(__file__).resolve().parents[1]
# The rank, in the oracle's logits, of the class each image's folder names (0 = the top class): 3 of 8 are top-1,
# 6 of 8 top-5; index 4 is the 5th class (in) and 5 the 6th (out), so a top-4 or top-6 reads a different top-5.
RANKS = [0, 0, 0, 1, 2, 4, 5, 50]


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
    """8 images, each in the synset folder of the class of rank RANKS[i] in the oracle's own prediction.

    The images (seed 23) are ones whose ranks that decide a count are clear: the top two logits of the top-1 and
    rank-1 items, and the 5th and 6th of the items at the top-5 edge, are 0.2+ apart (effnetv2's logits differ from
    timm's by ~1e-4), so both implementations count the same hits on any CPU."""
    scratch = tmp_path_factory.mktemp("unsorted")
    for i, image in enumerate(image_batch(len(RANKS), SIZE, SIZE, seed=23)):
        save_png(image, scratch / "x" / f"{i}.png")
    logits, _ = timm_eval(timm_model, scratch, None)
    ordered = logits.sort(dim=1, descending=True).values
    for i, rank in enumerate(RANKS):
        edge = {0: 0, 1: 0, 4: 4, 5: 4}.get(rank)  # the gap (edge, edge + 1) that moves this item across a count
        if edge is not None:
            gap = (ordered[i, edge] - ordered[i, edge + 1]).item()
            assert gap > 0.05, f"image {i}: logits {edge + 1} and {edge + 2} are {gap:.4f} apart; pick another seed"
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
    table, err = capsys.readouterr()
    assert err.splitlines()[-1] == f"effnetv2: wrote 8 predictions to {out}"  # the table stays stdout's
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


# --- top-k against counts made by hand --------------------------------------------------------------------------
# A 10-class tf_efficientnetv2_b0 whose classifier has weight 0 and a bias that ranks the classes: every image's
# logits are exactly that bias, so the rank of each image's true class is chosen by the folder it is put in and the
# expected top-1, top-5 and loss follow by hand, without the code under test. The ranking is not the class order
# (class RANKED[r] is the (r+1)-th), so a mix-up of ranks and class indices shows too.
RANKED = (3, 7, 0, 9, 5, 1, 8, 2, 6, 4)
RANKED_LABELS = [f"c{i}" for i in range(10)]


def ranked_bias() -> list[float]:
    """The bias in class order: the (r+1)-th class gets -0.75 r (clear gaps, informative probabilities)."""
    bias = [0.0] * len(RANKED)
    for rank, cls in enumerate(RANKED):
        bias[cls] = -0.75 * rank
    return bias


def ranked_probs() -> list[float]:
    """softmax(ranked_bias()) in class order, by hand in double precision."""
    exps = [math.exp(b) for b in ranked_bias()]
    return [e / sum(exps) for e in exps]


def make_ranked_model() -> torch.nn.Module:
    """tf_efficientnetv2_b0, 10 classes, classifier weight 0 and bias :func:`ranked_bias` (logits = that bias)."""
    torch.manual_seed(0)
    model = effnetv2.create_model("tf_efficientnetv2_b0", num_classes=len(RANKED))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(ranked_bias()))
    return model.eval()


def save_ranked_model(folder: Path) -> Path:
    """The ranked model saved as a model folder (``--checkpoint DIR``), label names c0..c9."""
    return effnetv2.save_pretrained(make_ranked_model(), folder, {"label_names": RANKED_LABELS})


@pytest.fixture(scope="module")
def ranked_model(tmp_path_factory) -> Path:
    return save_ranked_model(tmp_path_factory.mktemp("ranked"))


# The rank (1 = the top class) of each image's true class: ranks 5 and 6 sit on either side of top-5's edge.
RANKS_BY_HAND = [1, 1, 1, 2, 4, 5, 5, 6, 6, 10]


def test_top1_top5_and_loss_at_ranks_1_5_and_6_are_the_counts_made_by_hand(ranked_model, tmp_path, capsys):
    data = tmp_path / "data"
    targets = [RANKED[rank - 1] for rank in RANKS_BY_HAND]
    for i, (target, image) in enumerate(zip(targets, image_batch(len(targets), 64, 64, seed=3), strict=True)):
        save_png(image, data / RANKED_LABELS[target] / f"{i}.png")
    # the oracle, two ways: counted from the chosen ranks, and torch.topk over the logits the bias makes
    top1, top5 = sum(rank == 1 for rank in RANKS_BY_HAND), sum(rank <= 5 for rank in RANKS_BY_HAND)
    logits = torch.tensor(ranked_bias()).expand(len(targets), -1)
    hits = logits.topk(5, dim=1).indices == torch.tensor(targets)[:, None]
    assert (top1, top5) == (int(hits[:, 0].sum()), int(hits.any(dim=1).sum())) == (3, 7)
    loss = sum(-math.log(ranked_probs()[t]) for t in targets) / len(targets)

    out = tmp_path / "preds.csv"
    args = [str(data), "--model", "tf_efficientnetv2_b0", "--checkpoint", str(ranked_model), "--img-size", "64"]
    result = run_json(capsys, *args, "--batch-size", "3", "--predictions-out", str(out))  # batches of 3, 3, 3, 1
    assert result["class_folders_matched_by"] == "label_names" and result["num_classes"] == 10
    assert result["num_images"] == len(targets)
    assert result["top1"] == pytest.approx(100 * top1 / len(targets))  # 30 %
    assert result["top5"] == pytest.approx(100 * top5 / len(targets))  # 70 %: a top-6 says 90, a top-4 50
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    rows = list(csv.DictReader(out.open()))
    assert [(Path(r["path"]).parent.name, r["target"]) for r in rows] == [
        (RANKED_LABELS[t], str(t))
        for t in sorted(targets)  # ImageFolder's order: class folders sorted
    ]
    best = RANKED[0]  # every image's prediction: the top-ranked class, at its softmax probability
    assert {(r["prediction"], r["prediction_label"]) for r in rows} == {(str(best), RANKED_LABELS[best])}
    assert [float(r["prob"]) for r in rows] == pytest.approx([ranked_probs()[best]] * len(rows), rel=1e-6)
