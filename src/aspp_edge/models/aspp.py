"""ASPP head variants, each a small composition of shared blocks.

Blocks: `ConvNormAct`, `AtrousConv`, `SeparableAtrousConv`, `ImagePooling`, `SqueezeExcite`.
Heads (registered by name): aspp, aspp_nobn, sep_aspp, se_aspp, sep_se_aspp, hdc_aspp, lraspp.
Every head maps the backbone's `out` features (B, in_channels, h, w) to (B, out_channels, h, w).

Image pooling and batch size 1: BatchNorm over a 1x1 pooled map sees one value per channel
when the batch is 1 and cannot train (torch raises "Expected more than 1 value per channel").
The pooling branch here is therefore conv-with-bias + ReLU and no norm layer. At inference this
is the same function as torchvision's conv + BN + ReLU (BN folds into the conv's weight and
bias; the test that copies torchvision's ASPP weights across does exactly that fold). The pooled
vector is spread back to h x w by torchvision's own bilinear resize of the 1x1 map, which is
exactly a broadcast and lowers cleanly on every backend (see `ImagePooling`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_head

# DeepLabV3's atrous rates at output stride 16; doubled at output stride 8.
DEFAULT_DROPOUT = 0.1  # before the head's classifier; the recipe's model.dropout defaults to it
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}

# Hybrid dilated convolution (Wang et al., "Understanding Convolution for Semantic Segmentation"):
# each ASPP atrous branch becomes a stack of 3x3 convs whose rates share no common factor, so the
# stack's taps cover every offset up to its reach (no gridding), and whose reach equals the
# standard branch's rate (rate 6 <-> reach 1+2+3 = 6, 12 <-> 1+3+8, 18 <-> 1+3+9+5). The test
# suite checks both properties for every stack.
HDC_RATES = {
    16: ((1, 2, 3), (1, 3, 8), (1, 3, 9, 5)),
    8: ((1, 3, 8), (1, 3, 9, 11), (1, 3, 9, 23)),
}

SE_REDUCTION = 16  # squeeze-excitation channel reduction (Hu et al.)
LRASPP_CHANNELS = 128  # Lite R-ASPP's inner width (Howard et al., MobileNetV3)


class ConvNormAct(nn.Sequential):
    """Conv + BatchNorm + ReLU, or conv with bias + ReLU when `norm=False`."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 1, *, dilation: int = 1, groups: int = 1, norm: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, padding=(kernel - 1) // 2 * dilation, dilation=dilation, groups=groups, bias=not norm)
        ]
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU())
        super().__init__(*layers)


class AtrousConv(ConvNormAct):
    """3x3 atrous conv + BN + ReLU (torchvision's `ASPPConv`)."""

    def __init__(self, cin: int, cout: int, rate: int, *, norm: bool = True) -> None:
        super().__init__(cin, cout, 3, dilation=rate, norm=norm)


class SeparableAtrousConv(nn.Sequential):
    """Depthwise atrous 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU (DeepLabV3+)."""

    def __init__(self, cin: int, cout: int, rate: int = 1, *, norm: bool = True) -> None:
        super().__init__(
            ConvNormAct(cin, cin, 3, dilation=rate, groups=cin, norm=norm),
            ConvNormAct(cin, cout, 1, norm=norm),
        )


class ImagePooling(nn.Module):
    """Global average pool -> 1x1 conv (bias) -> ReLU -> spread over the input's h x w.

    The spread is a bilinear resize of the 1x1 map (align_corners=False), which is exactly a
    broadcast: every output pixel interpolates between copies of the one input value. It is the
    formulation all three backends lower cleanly: `expand` stays outside ExecuTorch's XNNPACK
    delegate (splitting the graph in two) and becomes a BROADCAST_TO that LiteRT's NHWC rewrite
    breaks, whereas RESIZE_BILINEAR / upsample_bilinear2d run int8 in XNNPACK, LiteRT and Core ML.
    `tests/test_models.py` checks it equals `expand`.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(cin, cout, 1, bias=True)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(self.pool(x)))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class SqueezeExcite(nn.Module):
    """Channel attention: x * sigmoid(fc2(relu(fc1(avgpool(x)))))."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(8, channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class ASPP(nn.Module):
    """1x1 branch + atrous branches + image pooling, concat, [SE], 1x1 projection, dropout.

    `rates` holds one entry per atrous branch: an int for a single atrous conv, or a tuple for a
    stack of atrous convs (hybrid dilation).
    """

    def __init__(
        self,
        cin: int,
        rates: Sequence[int | Sequence[int]],
        channels: int = 256,
        *,
        norm: bool = True,
        separable: bool = False,
        se: bool = False,
        dropout: float = DEFAULT_DROPOUT,
    ) -> None:
        super().__init__()
        block = SeparableAtrousConv if separable else AtrousConv
        branches: list[nn.Module] = [ConvNormAct(cin, channels, 1, norm=norm)]
        for rate in rates:
            stack = (rate,) if isinstance(rate, int) else tuple(rate)
            convs = [block(cin if i == 0 else channels, channels, r, norm=norm) for i, r in enumerate(stack)]
            branches.append(convs[0] if len(convs) == 1 else nn.Sequential(*convs))
        branches.append(ImagePooling(cin, channels))
        self.branches = nn.ModuleList(branches)
        concat = channels * len(branches)
        self.se = SqueezeExcite(concat) if se else nn.Identity()
        self.project = nn.Sequential(ConvNormAct(concat, channels, 1, norm=norm), nn.Dropout(dropout))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.project(self.se(y))


class LRASPP(nn.Module):
    """Lite R-ASPP's context block: relu(bn(conv1x1(x))) * sigmoid(conv1x1(avgpool(x)))."""

    def __init__(self, cin: int, channels: int = LRASPP_CHANNELS) -> None:
        super().__init__()
        self.cbr = ConvNormAct(cin, channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.scale = nn.Conv2d(cin, channels, 1, bias=False)
        self.gate = nn.Sigmoid()
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x) * self.gate(self.scale(self.pool(x)))


@register_head("aspp")
def aspp(cin: int, *, output_stride: int, channels: int = 256, dropout: float = DEFAULT_DROPOUT) -> ASPP:
    return ASPP(cin, ASPP_RATES[output_stride], channels, dropout=dropout)


@register_head("aspp_nobn")
def aspp_nobn(cin: int, *, output_stride: int, channels: int = 256, dropout: float = DEFAULT_DROPOUT) -> ASPP:
    return ASPP(cin, ASPP_RATES[output_stride], channels, norm=False, dropout=dropout)


@register_head("sep_aspp")
def sep_aspp(cin: int, *, output_stride: int, channels: int = 256, dropout: float = DEFAULT_DROPOUT) -> ASPP:
    return ASPP(cin, ASPP_RATES[output_stride], channels, separable=True, dropout=dropout)


@register_head("se_aspp")
def se_aspp(cin: int, *, output_stride: int, channels: int = 256, dropout: float = DEFAULT_DROPOUT) -> ASPP:
    return ASPP(cin, ASPP_RATES[output_stride], channels, se=True, dropout=dropout)


@register_head("sep_se_aspp")
def sep_se_aspp(cin: int, *, output_stride: int, channels: int = 256, dropout: float = DEFAULT_DROPOUT) -> ASPP:
    return ASPP(cin, ASPP_RATES[output_stride], channels, separable=True, se=True, dropout=dropout)


@register_head("hdc_aspp")
def hdc_aspp(cin: int, *, output_stride: int, channels: int = 256, dropout: float = DEFAULT_DROPOUT) -> ASPP:
    return ASPP(cin, HDC_RATES[output_stride], channels, dropout=dropout)


@register_head("lraspp")
def lraspp(cin: int, *, output_stride: int, channels: int = LRASPP_CHANNELS, dropout: float = 0.0) -> LRASPP:
    del output_stride, dropout  # global pooling: no rates, no dropout in the original head
    return LRASPP(cin, channels)
