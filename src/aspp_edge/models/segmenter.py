"""The segmentation model (backbone -> head -> decoder) and its public builder."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from . import aspp as _aspp  # noqa: F401  (registers the heads)
from .aspp import DEFAULT_DROPOUT
from . import decoder as _decoder  # noqa: F401  (registers the decoders)
from .backbones import check_output_stride
from .registry import BACKBONES, DECODERS, HEADS


def min_input_size(output_stride: int) -> int:
    """Smallest input side: the head must see at least a 2x2 feature map."""
    return 2 * output_stride


class Segmenter(nn.Module):
    """Image (N, 3, H, W) -> logits (N, num_classes, H, W)."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        decoder: nn.Module,
        *,
        num_classes: int,
        output_stride: int,
        input_size: tuple[int, int],
        config: dict,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.decoder = decoder
        self.num_classes = num_classes
        self.output_stride = output_stride
        self.input_size = input_size
        self.config = config  # the create_model arguments, for manifests and checkpoints

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        least = min_input_size(self.output_stride)
        if h < least or w < least:
            raise ValueError(
                f"input {h}x{w} is too small for output stride {self.output_stride}: "
                f"height and width must be at least {least}"
            )
        features = self.backbone(x)
        return self.decoder(self.head(features["out"]), features, x.shape[-2:])

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor]:
        return (torch.randn(batch_size, 3, *self.input_size),)


def create_model(
    name: str,
    *,
    num_classes: int,
    backbone: str = "mobilenet_v2",
    decoder: str = "deeplabv3plus",
    output_stride: int = 16,
    width_mult: float = 1.0,
    head_channels: int | None = None,
    dropout: float = DEFAULT_DROPOUT,
    input_size: int | tuple[int, int] = 512,
    backbone_weights: str | None = None,
) -> Segmenter:
    """Build a segmentation model whose head is the ASPP variant `name` (see `list_models()`).

    `head_channels=None` uses the head's own default width (256 for ASPP heads, 128 for LR-ASPP).
    """
    head_fn = HEADS.get(name)
    backbone_fn = BACKBONES.get(backbone)
    decoder_fn = DECODERS.get(decoder)
    check_output_stride(output_stride)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes {num_classes!r} is not valid; it must be an integer >= 2")
    if width_mult <= 0:
        raise ConfigError(f"width_mult {width_mult!r} is not valid; it must be > 0")
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    least = min_input_size(output_stride)
    if len(size) != 2 or min(size) < least:
        raise ConfigError(f"input_size {size!r} is too small for output stride {output_stride}: each side must be >= {least}")
    config = dict(
        head=name, num_classes=num_classes, backbone=backbone, decoder=decoder, output_stride=output_stride,
        width_mult=width_mult, head_channels=head_channels, dropout=dropout, input_size=list(size),
    )
    body = backbone_fn(output_stride=output_stride, width_mult=width_mult, weights=backbone_weights)
    head_kwargs = {"output_stride": output_stride, "dropout": dropout}
    if head_channels is not None:
        head_kwargs["channels"] = head_channels
    head = head_fn(body.channels["out"], **head_kwargs)
    dec = decoder_fn(head.out_channels, num_classes, channels=body.channels)
    return Segmenter(body, head, dec, num_classes=num_classes, output_stride=output_stride, input_size=size, config=config)
