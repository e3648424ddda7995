"""The test oracle sees bugs: it is well-conditioned, and the parity check flags each planted bug by a wide margin; and
the reports say how much their counts decide (top-1 agreement with its 95 % interval).

On the earlier chaotic test weights (random BatchNorm statistics from noise, unit residual gains: activations ~1e7,
most squeeze-excite gates saturated, timm's own fp32 vs fp64 0.67 apart) zeroing the last block's squeeze-excite
bias changed the logits by 0 and the head's SiLU -> ReLU by 0 to 2e-8, both far inside the 2e-5 parity tolerance
(measured on 2 images at 128 px; here: 0.03 and 0.86). Every bug below moves the logits by 0.03 to 2 relative.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_close, image_batch
from torch import nn
from torchvision.ops import SqueezeExcitation

from effnetv2 import testing as calibrated_model
from effnetv2.inference.compare import Comparison, agreement_interval, describe_agreement, relative_difference

TOL = 2e-5  # the fp32 parity tolerance of tests/test_parity.py
SEEN = 50 * TOL  # a planted bug must move the outputs by at least this much


@pytest.fixture(scope="module")
def inputs():
    return image_batch(2, 128, 128)


@pytest.fixture(scope="module")
def expected(timm_model, inputs):
    with torch.no_grad():
        return timm_model(inputs)


def test_oracle_is_well_conditioned(timm_model, inputs, expected):
    stats = calibrated_model.conditioning(timm_model, inputs)
    assert stats["max_activation"] < 100, stats  # chaotic weights: ~1e7
    assert stats["gates"] == 2 * 68_032  # 2 images x the gate channels of all 47 squeeze-excite blocks
    assert stats["saturated_gates"] < 0.01, stats  # chaotic weights: ~90 %
    x = inputs[:1, :, :96, :96]  # float64 convolutions are slow
    with torch.no_grad():
        fp32, fp64 = timm_model(x), copy.deepcopy(timm_model).double()(x.double())
    assert relative_difference(fp32, fp64) < 1e-5  # timm's own float32 is accurate here; chaotic weights: 0.67
    assert 1 < expected.std() < 5 and expected.abs().max() < 30  # logits of a few units
    probs = expected.softmax(1)
    assert (probs.max(1).values < 0.99).all()  # softmax is not one-hot


def wrong_squeeze_width(model: nn.Module) -> None:
    """The first squeeze-excite block (80 -> 320 mid) with round(320 * 0.25) = 80 squeeze channels, not 20.

    Rebuilt with torchvision's own initialisation, the checkpoint's weights copied where they fit.
    """
    block = model.stages[3][0]
    old = block.se
    mid, right = old.fc1.in_channels, old.fc1.out_channels
    torch.manual_seed(0)
    new = SqueezeExcitation(mid, round(mid * 0.25), activation=nn.SiLU)
    assert (right, new.fc1.out_channels) == (20, 80)
    with torch.no_grad():
        new.fc1.weight[:right].copy_(old.fc1.weight)
        new.fc1.bias[:right].copy_(old.fc1.bias)
        new.fc2.weight[:, :right].copy_(old.fc2.weight)
        new.fc2.bias.copy_(old.fc2.bias)
    block.se = new


def set_eps(model: nn.Module, eps: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = eps


BUGS = {
    "head SiLU -> ReLU": lambda m: m.head.__setitem__(2, nn.ReLU()),
    "last block's squeeze-excite bias zeroed": lambda m: m.stages[-1][-1].se.fc2.bias.data.zero_(),
    "BatchNorm eps 1e-3": lambda m: set_eps(m, 1e-3),
    "squeeze width from the expanded channels": wrong_squeeze_width,
    "residual dropped in one block": lambda m: setattr(m.stages[4][7], "use_residual", False),
}


def test_unmodified_model_passes(model, inputs, expected):
    with torch.no_grad():
        assert_close(model(inputs), expected, tol=TOL)


@pytest.mark.parametrize("bug", list(BUGS))
def test_parity_check_flags_planted_bug(model, inputs, expected, bug):
    buggy = copy.deepcopy(model)
    BUGS[bug](buggy)
    with torch.no_grad():
        out = buggy(inputs)
    assert relative_difference(out, expected) > SEEN, relative_difference(out, expected)
    with pytest.raises(AssertionError, match="relative difference"):
        assert_close(out, expected, tol=TOL)


@pytest.mark.parametrize(
    "agreeing, count, low, high",
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson's score interval)
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_agreement_interval_is_wilsons(agreeing, count, low, high):
    interval = agreement_interval(agreeing, count)
    assert interval == pytest.approx((low, high), abs=5e-5)


def test_agreements_are_reported_with_how_much_their_count_decides():
    assert agreement_interval(10, 10) == (pytest.approx(0.7225, abs=5e-5), 1.0)  # the bound itself, not a hair inside
    assert describe_agreement(127 / 128, 128) == "99.2 % of 128 (95 %: 95.7–99.9 %)"
    assert describe_agreement(523 / 526, 526) == "99.4 % of 526 (95 %: 98.3–99.8 %)"
    assert describe_agreement(float("nan"), 0) == "none"
    for agreeing, count in ((3, 2), (-1, 4), (0, 0)):
        with pytest.raises(ValueError, match="0 <= agreeing <= count"):
            agreement_interval(agreeing, count)
    comparison = Comparison(48, torch.int8, 0.1, 2e-6, torch.float32, None, None, top1=0.9, clear=(1.0, 31))
    assert comparison.describe() == (
        "error 0.1 from fp64 (eager float32: 2e-06; not judged) on 48 images, top-1 as fp64 90.0 %; "
        "where the answer is clear: 100.0 % of 31 (95 %: 89.0–100.0 %)"
    )
    assert Comparison(48, torch.int8, 0.1, 2e-6, torch.float32, None, None).clear_text() == "–"
