"""Decoders: turn the head's features (at the output stride) into logits at the input size.

    deeplabv3      1x1 classifier on the head output, bilinear upsample (DeepLabV3)
    deeplabv3plus  low-level stride-4 skip reduced to 48 channels, concat with the upsampled
                   head output, two 3x3 depthwise-separable convs, classifier (DeepLabV3+)
    lraspp         classifier on the head output upsampled to stride 8, plus a classifier on the
                   stride-8 skip, summed (MobileNetV3's LR-ASPP segmentation head)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .aspp import ConvNormAct, SeparableAtrousConv
from .registry import register_decoder

LOW_LEVEL_CHANNELS = 48  # low-level reduction from the DeepLabV3+ paper


def upsample(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DeepLabV3Decoder(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor, features: dict[str, torch.Tensor], size: torch.Size) -> torch.Tensor:
        return upsample(self.classifier(x), size)


class DeepLabV3PlusDecoder(nn.Module):
    def __init__(self, cin: int, num_classes: int, *, low_channels: int) -> None:
        super().__init__()
        self.reduce = ConvNormAct(low_channels, LOW_LEVEL_CHANNELS, 1)
        self.fuse = nn.Sequential(
            SeparableAtrousConv(cin + LOW_LEVEL_CHANNELS, cin),
            SeparableAtrousConv(cin, cin),
        )
        self.classifier = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor, features: dict[str, torch.Tensor], size: torch.Size) -> torch.Tensor:
        low = self.reduce(features["low"])
        x = torch.cat([upsample(x, low.shape[-2:]), low], dim=1)
        return upsample(self.classifier(self.fuse(x)), size)


class LRASPPDecoder(nn.Module):
    def __init__(self, cin: int, num_classes: int, *, mid_channels: int) -> None:
        super().__init__()
        self.high_classifier = nn.Conv2d(cin, num_classes, 1)
        self.low_classifier = nn.Conv2d(mid_channels, num_classes, 1)

    def forward(self, x: torch.Tensor, features: dict[str, torch.Tensor], size: torch.Size) -> torch.Tensor:
        mid = features["mid"]
        x = upsample(self.high_classifier(x), mid.shape[-2:]) + self.low_classifier(mid)
        return upsample(x, size)


@register_decoder("deeplabv3")
def deeplabv3(cin: int, num_classes: int, *, channels: dict[str, int]) -> DeepLabV3Decoder:
    return DeepLabV3Decoder(cin, num_classes)


@register_decoder("deeplabv3plus")
def deeplabv3plus(cin: int, num_classes: int, *, channels: dict[str, int]) -> DeepLabV3PlusDecoder:
    return DeepLabV3PlusDecoder(cin, num_classes, low_channels=channels["low"])


@register_decoder("lraspp")
def lraspp(cin: int, num_classes: int, *, channels: dict[str, int]) -> LRASPPDecoder:
    return LRASPPDecoder(cin, num_classes, mid_channels=channels["mid"])
