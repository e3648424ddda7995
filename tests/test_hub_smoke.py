"""pretrained=True resolves the published repo through huggingface_hub's real cache lookup (offline)."""

import timm
import torch
from conftest import assert_close, image_batch

import effnetv2


def test_pretrained_from_offline_hub_cache_equals_timm(hf_cache):
    ours = effnetv2.create_model("efficientnetv2_rw_m.agc_in1k", pretrained=True).eval()
    theirs = timm.create_model("efficientnetv2_rw_m.agc_in1k", pretrained=True).eval()
    x = image_batch(1, 96, 96)
    with torch.no_grad():
        assert_close(ours(x), theirs(x))
