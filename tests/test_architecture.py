"""The network's structure: spec scaling, parameter count, feature levels, key map, drop-path schedule."""

from __future__ import annotations

import timm
import torch
from conftest import ARCH

import effnetv2
from effnetv2.spec import EFFICIENTNETV2_RW_M, make_divisible


def test_scaled_spec_matches_the_published_table():
    spec = EFFICIENTNETV2_RW_M
    assert spec.stem_channels == 32
    assert spec.head_channels == 2152
    table = [(s.block, s.repeats, s.kernel, s.stride, s.expansion, s.out_channels, s.se_ratio) for s in spec.stages]
    assert table == [
        ("fused", 3, 3, 1, 1, 32, 0.0),
        ("fused", 5, 3, 2, 4, 56, 0.0),
        ("fused", 5, 3, 2, 4, 80, 0.0),
        ("mbconv", 8, 3, 2, 4, 152, 0.25),
        ("mbconv", 15, 3, 1, 6, 192, 0.25),
        ("mbconv", 24, 3, 2, 6, 328, 0.25),
    ]
    assert spec.num_blocks == 60


def test_make_divisible_keeps_ninety_percent():
    assert make_divisible(28.8) == 32
    assert make_divisible(57.6) == 56
    assert make_divisible(326.4) == 328
    assert make_divisible(11.0) == 16  # 8 would lose more than 10 %


def test_parameter_count(model, timm_model):
    assert sum(p.numel() for p in model.parameters()) == 53_236_442
    assert sum(p.numel() for p in timm_model.parameters()) == 53_236_442


def test_squeeze_excite_width_follows_block_input(model):
    assert model.stages[3][0].se.fc1.out_channels == 20  # 80 in -> 320 mid -> 20
    assert model.stages[3][1].se.fc1.out_channels == 38  # 152 in -> 608 mid -> 38
    assert model.stages[5][0].se.fc1.out_channels == 48  # 192 in -> 1152 mid -> 48


def test_feature_info_matches_timm(model, timm_model):
    assert model.feature_info == [
        {k: v if k != "module" else v.replace("blocks", "stages") for k, v in info.items()}
        for info in timm_model.feature_info
    ]
    assert model.stage_ends == timm_model.stage_ends == [1, 2, 3, 5, 6]
    features = effnetv2.create_model(ARCH, features_only=True)
    assert features.feature_info.channels() == [32, 56, 80, 192, 328]
    assert features.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert features.feature_info.module_name() == [f"stages.{i}" for i in (0, 1, 2, 4, 5)]
    assert features.feature_info.channels(-1) == 328


def test_features_only_holds_no_head():
    features = effnetv2.create_model(ARCH, features_only=True)
    names = [n for n, _ in features.named_parameters()]
    assert not any(n.startswith(("head", "classifier")) for n in names)
    timm_features = timm.create_model(ARCH, features_only=True)
    assert sum(p.numel() for p in features.parameters()) == sum(p.numel() for p in timm_features.parameters())


def test_key_map_covers_every_timm_key_once_both_ways(model, timm_model):
    key_map = effnetv2.KeyMap(EFFICIENTNETV2_RW_M)
    ours, theirs = list(model.state_dict()), list(timm_model.state_dict())
    to_timm = [key_map.to_timm(k) for k in ours]
    to_ours = [key_map.to_ours(k) for k in theirs]
    assert sorted(to_timm) == sorted(theirs) and len(set(to_timm)) == len(theirs)
    assert sorted(to_ours) == sorted(ours) and len(set(to_ours)) == len(ours)
    assert all(key_map.to_ours(key_map.to_timm(k)) == k for k in ours)
    assert key_map.to_timm("stages.3.0.se.fc1.weight") == "blocks.3.0.se.conv_reduce.weight"
    assert key_map.to_timm("stages.0.2.project.1.running_var") == "blocks.0.2.bn2.running_var"


def test_drop_path_schedule_is_timms():
    ours = effnetv2.create_model(ARCH, drop_path_rate=0.3)
    theirs = timm.create_model(ARCH, drop_path_rate=0.3)
    our_rates = [block.drop_path.p for stage in ours.stages for block in stage]
    their_rates = [getattr(block.drop_path, "drop_prob", 0.0) for stage in theirs.blocks for block in stage]
    assert len(our_rates) == 60
    assert our_rates == their_rates
    assert our_rates[0] == 0.0 and abs(our_rates[-1] - 0.3 * 59 / 60) < 1e-12


def test_group_matcher_groups_like_timms(model, timm_model):
    from timm.models._manipulate import group_with_matcher

    key_map = effnetv2.KeyMap(EFFICIENTNETV2_RW_M)
    for coarse in (False, True):
        ours = group_with_matcher(model.named_parameters(), model.group_matcher(coarse=coarse))
        theirs = group_with_matcher(timm_model.named_parameters(), timm_model.group_matcher(coarse=coarse))
        translated = {g: sorted(key_map.to_timm(n) for n in names) for g, names in ours.items()}
        assert translated == {g: sorted(names) for g, names in theirs.items()}
        assert len(ours) == (8 if coarse else 62)


def test_reset_classifier_and_get_classifier():
    m = effnetv2.create_model(ARCH)
    assert m.get_classifier() is m.classifier and m.classifier.out_features == 1000
    m.reset_classifier(5)
    assert m.num_classes == 5 and m.classifier.out_features == 5 and m.global_pool.pool_type == "avg"
    m.reset_classifier(3, global_pool="catavgmax")
    assert m.classifier.in_features == 4304 and m.head_hidden_size == 4304
    m.reset_classifier(0, global_pool="")
    assert isinstance(m.classifier, torch.nn.Identity)
    assert m.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2152, 2, 2)
