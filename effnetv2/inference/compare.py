"""The one numeric comparison: a candidate judged against an fp64 copy of the eager model on natural inputs.

Every number this project judges goes through here: a verified export, a BatchNorm-folded copy, a bfloat16 or int8
copy, the benchmark scripts and the tests. A *candidate* (the file's runtime, the folded copy, ...) and the eager
model in its own dtype (usually fp32) are both measured against a float64 copy of the eager model on the same
natural-looking inputs (:func:`natural_images`: the packaged sample photo and crops of it, and smooth fields). The
candidate is accepted when

    error(candidate) <= FACTOR * error(eager model in the candidate's precision) + FLOOR_ROUNDOFFS * u(precision)

where ``error`` is the largest relative difference from fp64 (:func:`relative_difference`) and ``u`` the unit
roundoff of the candidate's precision (:data:`UNIT_ROUNDOFF`). Why this shape:

- A trained network amplifies some input directions: how far even fp32 lands from fp64 depends on the weights,
  the inputs and the CPU's kernels (rw_m on white noise: 25x). The eager model's own error on
  the same inputs, on the same machine, is the yardstick; a fixed tolerance tuned on one CPU is not.
- A candidate computing in another precision is held to the eager model computed in that precision (a bfloat16
  copy to the model cast to bfloat16): rounding error scales with the precision, and how much of it reaches the
  outputs depends on the network, so the yardstick is measured, not predicted. int8 has no eager counterpart: its
  error is reported (``limit=None``), or judged against a baseline the caller measured (a compiled int8 graph
  against the uncompiled one's error).
- ``FACTOR`` (4) leaves room for a copy that rounds in other places (BatchNorm folded into the weights: 1.2-1.6x
  measured, fp32 and bfloat16; onnxruntime: 0.8-1.3x). A wrong graph is far outside it: BatchNorm eps dropped from
  a fold moves rw_m's logits 1000x its fp32 error, tf_efficientnetv2_b0's (eps 1e-3) 10x its bfloat16 error.
- The floor covers an eager error that is tiny by luck (a few ulps of the candidate's precision).

White noise is not a natural input: nothing here judges on it (a trained net amplifies it).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Outputs = Union[Tensor, Sequence[Tensor]]
Size = Union[int, tuple[int, int]]

# Unit roundoff (half the distance from 1 to the next number) of each precision a candidate computes in.
UNIT_ROUNDOFF: dict[torch.dtype, float] = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
    torch.int8: 2.0**-8,  # 256 levels per tensor: quantization error relative to the range
}
FACTOR = 4.0  # a candidate may be this many times as far from fp64 as the eager model in the same precision
FLOOR_ROUNDOFFS = 4.0  # plus this many unit roundoffs of the candidate's precision
CLEAR_MARGIN = 0.2  # an fp64 top-1 probability this far above the second: an image with a clear answer
BATCH = 8  # images per forward pass of the references
Z95 = 1.959963984540054  # the standard normal's two-sided 95 % quantile


def relative_difference(actual: Tensor, expected: Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of ``expected``, in float64.

    ``inf`` when ``actual`` holds NaN or infinite values. Raises ``ValueError`` when the shapes differ.
    """
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} against {tuple(expected.shape)}")
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    if not a.isfinite().all():
        return math.inf
    return ((a - e).abs().max() / e.abs().max().clamp_min(1e-300)).item()


def largest_relative_difference(actual: Sequence[Tensor], expected: Sequence[Tensor]) -> float:
    """:func:`relative_difference` of each output pair, the largest; ``ValueError`` when the outputs differ in number
    or shape."""
    if len(actual) != len(expected):
        raise ValueError(f"{len(actual)} outputs against {len(expected)}")
    return max(relative_difference(a, e) for a, e in zip(actual, expected, strict=True))


def agreement_interval(agreeing: int, count: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval (95 % by default) of a share ``agreeing / count``: how many answers a count of images can
    decide. 127 of 128 is 99.2 %, and the interval (95.7 %, 99.9 %) says that 128 images cannot tell 99 % from 96 %.
    Raises ``ValueError`` unless ``0 <= agreeing <= count`` and ``count > 0``."""
    if not 0 <= agreeing <= count or count <= 0:
        raise ValueError(f"an agreement interval needs 0 <= agreeing <= count and count > 0, got {agreeing} of {count}")
    share, z2 = agreeing / count, z * z / count
    centre = (share + z2 / 2) / (1 + z2)
    half = z / (1 + z2) * math.sqrt(share * (1 - share) / count + z2 / (4 * count))
    # at 0 and count the interval touches the bound exactly (rounding would leave it a hair inside)
    return (0.0 if agreeing == 0 else centre - half, 1.0 if agreeing == count else centre + half)


def describe_agreement(share: float, count: int) -> str:
    """``99.2 % of 128 (95 %: 95.7-99.9 %)``: a share of ``count`` images with its :func:`agreement_interval`."""
    if count == 0:
        return "none"
    low, high = agreement_interval(round(share * count), count)
    return f"{100 * share:.1f} % of {count} (95 %: {100 * low:.1f}–{100 * high:.1f} %)"


# --------------------------------------------------------------------------------------------------------------
# Natural-looking inputs


def smooth_images(n: int, size: Size, seed: int = 0, channels: int = 3) -> Tensor:
    """Smooth random colour fields with finer detail, roughly unit variance, as normalised photos have.

    Low-resolution noise upsampled (grids relative to the image size, so they look alike at every resolution).
    """
    h, w = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, channels, max(h // 32, 2), max(w // 32, 2), generator=g)
    middle = torch.randn(n, channels, max(h // 8, 2), max(w // 8, 2), generator=g)
    fine = torch.randn(n, channels, h, w, generator=g)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    img = img + 0.5 * F.interpolate(middle, size=(h, w), mode="bilinear", align_corners=False)
    return img + 0.05 * fine


def photo_crops(n: int, size: Size, seed: int = 0) -> Tensor:
    """``n`` crops of the packaged sample photo as RGB in [0, 1], (n, 3, H, W): the whole photo first, then random
    boxes of 40-90 % of its sides, every other one mirrored."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    from effnetv2.data.assets import sample_image_path

    h, w = (size, size) if isinstance(size, int) else size
    with Image.open(sample_image_path()) as file:
        photo = TF.pil_to_tensor(file.convert("RGB")).float() / 255
    g = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(n):
        if i == 0:
            top, left, height, width = 0, 0, photo.shape[1], photo.shape[2]
        else:
            scale = 0.4 + 0.5 * torch.rand((), generator=g).item()
            height, width = round(photo.shape[1] * scale), round(photo.shape[2] * scale)
            top = int(torch.randint(0, photo.shape[1] - height + 1, (), generator=g))
            left = int(torch.randint(0, photo.shape[2] - width + 1, (), generator=g))
        crop = TF.resized_crop(photo, top, left, height, width, [h, w], antialias=True)
        crops.append(crop.flip(-1) if i % 2 else crop)
    return torch.stack(crops).clamp(0, 1)


def natural_images(
    n: int,
    size: Size,
    channels: int = 3,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    seed: int = 0,
) -> Tensor:
    """``n`` natural-looking normalised images: crops of the sample photo (even positions, the whole photo first)
    and smooth fields (odd positions). Channel ``c`` of a photo is its RGB channel ``c % 3``; ``mean``/``std`` (one
    value or one per channel) normalise the photos as a model's eval transform would."""
    photos = photo_crops((n + 1) // 2, size, seed=seed)
    photos = photos[:, [c % 3 for c in range(channels)]]
    mean_t = torch.tensor([mean[c % len(mean)] for c in range(channels)])[:, None, None]
    std_t = torch.tensor([std[c % len(std)] for c in range(channels)])[:, None, None]
    photos = (photos - mean_t) / std_t
    fields = smooth_images(n // 2, size, seed=seed + 1, channels=channels)
    images = torch.empty(n, channels, *photos.shape[-2:])
    images[0::2], images[1::2] = photos, fields
    return images


def model_natural_images(model: nn.Module, n: int, size: Size, seed: int = 0) -> Tensor:
    """:func:`natural_images` normalised with ``model.pretrained_cfg``'s mean and std, with its input channels."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels = int(getattr(model, "in_chans", 3))
    return natural_images(
        n, size, channels, cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225)), seed
    )


# --------------------------------------------------------------------------------------------------------------
# References and the judgement


def as_list(outputs: Outputs) -> list[Tensor]:
    return [outputs] if isinstance(outputs, Tensor) else list(outputs)


def run_batched(fn: Callable[[Tensor], Outputs], images: Tensor, batch: int = BATCH) -> list[Tensor]:
    """``fn`` over ``images`` in batches of ``batch``, outputs concatenated (one tensor per output)."""
    runs = [as_list(fn(images[i : i + batch])) for i in range(0, images.shape[0], batch)]
    return [torch.cat([run[k].detach() for run in runs]) for k in range(len(runs[0]))]


@dataclass(frozen=True)
class Reference:
    """An fp64 copy's outputs on some images, and how far the eager model computed in each precision lands from them.

    ``baselines[dtype]`` is the eager model's error from fp64 when run in ``dtype`` (its own dtype always; others on
    request): the yardstick of a candidate computing in that precision.
    """

    images: Tensor
    fp64: list[Tensor]
    eager_dtype: torch.dtype
    baselines: dict[torch.dtype, float]

    @property
    def eager_error(self) -> float:
        """How far the eager model, in its own dtype, is from fp64 on these images."""
        return self.baselines[self.eager_dtype]


@torch.no_grad()
def reference(
    model: nn.Module,
    images: Tensor,
    precisions: Sequence[torch.dtype] = (),
    batch: int = BATCH,
    fp64_model: Optional[nn.Module] = None,
) -> Reference:
    """Run a float64 copy of ``model`` on ``images``, and the eager model in its own dtype and in each of
    ``precisions`` (a copy cast to it, on inputs cast to it). Models run in eval mode; ``model``'s modes are restored.
    ``fp64_model``: that float64 copy, when the caller reuses one (float64 runs ~7x slower than float32 on CPUs).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    own = param.dtype if param is not None else torch.float32
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        fp64_model = fp64_model if fp64_model is not None else copy.deepcopy(model).double()
        fp64 = _outputs(fp64_model.eval(), images, device, torch.float64, batch)
        baselines = {own: largest_relative_difference(_outputs(model, images, device, own, batch), fp64)}
        for dtype in precisions:
            if dtype not in baselines:
                eager = _outputs(copy.deepcopy(model).to(dtype), images, device, dtype, batch)
                baselines[dtype] = largest_relative_difference(eager, fp64)
    finally:
        for module, training in modes:
            module.training = training
    return Reference(images, fp64, own, baselines)


def _outputs(model: nn.Module, images: Tensor, device: torch.device, dtype: torch.dtype, batch: int) -> list[Tensor]:
    return [o.cpu() for o in run_batched(lambda x: model(x.to(device, dtype)), images, batch)]


@dataclass(frozen=True)
class Comparison:
    """A candidate's error from fp64, the yardstick it is judged by, and the verdict."""

    images: int
    precision: torch.dtype  # what the candidate computes in
    error: float  # largest relative difference of the candidate from fp64 (inf: NaN or infinite outputs)
    eager_error: float  # the eager model's, in its own dtype
    eager_dtype: torch.dtype
    baseline: Optional[float]  # the eager model's error in the candidate's precision (or a given one); None: unjudged
    limit: Optional[float]  # None: reported, not judged (int8 has no eager counterpart)
    top1: Optional[float] = None  # candidate top-1 equal to fp64's (classifier logits only)
    clear: Optional[tuple[float, int]] = None  # the same on images with a clear fp64 answer, and their count

    @property
    def accepted(self) -> bool:
        """Within the limit (an unjudged comparison is accepted when its outputs are finite)."""
        return self.error <= self.limit if self.limit is not None else math.isfinite(self.error)

    def describe(self) -> str:
        """One line: ``error 3.1e-06 from fp64 (eager float32: 2.9e-06; limit 1.2e-05) on 48 images, top-1 as fp64
        97.9 %; where the answer is clear: 100.0 % of 31 (95 %: 89.0-100.0 %)`` (top-1 for classifiers only)."""
        error = f"{self.error:.3g}" if math.isfinite(self.error) else "non-finite values"
        yardstick = f"eager {_name(self.eager_dtype)}: {self.eager_error:.3g}"
        if self.baseline is not None and self.precision != self.eager_dtype:
            yardstick += f", {_name(self.precision)}: {self.baseline:.3g}"
        yardstick += f"; limit {self.limit:.3g}" if self.limit is not None else "; not judged"
        text = f"error {error} from fp64 ({yardstick}) on {self.images} images"
        if self.top1 is not None and self.clear is not None:
            text += f", top-1 as fp64 {100 * self.top1:.1f} %; where the answer is clear: {self.clear_text()}"
        return text

    def clear_text(self) -> str:
        """Top-1 agreement on the images with a clear fp64 answer, their count and the 95 % interval
        (:func:`describe_agreement`); ``"none"`` without a clear image, ``"–"`` when top-1 was not counted."""
        return describe_agreement(*self.clear) if self.clear is not None else "–"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def limit_for(baseline: float, precision: torch.dtype, factor: float = FACTOR) -> float:
    """The largest error from fp64 a candidate computing in ``precision`` may show, given the ``baseline`` error of
    the eager model in that precision: ``factor * baseline + FLOOR_ROUNDOFFS * u(precision)``."""
    return factor * baseline + FLOOR_ROUNDOFFS * UNIT_ROUNDOFF[precision]


def _top1(candidate: Tensor, fp64: Tensor) -> tuple[float, tuple[float, int]]:
    same = candidate.argmax(1) == fp64.argmax(1)
    probs = fp64.softmax(1).topk(2, dim=1).values
    clear = probs[:, 0] - probs[:, 1] >= CLEAR_MARGIN
    share = same[clear].double().mean().item() if clear.any() else math.nan
    return same.double().mean().item(), (share, int(clear.sum()))


def compare(
    candidate: Outputs,
    ref: Reference,
    precision: Optional[torch.dtype] = None,
    *,
    baseline: Optional[float] = None,
    factor: float = FACTOR,
    limit: Optional[float] = None,
    logits: bool = True,
) -> Comparison:
    """Judge ``candidate`` (its outputs on ``ref.images``) against ``ref``.

    ``precision``: what the candidate computes in (default: the eager model's dtype). It is judged against
    ``baseline`` if given (e.g. an int8 graph's own error, for a compiled copy of it), else the eager model's error
    in that precision when ``ref`` holds it; without either it is reported, not judged. ``limit`` replaces the
    derived limit. ``logits=False`` (embeddings, feature maps) skips top-1. Raises ``ValueError`` when the outputs
    differ from the model's in number or shape.
    """
    precision = precision or ref.eager_dtype
    outputs = [o.detach().cpu() for o in as_list(candidate)]
    error = largest_relative_difference(outputs, ref.fp64)
    if baseline is None:
        baseline = ref.baselines.get(precision)
    if limit is None and baseline is not None:
        limit = limit_for(baseline, precision, factor)
    top1 = clear = None
    fp64 = ref.fp64
    if logits and len(fp64) == 1 and fp64[0].dim() == 2 and fp64[0].shape[1] > 1 and math.isfinite(error):
        top1, clear = _top1(outputs[0].double(), fp64[0])
    return Comparison(
        images=ref.images.shape[0],
        precision=precision,
        error=error,
        eager_error=ref.eager_error,
        eager_dtype=ref.eager_dtype,
        baseline=baseline,
        limit=limit,
        top1=top1,
        clear=clear,
    )


def judge(
    model: nn.Module,
    candidate: Callable[[Tensor], Outputs],
    images: Tensor,
    precision: Optional[torch.dtype] = None,
    *,
    factor: float = FACTOR,
    limit: Optional[float] = None,
    logits: bool = True,
    batch: int = BATCH,
) -> Comparison:
    """:func:`compare` ``candidate`` (a callable taking image batches) with ``model`` on ``images``: the one-call form
    for tests, scripts and export verification."""
    precisions = [precision] if precision is not None and precision.is_floating_point else []
    ref = reference(model, images, precisions, batch)
    with torch.no_grad():
        outputs = run_batched(candidate, images, batch)
    return compare(outputs, ref, precision, factor=factor, limit=limit, logits=logits)


__all__ = [
    "CLEAR_MARGIN",
    "FACTOR",
    "FLOOR_ROUNDOFFS",
    "UNIT_ROUNDOFF",
    "Comparison",
    "Reference",
    "agreement_interval",
    "compare",
    "describe_agreement",
    "judge",
    "largest_relative_difference",
    "limit_for",
    "model_natural_images",
    "natural_images",
    "photo_crops",
    "reference",
    "relative_difference",
    "run_batched",
    "smooth_images",
]
