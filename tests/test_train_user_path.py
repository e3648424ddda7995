"""`effnetv2 train` as a user meets it (issue 27): --resume needs nothing retyped, progress reads as text, the run
says what it wrote and where its model is, --save-state none, a fine-tuned model that says what it is, the offline
--pretrained hint, the --workers default, and a .gitignore that covers the tour's outputs.

A small model (tf_efficientnetv2_b0 from random weights) at 32 px keeps each run to seconds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import import_script
from test_train_cli import _assert_same_tensors, _error, _rows, _state, make_image_folder

import effnetv2
from effnetv2.cli import build_parser, main
from effnetv2.cli.options import default_workers
from effnetv2.train.reporting import closing_line, epoch_line
from effnetv2.train.runner import STOP_AFTER_ENV

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--model", "tf_efficientnetv2_b0", "--img-size", "32", "--workers", "0"]
# options that differ from the defaults: a resume that dropped any of them would train differently
RECIPE = ["--batch-size", "2", "--lr", "0.02", "--warmup-epochs", "0.5", "--ema", "0.9", "--drop-path", "0.1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("images"), train=2, val=2)


def _train(capsys, *argv) -> tuple[str, str]:
    assert main(["train", *map(str, argv)]) == 0
    out = capsys.readouterr()
    return out.out, out.err


# ---- item 3: --resume reads the options from the run folder ----


def test_resume_alone_continues_with_the_runs_options(data, tmp_path, monkeypatch, capsys):
    full, split = tmp_path / "full", tmp_path / "split"
    _train(capsys, data, "-o", full, "--epochs", "2", *SMALL, *RECIPE, "--mixup", "0.2")
    monkeypatch.setenv(STOP_AFTER_ENV, "1")
    _train(capsys, data, "-o", split, "--epochs", "2", *SMALL, *RECIPE, "--mixup", "0.2")
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert _state(split)["epoch"] == 1

    _train(capsys, data, "-o", split, "--resume")  # nothing retyped: model, size, recipe and epochs are the run's
    a, b = _state(full), _state(split)
    assert (b["epoch"], b["epochs"]) == (2, 2)
    for part in ("model", "ema", "optimizer", "scheduler"):
        _assert_same_tensors(a[part], b[part], part)
    assert (b["args"]["batch_size"], b["args"]["lr"], b["args"]["model"]) == (2, 0.02, "tf_efficientnetv2_b0")

    # an option given explicitly is compared, even when it is the default (32) and the run's differs (2)
    err = _error(capsys, ["train", str(data), "-o", str(split), "--resume", "--epochs", "3", "--batch-size", "32"])
    assert "--batch-size: the run in" in err and "started with 2, this one has 32; leave it out" in err
    # the run's own value, given again, is fine; a larger --epochs extends with everything else the run's
    _train(capsys, data, "-o", split, "--resume", "--epochs", "3", "--batch-size", "2")
    state = _state(split)
    assert (state["epoch"], state["epochs"], state["args"]["ema"]) == (3, 3, 0.9)
    assert [r["epoch"] for r in _rows(split)] == [1, 2, 3]


def test_the_parser_notes_the_options_given_explicitly():
    parse = build_parser().parse_args
    args = parse(["train", "d", "-o", "x", "--resume", "--batch", "32", "--ema", "--tensorboard-dir", "tb"])
    assert args.given == {"data", "output", "resume", "batch_size", "ema", "tensorboard_dir"}  # "--batch": abbreviated
    assert args.batch_size == 32 and args.epochs == 10  # the defaults are still there for a new run
    assert parse(["train", "d", "-o", "x", "--lr", "0.01"]).given == {"data", "output", "lr"}  # the default value

    from effnetv2.cli.train import _given

    given = _given(parse(["train", "d", "-o", "x", "--pretrained", "--tensorboard-dir", "tb"]))
    # the starting weights are one choice; device, workers and the progress format are always this command's
    assert {"pretrained", "checkpoint", "tensorboard", "device", "workers", "log_format"} <= given
    assert "epochs" not in given and "model" not in given


# ---- item 4: readable progress, the JSON rows behind --log-format json, a closing line ----


def test_progress_lines_and_the_closing_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    stdout, _ = _train(capsys, data, "-o", out, "--epochs", "2", *SMALL, "--batch-size", "2")
    rows = _rows(out)  # metrics.jsonl is written whatever the progress format
    lines = stdout.splitlines()
    assert lines[0].startswith("effnetv2: writes up to ~") and str(out) in lines[0]
    best = max(rows, key=lambda r: r["val_top1"])["epoch"]  # the first of the highest
    assert lines[1:] == [
        epoch_line(rows[0], 2, True, 2),
        epoch_line(rows[1], 2, rows[1]["val_top1"] > rows[0]["val_top1"], 2),
        closing_line(rows, out / "model.safetensors"),
    ]
    assert re.fullmatch(
        r"epoch 1/2  train loss \d+\.\d{3} top-1 \d+\.\d %  val loss \d+\.\d{3} top-1 \d+\.\d %  lr \S+  "
        r"\d+\.\d img/s  \(best\)",
        lines[1],
    )
    assert (
        lines[-1]
        == f"best: epoch {best}, val_top1 {rows[best - 1]['val_top1']:.1f} %; model in {out}/model.safetensors"
    )

    json_out = tmp_path / "json"
    stdout, err = _train(
        capsys, data, "-o", json_out, "--epochs", "2", *SMALL, "--batch-size", "2", "--log-format", "json"
    )
    assert [json.loads(line) for line in stdout.splitlines()] == _rows(json_out)  # stdout: the JSON rows alone
    assert err.splitlines()[-1].startswith("best: epoch ")


def test_epoch_line_shows_top5_only_above_five_classes():
    row = dict(epoch=2, train_loss=1.2345, train_top1=45.0, val_loss=1.1, val_top1=50.0, val_top5=90.0, lr=0.00932,
               images_per_s=12.34)  # fmt: skip
    assert epoch_line(row, 10, True, 10) == (
        "epoch 2/10  train loss 1.234 top-1 45.0 %  val loss 1.100 top-1 50.0 % top-5 90.0 %  lr 0.00932  "
        "12.3 img/s  (best)"
    )
    assert "top-5" not in epoch_line(row, 10, False, 5) and "(best)" not in epoch_line(row, 10, False, 5)


# ---- item 9: what a run writes, and --save-state none ----


def _megabytes(text: str, name: str) -> int:
    return int(re.search(rf"{re.escape(name)} (\d+) MB", text).group(1))


def test_the_run_says_what_it_writes_and_save_state_none_keeps_no_state(data, tmp_path, capsys):
    out = tmp_path / "last"
    stdout, _ = _train(capsys, data, "-o", out, "--epochs", "1", *SMALL, "--batch-size", "2", "--ema", "0.9")
    note = stdout.splitlines()[0]
    for name in ("last_state.pt", "model.safetensors"):  # the estimate from the tensors, rounded to MB
        assert abs(_megabytes(note, name) - (out / name).stat().st_size / 1e6) < 1, (name, note)

    none = tmp_path / "none"
    stdout, _ = _train(capsys, data, "-o", none, "--epochs", "1", *SMALL, "--batch-size", "2", "--save-state", "none")
    assert "no resume state (--save-state none)" in stdout.splitlines()[0]
    assert sorted(p.name for p in none.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "curves.png",
        "metrics.jsonl",
        "model.safetensors",
    ]
    err = _error(capsys, ["train", str(data), "-o", str(none), "--resume", "--epochs", "2"])
    assert "kept no resume state" in err and "--save-state none" in err and f"--checkpoint {none}" in err
    err = _error(capsys, ["train", str(data), "-o", str(none), "--epochs", "1", *SMALL])  # not overwritten either
    assert f"{none} already holds a training run" in err
    assert "--resume --save-state none" in _error(
        capsys, ["train", str(data), "-o", str(out), "--resume", "--save-state", "none"]
    )
    # the Python API refuses it as well, before anything is read or written
    from effnetv2.train.run_folder import TrainError
    from effnetv2.train.runner import TrainOptions, fit

    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(TrainError, match="--resume --save-state none"):
        fit(TrainOptions(data=str(data), output=str(out), resume=True, save_state="none"))
    assert sorted(p.name for p in out.iterdir()) == before


# ---- item 5: a fine-tuned model says what it is ----


def test_a_fine_tuned_demo_model_no_longer_calls_itself_random(data, tmp_path, capsys):
    demo = tmp_path / "demo-model"  # labelled as scripts/make_demo_checkpoint.py labels its model
    description = import_script("make_demo_checkpoint").DESCRIPTION
    model = effnetv2.create_model("tf_efficientnetv2_b0", num_classes=3)
    model.pretrained_cfg = {**model.pretrained_cfg, "tag": "random_demo", "description": description}
    effnetv2.save_pretrained(model, demo)

    run = tmp_path / "run"
    _train(capsys, data, "--checkpoint", demo, "-o", run, "--epochs", "1", *SMALL, "--batch-size", "2")
    config = json.loads((run / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert "tag" not in cfg and "RANDOM" not in cfg["description"]
    assert cfg["description"].startswith(f"fine-tuned with effnetv2 train: epoch 1 of 1 on {data} (4 training images")
    training = config["training"]
    assert training["start"] == {
        "weights": "checkpoint",
        "path": str(demo),
        "tag": "random_demo",
        "description": description,
    }
    (row,) = _rows(run)
    assert (training["data"], training["train_images"], training["val_images"], training["classes"]) == (
        str(data),
        4,
        4,
        2,
    )
    assert (training["epochs"], training["epoch"], training["img_size"], training["val_top1"]) == (
        1,
        1,
        32,
        row["val_top1"],
    )

    assert main(["info", "--checkpoint", str(run)]) == 0
    table = capsys.readouterr().out
    assert (
        f"trained       epoch 1 of 1 on {data} (4 training images, 2 classes), from checkpoint {demo} (random_demo)"
        in table
    )
    cfg_lines = table.split("pretrained config")[1].splitlines()
    assert not [line for line in cfg_lines if line.split()[:1] == ["tag"]] and "RANDOM" not in table
    assert "  description       fine-tuned with effnetv2 train: epoch 1 of 1" in table
    assert main(["info", "--checkpoint", str(run), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["training"] == training
    assert main(["info", "--checkpoint", str(demo), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["training"] is None  # not trained by effnetv2 train


def test_starting_weights_of_a_pretrained_and_a_random_start():
    from effnetv2.train.provenance import describe_start, starting_weights

    cfg = {"tag": "in1k", "hf_hub_id": "timm/tf_efficientnetv2_b0.in1k"}
    start = starting_weights("tf_efficientnetv2_b0.in1k", True, None, cfg)
    assert start == {"weights": "pretrained", "model": "tf_efficientnetv2_b0.in1k", "tag": "in1k"}
    assert describe_start(start) == "the pretrained tf_efficientnetv2_b0.in1k weights"
    assert starting_weights("tf_efficientnetv2_b0.in1k", False, None, cfg) == {
        "weights": "random",
        "model": "tf_efficientnetv2_b0.in1k",
    }  # the tag named weights that were not loaded


# ---- item 6: the offline --pretrained hint, the --workers default ----


def test_pretrained_offline_gives_the_command_line_hint(data, tmp_path, capsys):
    # offline (conftest), and no test puts b1 weights in the session's Hub cache (test_family puts b0 there)
    argv = ["train", str(data), "-o", str(tmp_path / "run"), "--model", "tf_efficientnetv2_b1.in1k", "--pretrained"]
    err = _error(capsys, [*argv, "--img-size", "32", "--workers", "0"])
    assert err.startswith(
        "effnetv2: error: no pretrained weights for tf_efficientnetv2_b1.in1k: pass --checkpoint PATH"
    )
    assert "checkpoint_path=" not in err and "pretrained_cfg_overlay=" not in err


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 64])
def test_workers_default_follows_the_cpus(monkeypatch, cpus):
    monkeypatch.setattr("effnetv2.cli.options.available_cpus", lambda: cpus)
    assert build_parser().parse_args(["train", "d", "-o", "x"]).workers == default_workers()
    assert build_parser().parse_args(["predict"]).workers == default_workers()
    assert default_workers() == (0 if cpus <= 2 else min(4, cpus - 1))  # BENCHMARKS.md, "Data-loading workers"


# ---- item 9: the tour's outputs are ignored by git ----


def _tour_outputs() -> set[str]:
    """What README's tour writes: the folders its scripts make and the -o/--output of its commands."""
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## The 5-minute tour", 1)[1].split("\n## ", 1)[0]
    commands = [
        line.split("#")[0]
        for block in re.findall(r"```(?:bash|console)\n(.*?)```", tour, re.S)
        for line in block.splitlines()
    ]
    outputs = set()
    for command in commands:
        words = command.lstrip("$ ").split()
        outputs |= {words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-o", "--output")}
        if len(words) > 2 and words[0] == "python" and words[1].startswith("scripts/make_demo"):
            outputs.add(words[2])
    return outputs


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_gitignore_covers_the_tours_outputs():
    outputs = _tour_outputs()
    assert {"demo-model", "demo-data", "demo.onnx", "runs/demo"} <= outputs  # the parse found the tour
    for name in sorted(outputs):
        done = subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=ROOT, check=False)
        assert done.returncode == 0, f"{name} is not in .gitignore"
    tracked = subprocess.run(["git", "ls-files", "-ci", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout == ""  # no tracked file is ignored
