"""Loading a checkpoint into a model: translate keys, validate (strict, or adapting as timm does for pretrained
weights when asked), load.

Everything is checked before the first tensor is copied, so a failed load leaves the model exactly as it was.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from effnetv2.errors import CheckpointError, ClassifierNotLoadedWarning
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


def _is_head_key(key: str) -> bool:
    return key.startswith(("head.", "classifier."))


def _drop_absent_head(state_dict: dict[str, Tensor], expected: Mapping[str, Tensor], adapt: bool) -> None:
    """Drop the head parts the model does not have.

    A ``features_only`` model (no ``head.*`` keys) ignores a classifier checkpoint's head and classifier even
    when strict: it is the same network without them, and nothing is guessed. (timm's strict ``load_checkpoint``
    refuses them as unexpected keys; its ``create_model(features_only=True, pretrained=True)`` drops them.) A
    classifier model built with ``num_classes=0`` drops the classifier only when ``adapt``.
    """
    has_head = "head.0.weight" in expected
    has_classifier = "classifier.weight" in expected
    for key in list(state_dict):
        if (not has_head and _is_head_key(key)) or (adapt and not has_classifier and key.startswith("classifier.")):
            del state_dict[key]


def _adapt(
    state_dict: dict[str, Tensor], expected: Mapping[str, Tensor], source: str
) -> tuple[dict[str, Tensor], list[ClassifierNotLoadedWarning], set[str]]:
    """Pretrained-style adaptation: keep the model's classifier when resized, adapt the stem to ``in_chans``.

    Returns the adapted state dict, the warnings to give if it then loads, and the keys that now hold the
    model's own tensors.
    """
    notes: list[ClassifierNotLoadedWarning] = []
    kept: set[str] = set()
    ckpt_fc, model_fc = state_dict.get("classifier.weight"), expected.get("classifier.weight")
    if ckpt_fc is not None and model_fc is not None and ckpt_fc.shape != model_fc.shape:
        # Keep the model's own (freshly initialised) classifier.
        for key in ("classifier.weight", "classifier.bias"):
            state_dict[key] = expected[key]
            kept.add(key)
        notes.append(
            ClassifierNotLoadedWarning(
                f"{source}: classifier not loaded: the checkpoint's is {tuple(ckpt_fc.shape)} (classes, features), "
                f"the model's {tuple(model_fc.shape)}; it keeps its fresh initialisation",
                checkpoint_classes=ckpt_fc.shape[0],
                model_classes=model_fc.shape[0],
            )
        )

    stem, model_stem = state_dict.get("stem.0.weight"), expected["stem.0.weight"]
    if stem is not None and stem.dim() == 4 and stem.shape[1] == 3 and model_stem.shape[1] != 3:
        state_dict["stem.0.weight"] = adapt_stem_weight(stem, model_stem.shape[1])
    return state_dict, notes, kept


def _fill_counters(state_dict: dict[str, Tensor], expected: Mapping[str, Tensor]) -> set[str]:
    """BatchNorm's ``num_batches_tracked`` is optional (timm's checkpoints sometimes omit it): keep the model's."""
    filled = {k for k in expected if k.endswith("num_batches_tracked") and k not in state_dict}
    for key in filled:
        state_dict[key] = expected[key]
    return filled


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating"
    if dtype.is_complex:
        return "complex"
    return "boolean" if dtype == torch.bool else "integer"


def _listed(title: str, items: list[str]) -> str:
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"  {len(items)} {title}: {', '.join(items[:_SHOW])}{more}"


def _problems(
    state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor], unknown: list[str], strict: bool
) -> list[str]:
    missing = [k for k in expected if k not in state_dict] if strict else []
    unexpected = (unknown + [k for k in state_dict if k not in expected]) if strict else []
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    # load_state_dict would cast an integer tensor into a float parameter without a word (same byte width:
    # same file size), so the kind of number must match: float for float, integer for integer.
    wrong_kind = [
        f"{k}: checkpoint {v.dtype} vs model {expected[k].dtype}"
        for k, v in state_dict.items()
        if k in expected and _kind(v.dtype) != _kind(expected[k].dtype)
    ]
    lines = []
    for title, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", mismatched),
        ("dtype mismatches (not the model's kind of number)", wrong_kind),
    ):
        if items:
            lines.append(_listed(title, items))
    return lines


def _non_finite(state_dict: Mapping[str, Tensor], expected: Mapping[str, Tensor], skip: set[str]) -> list[str]:
    """The keys (in the model's order) whose tensors hold NaN or Inf."""
    return [
        k
        for k in expected
        if k in state_dict
        and k not in skip
        and (state_dict[k].is_floating_point() or state_dict[k].is_complex())
        and not bool(torch.isfinite(state_dict[k]).all())
    ]


def _adaptable(checkpoint: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> bool:
    """Whether ``adapt=True`` would have resolved a classifier or stem mismatch."""
    fc, stem = checkpoint.get("classifier.weight"), checkpoint.get("stem.0.weight")
    fc_differs = fc is not None and "classifier.weight" in expected and fc.shape != expected["classifier.weight"].shape
    fc_absent = fc is not None and "classifier.weight" not in expected and "head.0.weight" in expected
    model_stem = expected["stem.0.weight"]
    stem_differs = stem is not None and stem.dim() == 4 and stem.shape[1] == 3 and model_stem.shape[1] != 3
    return fc_differs or fc_absent or stem_differs


def _architecture_name(model: nn.Module) -> str:
    return getattr(getattr(model, "spec", None), "name", "") or "EfficientNetV2"


def load_state_dict_into(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    strict: bool = True,
    source: str = "state dict",
    adapt: bool = False,
) -> None:
    """Load a timm- or effnetv2-format state dict into ``model``; on any error the model is unchanged.

    Any missing, unexpected or mis-shaped key, a tensor of another kind of number than the model's (an integer
    tensor for a float parameter), or a NaN/Inf weight raises :class:`CheckpointError` naming the keys.
    ``strict=False`` tolerates missing and unexpected keys only. BatchNorm's ``num_batches_tracked`` may be
    absent; a ``features_only`` model ignores the checkpoint's head and classifier.

    ``adapt=True`` adds timm's pretrained-style adaptation, as ``create_model`` uses it: a classifier of another
    shape is skipped with a warning (the model keeps its own), ``num_classes=0`` drops it, and a 3-channel stem
    is adapted to the model's ``in_chans``.
    """
    expected = model.state_dict()
    ours, unknown = _to_our_keys(state_dict, KeyMap(model.spec))
    original = dict(ours)
    _drop_absent_head(ours, expected, adapt)
    notes, kept = [], set()
    if adapt:
        ours, notes, kept = _adapt(ours, expected, source)
    kept |= _fill_counters(ours, expected)
    problems = _problems(ours, expected, unknown, strict)
    if problems:
        hint = ""
        if not adapt and _adaptable(original, expected):
            hint = (
                "\n  (a classifier of another size or none, and a 3-channel stem for another in_chans, are adapted "
                "only on request: load_checkpoint(..., adapt=True), or create_model(..., checkpoint_path=...))"
            )
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}; is it an {_architecture_name(model)} checkpoint?\n"
            + "\n".join(problems)
            + hint
        )
    if not strict:
        ours = {k: v for k, v in ours.items() if k in expected}
    # Refused rather than warned about: a NaN or Inf weight can only make NaN or Inf outputs.
    bad = _non_finite(ours, expected, kept)
    if bad:
        raise CheckpointError(f"{source}: NaN or Inf values in the weights; refused\n" + _listed("keys", bad))
    with torch.no_grad():
        model.load_state_dict(ours, strict=strict)
    for note in notes:  # only for a checkpoint that loaded: a refused one must not look half-loaded
        warnings.warn(note, stacklevel=2)


def load_checkpoint(
    model: nn.Module, checkpoint_path: PathLike, use_ema: bool = True, strict: bool = True, adapt: bool = False
) -> None:
    """Load a timm- or effnetv2-format ``.safetensors``/``.pth``/``.bin`` file into an existing model.

    Strict as timm's ``load_checkpoint``: any missing, unexpected or mis-shaped key raises
    :class:`CheckpointError` naming the keys (``strict=False``: mis-shaped ones only), as do integer tensors for
    float parameters and NaN/Inf weights. ``num_batches_tracked`` may be absent, and a ``features_only`` model
    ignores the checkpoint's head and classifier (timm would refuse them as unexpected keys).
    ``adapt=True`` opts in to the pretrained-style adaptation ``create_model`` applies (a classifier of another
    size kept fresh with a warning, the stem adapted to ``in_chans``). Pickles are opened with
    ``weights_only=True`` only. On any error the model is unchanged.
    """
    state_dict = read_state_dict(checkpoint_path, use_ema=use_ema)
    load_state_dict_into(model, state_dict, strict=strict, source=str(checkpoint_path), adapt=adapt)
