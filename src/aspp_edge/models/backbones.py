"""Mobile backbones from torchvision's definitions, dilated to output stride 8 or 16.

A backbone starts from random init, from torchvision's published ImageNet weights by name
(`weights="imagenet"` or an enum member such as `IMAGENET1K_V2`, read from the torch hub cache by
`models/pretrained.py`; width 1.0 only), or from a local torchvision classification state dict
(`weights=PATH`). Each backbone returns three named feature taps:

    low  - last block at stride 4 (the DeepLabV3+ skip)
    mid  - last block at stride 8 (the LR-ASPP skip)
    out  - last block, at the requested output stride (the head's input)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

from ..errors import CheckpointError, ConfigError
from .registry import register_backbone

OUTPUT_STRIDES = (8, 16)


def check_output_stride(output_stride: int) -> int:
    if output_stride not in OUTPUT_STRIDES:
        raise ConfigError(f"output_stride {output_stride!r} is not supported; valid choices: 8, 16")
    return output_stride


def _convs(block: nn.Module) -> list[nn.Conv2d]:
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)]


def native_strides(features: nn.Sequential) -> list[int]:
    """Output stride after each block of the undilated network."""
    stride, strides = 1, []
    for block in features:
        for conv in _convs(block):
            stride *= conv.stride[0]
        strides.append(stride)
    return strides


def make_dilated(features: nn.Sequential, output_stride: int) -> list[int]:
    """Turn the stride-2 convs past `output_stride` into dilated stride-1 convs, in place.

    Every conv with a spatial kernel from the first converted block on gets the running dilation
    (as torchvision's `dilated=True` MobileNetV3 does for its last stage). Returns the output
    stride after each block.
    """
    check_output_stride(output_stride)
    stride, dilation, strides = 1, 1, []
    for block in features:
        convs = _convs(block)
        for conv in convs:
            s = conv.stride[0]
            if s > 1 and stride >= output_stride:
                dilation *= s
                conv.stride = (1, 1)
            elif s > 1:
                stride *= s
        if dilation > 1:
            for conv in convs:
                k = conv.kernel_size[0]
                if k > 1:
                    conv.dilation = (dilation, dilation)
                    conv.padding = ((k - 1) // 2 * dilation,) * 2
        strides.append(stride)
    return strides


class Backbone(nn.Module):
    """A torchvision `features` stack with named taps at stride 4, 8 and `output_stride`."""

    def __init__(self, features: nn.Sequential, output_stride: int) -> None:
        super().__init__()
        strides = native_strides(features)
        make_dilated(features, output_stride)
        self.features = features
        self.output_stride = output_stride
        # Tap indices: the last block of each stage of the undilated network.
        self.taps = {
            "low": max(i for i, s in enumerate(strides) if s == 4),  # C2, stride 4
            "mid": max(i for i, s in enumerate(strides) if s == 8),  # C3, stride 8
            "out": len(features) - 1,  # C5, stride == output_stride
        }
        self.channels = {name: _convs(features[i])[-1].out_channels for name, i in self.taps.items()}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        found = {}
        by_index = {i: name for name, i in self.taps.items() if name != "out"}
        for i, block in enumerate(self.features):
            x = block(x)
            if i in by_index:
                found[by_index[i]] = x
        found["out"] = x
        return found


def _read_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise CheckpointError(f"cannot read backbone weights {str(path)!r}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"backbone weights {str(path)!r} hold no state dict")
    return state


def _load_features(features: nn.Sequential, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a torchvision classification state dict's `features.*` entries, every tensor checked."""
    prefix = "features."
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    expected = features.state_dict()
    missing = sorted(set(expected) - set(own))
    if missing:
        raise CheckpointError(f"backbone weights {where} lack {len(missing)} tensors, e.g. features.{missing[0]} "
                              "(another architecture's file?)")
    for key, ref in expected.items():
        if own[key].shape != ref.shape:
            raise CheckpointError(
                f"backbone weights {where}: features.{key} has shape {tuple(own[key].shape)}, "
                f"this backbone needs {tuple(ref.shape)} (width_mult or architecture differs?)"
            )
    features.load_state_dict({k: own[k] for k in expected})


def load_backbone_weights(features: nn.Sequential, builder: str, weights: str, width_mult: float) -> None:
    """`weights`: a published weights name of torchvision's `builder` (see `models/pretrained.py`) or a file."""
    from . import pretrained

    if pretrained.is_weights_name(weights, builder, imagenet=True):
        w = pretrained.resolve(builder, weights, imagenet=True)
        check_published_width(builder, weights, width_mult)
        state, _ = pretrained.load_published(w, f"backbone {builder}")
        _load_features(features, state, f"{pretrained.label(w)} ({str(pretrained.hub_file(w))!r})")
        return
    if not Path(weights).is_file():
        raise CheckpointError(f"backbone weights {weights!r} are neither a file nor a weights name of {builder}; valid names: "
                              + ", ".join(pretrained.weight_names(builder, imagenet=True)))
    _load_features(features, _read_file(weights), repr(str(weights)))


def check_published_width(builder: str, name: str, width_mult: float, key: str = "backbone weights") -> None:
    """Published ImageNet weights exist for width 1.0 only."""
    if width_mult != 1.0:
        raise ConfigError(f"{key} {name!r} ({builder}'s published ImageNet weights) fit width_mult 1.0 only, "
                          f"not {width_mult!r}: set model.width_mult 1.0, or train from random weights (backbone_weights unset)")


@register_backbone("mobilenet_v2")
def mobilenet_v2(*, output_stride: int = 16, width_mult: float = 1.0, weights: str | None = None) -> Backbone:
    # The final 1x1 conv to 1280 channels is dropped: the head reads the 320-channel block,
    # as TF DeepLab's MobileNetV2 does.
    features = MobileNetV2(width_mult=width_mult).features
    if weights:
        load_backbone_weights(features, "mobilenet_v2", weights, width_mult)
    return Backbone(features[:-1], output_stride)


@register_backbone("mobilenet_v3_large")
def mobilenet_v3_large(*, output_stride: int = 16, width_mult: float = 1.0, weights: str | None = None) -> Backbone:
    # Kept whole, ending in the 960-channel 1x1 conv, as torchvision's segmentation models do.
    setting, last_channel = _mobilenet_v3_conf("mobilenet_v3_large", width_mult=width_mult)
    features = MobileNetV3(setting, last_channel).features
    if weights:
        load_backbone_weights(features, "mobilenet_v3_large", weights, width_mult)
    return Backbone(features, output_stride)
