"""Loading a checkpoint into a model: translate keys, adapt as timm does for pretrained weights, validate, load.

Everything is checked before the first tensor is copied, so a failed load leaves the model exactly as it was.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from effnetv2.errors import CheckpointError
from effnetv2.weights.key_map import KeyMap
from effnetv2.weights.reading import PathLike, read_state_dict

_SHOW = 8  # how many offending keys an error message lists


def adapt_stem_weight(weight: Tensor, in_chans: int) -> Tensor:
    """timm's ``adapt_input_conv``: RGB weights for another channel count.

    1 channel: the sum over RGB. N > 3: RGB repeated cyclically to N channels, scaled by 3 / N.
    """
    dtype = weight.dtype
    weight = weight.float()
    if in_chans == 1:
        weight = weight.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_chans / 3)
        weight = weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)
    return weight.to(dtype)


def _to_our_keys(state_dict: Mapping[str, Tensor], key_map: KeyMap) -> tuple[dict[str, Tensor], list[str]]:
    if not KeyMap.is_timm_format(state_dict):
        return dict(state_dict), []
    ours, unknown = {}, []
    for key, value in state_dict.items():
        try:
            ours[key_map.to_ours(key)] = value
        except KeyError:
            unknown.append(key)
    return ours, unknown


def _adapt(
    state_dict: dict[str, Tensor], expected: Mapping[str, Tensor], source: str
) -> tuple[dict[str, Tensor], list[str]]:
    """Pretrained-style adaptation: drop head parts the model lacks or resized, adapt the stem, fill counters.

    Returns the adapted state dict and the warnings to give if it then loads.
    """
    notes = []
    has_head = "head.0.weight" in expected
    has_classifier = "classifier.weight" in expected
    for key in list(state_dict):
        if (not has_head and key.startswith(("head.", "classifier."))) or (
            not has_classifier and key.startswith("classifier.")
        ):
            del state_dict[key]  # features_only / num_classes=0: the model has no such part

    ckpt_fc, model_fc = state_dict.get("classifier.weight"), expected.get("classifier.weight")
    if ckpt_fc is not None and model_fc is not None and ckpt_fc.shape != model_fc.shape:
        # Keep the model's own (freshly initialised) classifier.
        state_dict["classifier.weight"] = expected["classifier.weight"]
        state_dict["classifier.bias"] = expected["classifier.bias"]
        notes.append(
            f"{source}: classifier not loaded: the checkpoint's is {tuple(ckpt_fc.shape)} (classes, features), "
            f"the model's {tuple(model_fc.shape)}; it keeps its fresh initialisation"
        )

    stem, model_stem = state_dict.get("stem.0.weight"), expected["stem.0.weight"]
    if stem is not None and stem.dim() == 4 and stem.shape[1] == 3 and model_stem.shape[1] != 3:
        state_dict["stem.0.weight"] = adapt_stem_weight(stem, model_stem.shape[1])

    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = value.clone()  # optional in timm checkpoints
    return state_dict, notes


def _problems(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor], unknown: list[str], strict: bool):
    missing = [k for k in expected if k not in state_dict] if strict else []
    unexpected = (unknown + [k for k in state_dict if k not in expected]) if strict else []
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    lines = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
            lines.append(f"  {len(items)} {title}: {', '.join(items[:_SHOW])}{more}")
    return lines


def load_state_dict_into(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True, source: str = "state dict"
) -> None:
    """Load a timm- or effnetv2-format state dict into ``model`` with timm's pretrained-style adaptation.

    A classifier of another shape is skipped with a warning; a 3-channel stem is adapted to the model's
    ``in_chans``; head weights are ignored by ``features_only`` models. Any other missing, unexpected or
    mis-shaped key raises :class:`CheckpointError` (``strict=False`` tolerates missing/unexpected ones) and
    the model is left untouched.
    """
    expected = model.state_dict()
    ours, unknown = _to_our_keys(state_dict, KeyMap(model.spec))
    ours, notes = _adapt(ours, expected, source)
    problems = _problems(ours, expected, unknown, strict)
    if problems:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}; is it an efficientnetv2_rw_m checkpoint?\n"
            + "\n".join(problems)
        )
    if not strict:
        ours = {k: v for k, v in ours.items() if k in expected}
    with torch.no_grad():
        model.load_state_dict(ours, strict=strict)
    for note in notes:  # only for a checkpoint that loaded: a refused one must not look half-loaded
        warnings.warn(note, stacklevel=2)


def load_checkpoint(model: nn.Module, checkpoint_path: PathLike, use_ema: bool = True, strict: bool = True) -> None:
    """Load a timm- or effnetv2-format ``.safetensors``/``.pth``/``.bin`` file into an existing model.

    Pickles are opened with ``weights_only=True`` only. On any error the model is unchanged.
    """
    state_dict = read_state_dict(checkpoint_path, use_ema=use_ema)
    load_state_dict_into(model, state_dict, strict=strict, source=str(checkpoint_path))
