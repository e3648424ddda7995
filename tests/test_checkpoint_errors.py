"""Bad checkpoint files fail loudly, naming the file, and never run code or change the model."""

from __future__ import annotations

import pickle
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

import effnetv2


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_file(model, hub_folder, tmp_path, name):
    data = (hub_folder / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(effnetv2.CheckpointError, match="truncated") as err:
        effnetv2.load_checkpoint(model, path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_random_bytes(model, tmp_path, suffix):
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(1)).byte().numpy().tobytes()
    )
    with pytest.raises(effnetv2.CheckpointError, match="not a checkpoint file") as err:
        effnetv2.load_checkpoint(model, path)
    assert str(path) in str(err.value)


class WritesMarker:
    """Unpickling this calls ``exec``: a stand-in for a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_runs_nothing(model, tmp_path, writer):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"classifier.weight": WritesMarker(marker)}
    if writer == "torch.save":
        torch.save(dict(payload, **{"classifier.bias": torch.zeros(1000)}), path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(
        effnetv2.CheckpointError, match=r"refused to unpickle.*'exec'.*Nothing from it was executed"
    ) as err:
        effnetv2.load_checkpoint(model, path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    # The payload is live: an unsafe load runs it.
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.read_text() == "pwned"


@pytest.fixture(scope="module")
def victim():
    return effnetv2.create_model("efficientnetv2_rw_m")


def other_architecture(name):
    torch.manual_seed(0)
    return timm.create_model(name).state_dict()


@pytest.mark.parametrize(
    "arch, expected",
    [
        (
            "efficientnetv2_rw_s",
            r"(?s)missing keys: stages\.0\.2\..*shape mismatches: stages\.0\.0\.expand\.1\.bias: "
            r"checkpoint \(24,\) vs model \(32,\)",
        ),
        ("resnet18", r"(?s)missing keys: stem\.0\.weight.*unexpected keys: .*layer1\.0\."),
    ],
)
def test_another_architecture_is_refused_and_leaves_the_model_unchanged(victim, tmp_path, arch, expected):
    path = tmp_path / f"{arch}.safetensors"
    save_file(other_architecture(arch), path)
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    with pytest.raises(effnetv2.CheckpointError, match=expected) as err, warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "classifier not loaded" warning for a refused checkpoint
        effnetv2.load_checkpoint(victim, path)
    assert str(path) in str(err.value)
    after = victim.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_missing_file(model, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope.pth")):
        effnetv2.load_checkpoint(model, tmp_path / "nope.pth")
