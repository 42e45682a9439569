"""Paired image/mask transforms on tensors: image float (3, H, W) in [0, 1], mask int64 (H, W)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import IGNORE_INDEX  # mask value that the loss and the metrics skip (VOC's "void")

Pair = tuple[torch.Tensor, torch.Tensor]


def to_tensor_pair(image: np.ndarray, mask: np.ndarray) -> Pair:
    """uint8 HWC RGB + integer HW mask -> float CHW in [0, 1] + int64 HW."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    return img, torch.from_numpy(np.ascontiguousarray(mask)).long()


def _resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> Pair:
    if tuple(image.shape[-2:]) == size:
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, mask


class Resize:
    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        return _resize_pair(image, mask, self.size)


class ResizeShortSide:
    """Resize so that the short side is `size` (aspect kept; the long side rounded)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        scale = self.size / min(h, w)
        return _resize_pair(image, mask, (max(self.size, round(h * scale)), max(self.size, round(w * scale))))


class CenterCrop:
    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        h, w = image.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return image[:, top:top + self.size, left:left + self.size], mask[top:top + self.size, left:left + self.size]


class RandomScaleCrop:
    """Rescale by a random factor in `scale_range`, pad (mask with IGNORE_INDEX) and crop to `size`."""

    def __init__(self, size: int, scale_range: tuple[float, float]) -> None:
        self.size = size
        self.scale_range = scale_range

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        lo, hi = self.scale_range
        scale = lo + (hi - lo) * torch.rand(()).item()
        h, w = image.shape[-2:]
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        image, mask = _resize_pair(image, mask, (nh, nw))
        ph, pw = max(0, self.size - nh), max(0, self.size - nw)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
        h, w = image.shape[-2:]
        top = int(torch.randint(0, h - self.size + 1, ()).item())
        left = int(torch.randint(0, w - self.size + 1, ()).item())
        sl = (slice(top, top + self.size), slice(left, left + self.size))
        return image[:, sl[0], sl[1]], mask[sl[0], sl[1]]


class RandomHFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if torch.rand(()).item() < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        return (image - self.mean) / self.std, mask


class Compose:
    def __init__(self, steps: Sequence[Callable[[torch.Tensor, torch.Tensor], Pair]]) -> None:
        self.steps = list(steps)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        for step in self.steps:
            image, mask = step(image, mask)
        return image, mask


def _fit(resolution: int, resize: str):
    """`square`: the whole image to resolution x resolution; `short_side`: the short side to resolution."""
    return Resize(resolution) if resize == "square" else ResizeShortSide(resolution)


def train_transforms(resolution: int, mean, std, scale_range, hflip: bool, *, resize: str = "square") -> Compose:
    """Fit (see `_fit`), jitter the scale and crop resolution x resolution at random, flip."""
    steps: list = [_fit(resolution, resize), RandomScaleCrop(resolution, scale_range)]
    if hflip:
        steps.append(RandomHFlip())
    return Compose([*steps, Normalize(mean, std)])


def eval_transforms(resolution: int, mean, std, *, resize: str = "square") -> Compose:
    """Fit (see `_fit`); with `short_side`, the centre resolution x resolution crop is what is evaluated."""
    steps: list = [_fit(resolution, resize)] + ([CenterCrop(resolution)] if resize == "short_side" else [])
    return Compose([*steps, Normalize(mean, std)])
