"""Input normalization as the platform image APIs can express it, the rest inside the model.

The recipe normalizes per channel: x[c] = (pixel / 255 - mean[c]) / std[c]. Core ML's ImageType
has one scale for all channels (and a bias per channel); MediaPipe's NormalizationOptions take
one mean and one std ("Per-channel image normalization is not available"). Where the recipe's
normalization is per channel, the artifact takes what the platform can express and the model
starts with one exact per-channel affine, x[c] = u[c] * scale[c] + bias[c], that completes it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Recipe


class InputAffine(nn.Module):
    """`model(u * scale[c] + bias[c])`: the per-channel part of the normalization, inside the model."""

    def __init__(self, model: nn.Module, scale: list[float], bias: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("bias", torch.tensor(bias, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.model(u * self.scale + self.bias)


def _uniform(values) -> bool:
    return max(values) - min(values) < 1e-12


def scalar_normalization(recipe: Recipe) -> tuple[dict, list[float] | None, list[float] | None]:
    """(artifact input normalization, in-model scale, in-model bias) for one-mean/one-std APIs.

    A recipe whose mean and std are the same on every channel needs nothing inside the model.
    Otherwise the app feeds u = pixel / 127.5 - 1 (MediaPipe's usual [-1, 1] input: mean 127.5,
    std 127.5 in pixel units) and the model maps u to x with scale[c] = 0.5 / std[c] and
    bias[c] = (0.5 - mean[c]) / std[c], since pixel / 255 = (u + 1) / 2.
    """
    mean, std = recipe.data.mean, recipe.data.std
    if _uniform(mean) and _uniform(std):
        return {"pixel_scale": 1.0 / 255.0, "mean": list(mean), "std": list(std)}, None, None
    scale = [0.5 / s for s in std]
    bias = [(0.5 - m) / s for m, s in zip(mean, std)]
    return {"pixel_scale": 1.0 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0]}, scale, bias


def image_type_preprocessing(recipe: Recipe) -> tuple[float, list[float], list[float] | None]:
    """(ImageType scale, ImageType bias[c], in-model per-channel scale or None) for Core ML.

    ImageType computes scale * pixel + bias[c]. With s the average std: scale = 1 / (255 s),
    bias[c] = -mean[c] / s, and the model multiplies channel c by s / std[c].
    """
    mean, std = recipe.data.mean, recipe.data.std
    s = sum(std) / len(std)
    factor = [s / c for c in std]
    return 1.0 / (255.0 * s), [-m / s for m in mean], None if _uniform(std) else factor
