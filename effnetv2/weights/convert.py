"""Converting a checkpoint between timm's key format and effnetv2's, with a check that nothing changed numerically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import Tensor

from effnetv2.atomic import atomic_path
from effnetv2.errors import CheckpointError
from effnetv2.model import EfficientNetV2
from effnetv2.spec import SPECS, ModelSpec
from effnetv2.weights.key_map import KeyMap
from effnetv2.weights.loading import load_state_dict_into
from effnetv2.weights.reading import PathLike, read_state_dict
from effnetv2.weights.saving import write_state_dict

KeyFormat = Literal["timm", "effnetv2"]


def spec_for(state_dict: Mapping[str, Tensor]) -> ModelSpec:
    """The registered architecture the checkpoint (timm's or effnetv2's keys) is for: the one with exactly its
    tensors and shapes (the classifier and the stem's input channels may differ).

    Architectures that differ only in padding and BatchNorm eps (``efficientnetv2_s`` and ``tf_efficientnetv2_s``)
    have the same tensors: the first registered is returned. Their key maps are the same, so a conversion is too.

    Raises :class:`CheckpointError` when none fits.
    """
    timm_keys = KeyMap.is_timm_format(state_dict)
    for spec in SPECS.values():
        key_map = KeyMap(spec)
        try:
            ours = key_map.state_dict_to_ours(state_dict) if timm_keys else dict(state_dict)
        except KeyError:
            continue
        if {k.rpartition(".")[0] for k in ours} - {"classifier"} != key_map.modules - {"classifier"}:
            continue  # other blocks: no need to build the model to compare shapes
        with torch.device("meta"):  # shapes only: nothing allocated
            expected = EfficientNetV2(spec).state_dict()

        def body(keys):  # the classifier may be any size or absent; BatchNorm counters are optional
            return {k for k in keys if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")}

        fits = body(ours) == body(expected) and all(
            key.startswith("stem.0.") or ours[key].shape == expected[key].shape for key in body(expected)
        )
        if fits:
            return spec
    raise CheckpointError(
        f"not a checkpoint of any EfficientNetV2 effnetv2 knows ({', '.join(SPECS)}): its keys or shapes differ"
    )


def model_for(state_dict: Mapping[str, Tensor], spec: Optional[ModelSpec] = None) -> EfficientNetV2:
    """A classifier shaped like the checkpoint (its architecture, classes and input channels) holding its weights,
    eval mode. ``spec``: the architecture (default: :func:`spec_for` finds it).

    Raises :class:`CheckpointError` if the checkpoint is not one of ``spec``.
    """
    fc = state_dict.get("classifier.weight")
    stem = state_dict.get("conv_stem.weight", state_dict.get("stem.0.weight"))
    if stem is None or stem.dim() != 4:
        raise CheckpointError("no stem convolution (conv_stem / stem.0 weight): not an EfficientNetV2 state dict")
    spec = spec or spec_for(state_dict)
    model = EfficientNetV2(spec, num_classes=0 if fc is None else fc.shape[0], in_chans=stem.shape[1])
    load_state_dict_into(model, state_dict, source="checkpoint")
    return model.eval()


def convert_state_dict(state_dict: Mapping[str, Tensor], to: KeyFormat, spec: Optional[ModelSpec] = None):
    """Rename the keys of a timm- or effnetv2-format state dict to ``to``'s format; tensors are kept as they are.

    ``spec``: the architecture (default: :func:`spec_for` finds it)."""
    spec = spec or spec_for(state_dict)
    key_map = KeyMap(spec)
    try:
        if to == "timm":
            return dict(state_dict) if KeyMap.is_timm_format(state_dict) else key_map.state_dict_to_timm(state_dict)
        if to == "effnetv2":
            return key_map.state_dict_to_ours(state_dict) if KeyMap.is_timm_format(state_dict) else dict(state_dict)
    except KeyError as e:
        raise CheckpointError(f"key {e.args[0]!r} has no counterpart: not an {spec.name} checkpoint") from e
    raise ValueError(f"to must be 'timm' or 'effnetv2', got {to!r}")


def _probe(model: EfficientNetV2) -> Tensor:
    """The model's output on a fixed small input (32 px keeps the check cheap; every layer still runs)."""
    x = torch.randn(1, model.in_chans, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x)


def convert_checkpoint(src: PathLike, dst: PathLike, to: KeyFormat, use_ema: bool = True) -> None:
    """Convert the checkpoint file ``src`` (``.safetensors``/``.pth``/``.bin``) to ``to``'s key format in ``dst``.

    ``dst``'s extension picks the container (``.safetensors`` recommended). The input is validated as a checkpoint
    of a registered architecture first; the written file is read back and must hold the same tensors and give the
    same outputs on a forward pass as the input, before it atomically replaces ``dst`` (otherwise left as it was).
    """
    source = read_state_dict(src, use_ema=use_ema)
    model = model_for(source)
    expected_output = _probe(model)
    converted = convert_state_dict(source, to, model.spec)
    dst = Path(dst)
    with atomic_path(dst) as tmp:
        write_state_dict(converted, tmp, dst.suffix)
        verify_conversion(tmp, converted, to, model, expected_output)


def verify_conversion(
    path: PathLike, expected: Mapping[str, Tensor], to: KeyFormat, model: EfficientNetV2, expected_output: Tensor
) -> None:
    """Check the file at ``path`` holds ``expected`` in ``to``'s keys and, loaded into ``model``, gives
    ``expected_output``."""
    written = read_state_dict(path)
    if KeyMap.is_timm_format(written) != (to == "timm"):
        raise CheckpointError(f"{path}: written in the wrong key format (expected {to})")
    if written.keys() != expected.keys():
        raise CheckpointError(f"{path}: keys differ from the input's after conversion")
    changed = [k for k, v in expected.items() if v.dtype != written[k].dtype or not torch.equal(v, written[k])]
    if changed:
        raise CheckpointError(f"{path}: tensors differ from the input: {changed[:8]}")
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.zero_()  # so the forward check cannot pass on the weights already in the model
    load_state_dict_into(model, written, source=str(path))
    if not torch.equal(_probe(model), expected_output):
        raise CheckpointError(f"{path}: the converted weights give different outputs from the input's")
