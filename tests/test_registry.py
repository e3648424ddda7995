"""create_model / list_models: names, tags, configs, and clear errors."""

from __future__ import annotations

import pytest
import timm
import torch

import effnetv2

# timm's EfficientNetV2 networks and tags, all of them
FAMILY = timm.list_models("*efficientnetv2*")
TAGS = timm.list_models("*efficientnetv2*", pretrained=True)


def test_list_models():
    assert len(FAMILY) == 16 and len(TAGS) == 21
    assert effnetv2.list_models() == FAMILY
    assert effnetv2.list_models(pretrained=True) == TAGS
    assert effnetv2.list_models("*rw_m*") == ["efficientnetv2_rw_m"]
    assert effnetv2.list_models("resnet*") == []
    assert effnetv2.list_models(include_tags=True) == TAGS
    assert effnetv2.list_models(pretrained=True, include_tags=False) == sorted({t.partition(".")[0] for t in TAGS})
    rw = ["efficientnetv2_rw_s", "efficientnetv2_rw_t", "gc_efficientnetv2_rw_t"]
    assert effnetv2.list_models("*rw*", exclude_filters="*_m") == rw
    assert effnetv2.list_models("tf_*b?") == [f"tf_efficientnetv2_b{i}" for i in range(4)]


CFG_KEYS = ("architecture", "tag", "input_size", "test_input_size", "interpolation", "crop_pct", "crop_mode")
CFG_KEYS += ("mean", "std", "num_classes", "pool_size")


@pytest.mark.parametrize(
    "name", [*TAGS, "efficientnetv2_s", "efficientnetv2_m", "efficientnetv2_l", "efficientnetv2_xl"]
)
def test_pretrained_cfg_matches_timm(name):
    with torch.device("meta"):  # configs only: nothing allocated
        ours = effnetv2.create_model(name).pretrained_cfg
        theirs = timm.create_model(name).pretrained_cfg
    keys = (*CFG_KEYS, "hf_hub_id", "url", "license") if "." in name else CFG_KEYS
    assert set(keys) <= set(ours)
    for key in keys:
        assert tuple(ours[key]) == tuple(theirs[key]) if isinstance(ours[key], tuple) else ours[key] == theirs[key]


def test_default_tag_and_features_config():
    # The bare architecture name gets its default tag's config, as in timm.
    assert effnetv2.create_model("efficientnetv2_rw_m").pretrained_cfg["tag"] == "agc_in1k"
    features = effnetv2.create_model("efficientnetv2_rw_m", features_only=True)
    assert "num_classes" not in features.pretrained_cfg and features.default_cfg is features.pretrained_cfg


def test_pretrained_without_published_weights_is_an_error():
    with pytest.raises(effnetv2.CheckpointError, match="no pretrained weights are published for efficientnetv2_s"):
        effnetv2.create_model("efficientnetv2_s", pretrained=True)


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("efficientnetv2_rw_q", "efficientnetv2_rw_"), ("efficientnetv2_rw_m.in1k", "efficientnetv2_rw_m.agc_in1k")],
)
def test_unknown_name_suggests_close_match(name, suggestion):
    with pytest.raises(effnetv2.UnknownModelError, match=f"{name!r}.*Did you mean.*{suggestion}") as info:
        effnetv2.create_model(name)
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


def test_bad_arguments():
    with pytest.raises(TypeError, match="num_clases"):
        effnetv2.create_model("efficientnetv2_rw_m", num_clases=10)
    with pytest.raises(ValueError, match="global_pool='' .* needs num_classes=0"):
        effnetv2.create_model("efficientnetv2_rw_m", global_pool="")
    with pytest.raises(ValueError, match="unknown global_pool 'mean'"):
        effnetv2.create_model("efficientnetv2_rw_m", global_pool="mean")
    with pytest.raises(ValueError, match="feature index 5 is out of range"):
        effnetv2.create_model("efficientnetv2_rw_m", features_only=True, out_indices=(0, 5))
    with pytest.raises(ValueError, match="drop_path_rate"):
        effnetv2.create_model("efficientnetv2_rw_m", drop_path_rate=1.5)


def test_features_only_ignores_head_arguments_and_accepts_last_n():
    f = effnetv2.create_model(
        "efficientnetv2_rw_m", features_only=True, num_classes=10, global_pool="max", out_indices=2
    )
    assert f.feature_info.channels() == [192, 328]


def test_a_classifier_reset_onto_unpooled_maps_says_what_to_do():
    """timm lets reset_classifier(N) follow global_pool='' (its model tests do, on the meta device); running that
    pair is a clear error here, not a matrix-shape one."""
    model = effnetv2.create_model("tf_efficientnetv2_b0", num_classes=0, global_pool="").eval()
    model.reset_classifier(3)  # keeps the (absent) pooling, as timm's does
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r"needs pooled \(B, C\) input.*call reset_classifier\(3, 'avg'\)"):
        model(x)
    model.reset_classifier(3, "avg")
    assert model(x).shape == (1, 3)


def test_device_and_dtype_as_timm_takes_them(checkpoint):
    meta = effnetv2.create_model("efficientnetv2_rw_m", device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert meta(torch.empty(1, 3, 64, 64, device="meta")).shape == (1, 1000)
    double = effnetv2.create_model("efficientnetv2_rw_m", checkpoint_path=checkpoint, dtype=torch.float64)
    plain = effnetv2.create_model("efficientnetv2_rw_m", checkpoint_path=checkpoint)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    assert torch.equal(double.classifier.weight, plain.classifier.weight.double())  # loaded, then cast
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        effnetv2.create_model("tf_efficientnetv2_b0", dtype=torch.int8)
