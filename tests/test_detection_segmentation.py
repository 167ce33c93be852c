"""A detector's network part and a segmentation model optimize end to end; a whole detector's
post-processing is named in the error (torchvision-style models, defined here: torchvision is optional)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphopt
from graphopt.errors import CaptureError
from graphopt.zoo import randomize_batchnorm


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.stage1, self.stage2 = (
            _conv_bn_relu(3, 16, 2),
            _conv_bn_relu(16, 32, 2),
            _conv_bn_relu(32, 32),
        )

    def forward(self, x):
        return self.stage2(self.stage1(self.stem(x)))


class DetectionHead(nn.Module):
    """SSD-style: per-position class logits and box offsets for ``anchors`` anchors."""

    def __init__(self, channels: int = 32, anchors: int = 3, classes: int = 4):
        super().__init__()
        self.anchors, self.classes = anchors, classes
        self.tower = _conv_bn_relu(channels, channels)
        self.cls, self.box = (
            nn.Conv2d(channels, anchors * classes, 3, padding=1),
            nn.Conv2d(channels, anchors * 4, 3, padding=1),
        )

    def forward(self, features):
        x = self.tower(features)
        n = x.shape[0]
        logits = self.cls(x).permute(0, 2, 3, 1).reshape(n, -1, self.classes)
        boxes = self.box(x).permute(0, 2, 3, 1).reshape(n, -1, 4)
        return logits, boxes


class DetectorNetwork(nn.Module):
    """What a detector computes as tensors: backbone and heads."""

    def __init__(self):
        super().__init__()
        self.backbone, self.head = Backbone(), DetectionHead()

    def forward(self, images):
        return self.head(self.backbone(images))


class Detector(DetectorNetwork):
    """The whole detector: the network, then Python post-processing over values (thresholds, a kept list)."""

    def forward(self, images):
        logits, boxes = super().forward(images)
        detections = []
        for image_scores, image_boxes in zip(logits.sigmoid().amax(-1), boxes, strict=True):
            kept = [image_boxes[i] for i in range(image_scores.shape[0]) if image_scores[i] > 0.5]
            detections.append(torch.stack(kept) if kept else image_boxes[:0])
        return detections


class Segmenter(nn.Module):
    """LRASPP/DeepLabV3-style: backbone, an ASPP with an image-pooling branch, upsampled class logits."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.backbone = Backbone()
        self.branch = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.classifier = nn.Conv2d(32, classes, 1)

    def forward(self, x):
        features = self.backbone(x)
        pooled = F.interpolate(
            self.pooling(features), size=features.shape[-2:], mode="bilinear", align_corners=False
        )
        logits = self.classifier(torch.cat([self.branch(features), pooled], dim=1))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


TARGETS = [
    ("generic-fp32", 0.0),
    ("x86-int8", 0.0),
    ("arm-int8", 0.0),
    ("generic-fp32", 0.3),
    ("x86-int8", 0.3),
]


def _built(model_type: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = model_type()
    randomize_batchnorm(model)
    return model.eval()


@pytest.mark.parametrize(
    ("model_type", "shape"), [(DetectorNetwork, (1, 3, 64, 64)), (Segmenter, (1, 3, 64, 64))]
)
@pytest.mark.parametrize(("target", "prune"), TARGETS)
def test_network_parts_optimize_with_every_target(model_type, shape, target, prune, tmp_path):
    model, x = _built(model_type), torch.randn(*shape)
    calibration = [torch.randn(4, *shape[1:]) for _ in range(2)]
    res = graphopt.optimize(model, target, example_inputs=(x,), calibration_data=calibration, prune=prune)
    assert not res.report.leaves
    if prune:
        assert res.report.stage("prune_channels").stats["units_removed"] > 0
    if "int8" in target:
        assert res.report.stage("calibrate").stats["int8_layers"] >= 5
    res.export(tmp_path / "m.onnx", latency_guard=False)


def test_a_whole_detector_names_the_post_processing_line_and_the_network_part():
    model = _built(Detector)
    with pytest.raises(CaptureError) as info:
        graphopt.optimize(model, example_inputs=(torch.randn(1, 3, 64, 64),))
    message = str(info.value)
    assert "test_detection_segmentation.py" in message and "image_scores[i] > 0.5" in message
    assert "optimize the network part (backbone, head)" in message
