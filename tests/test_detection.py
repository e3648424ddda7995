"""The features_only model as a torchvision Faster R-CNN backbone: outputs, and one training step."""

from __future__ import annotations

import torch
from torchvision.models.detection import FasterRCNN

from effnetv2.detection import FeatureBackbone


def test_backbone_outputs_and_faster_rcnn_train_step(checkpoint):
    torch.manual_seed(0)
    backbone = FeatureBackbone.from_name("efficientnetv2_rw_m", checkpoint_path=checkpoint, fpn_channels=64)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape) for f in feats.values()] == [
        (1, 64, 16, 16),
        (1, 64, 8, 8),
        (1, 64, 4, 4),
        (1, 64, 2, 2),
        (1, 64, 1, 1),
    ]
    assert backbone.out_channels == 64
    plain = FeatureBackbone(backbone.body, fpn_channels=None)
    assert plain.out_channels == 328 and plain(torch.randn(1, 3, 64, 64))["0"].shape == (1, 328, 2, 2)

    detector = FasterRCNN(
        backbone, num_classes=3, min_size=128, max_size=128, rpn_batch_size_per_image=32, box_batch_size_per_image=16
    ).train()
    images = [torch.rand(3, 128, 128)]
    targets = [dict(boxes=torch.tensor([[20.0, 30.0, 90.0, 100.0]]), labels=torch.tensor([1]))]
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    before = detector.roi_heads.box_predictor.cls_score.weight.detach().clone()
    losses = detector(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    assert backbone.body.stem[0].weight.grad is not None  # gradients reach the EfficientNetV2 trunk
    optimizer.step()
    assert not torch.equal(before, detector.roi_heads.box_predictor.cls_score.weight)
