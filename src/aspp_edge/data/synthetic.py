"""The embedded default dataset: procedural scenes that need multi-scale context.

Each scene is drawn from its own seeded generator (seed, split, index), so a sample's pixels
depend on nothing else: the same seed gives the same pixels, in any order, on any rank.

What makes it a segmentation task for ASPP rather than a texture classifier:
- the class of an object is its *shape* (disc, square, triangle, ring, cross); its fill
  texture and colours are drawn from one pool shared by every class, so a small receptive
  field sees the same stripes or checks on a disc as on a square;
- objects span 10% to 60% of the image side (log-uniform), so the context needed to see a
  shape's outline ranges from a few pixels to most of the image;
- the background is textured too (smooth noise plus a pattern from the same pool) but in muted,
  low-contrast colours, so "object or not" is a local question and "which object" is not;
  everything is covered by pixel noise of random strength;
- objects are drawn in sequence and later ones occlude earlier ones; the mask is what is visible.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .transforms import Compose, to_tensor_pair

CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")
COLORS = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48))
SPLITS = {"train": 0, "val": 1, "calib": 2}

MIN_OBJECTS, MAX_OBJECTS = 3, 8
MIN_SCALE, MAX_SCALE = 0.1, 0.6  # object diameter as a fraction of the image side


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a cells x cells random grid, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = t - i
    f = f * f * (3 - 2 * f)  # smoothstep, hides the grid
    a = grid[i][:, i] * (1 - f)[None, :] + grid[i][:, i + 1] * f[None, :]
    b = grid[i + 1][:, i] * (1 - f)[None, :] + grid[i + 1][:, i + 1] * f[None, :]
    return a * (1 - f)[:, None] + b * f[:, None]


def _texture(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """One fill pattern in [0, 1] from a pool shared by all classes."""
    kind = rng.integers(0, 4)
    if kind == 0:  # stripes at a random orientation and period
        theta, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    if kind == 1:  # checks
        period = rng.uniform(3, 10)
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(float)
    if kind == 2:  # blotches
        return _smooth_noise(rng, size, int(rng.integers(4, 16)))
    return np.full((size, size), rng.uniform(0, 1))  # flat


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test for a unit-radius shape in the object's own (rotated, scaled) frame."""
    r2 = u * u + v * v
    if cls == 1:  # disc
        return r2 <= 1.0
    if cls == 2:  # square, half-side 0.85 of the radius
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85
    if cls == 3:  # equilateral triangle inscribed in the unit circle
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = np.pi / 2 + 2 * np.pi * k / 3
            inside &= (u * np.cos(a) + v * np.sin(a)) >= -0.5
        return inside
    if cls == 4:  # ring
        return (r2 <= 1.0) & (r2 >= 0.5**2)
    if cls == 5:  # cross
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    raise ValueError(f"no shape for class {cls}")


def _background_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two nearby, muted colours: the background's texture has low contrast."""
    base = rng.uniform(50, 205) + rng.normal(0, 20, 3)
    return base, base + rng.normal(0, 35, 3)


def _object_colors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A saturated colour of any hue and a variation of it, the same distribution for every class.

    The fill pattern's contrast stays below the outline's, so the shape is what stands out.
    """
    a = rng.uniform(0, 255, 3)
    a[rng.integers(0, 3)] = rng.choice([rng.uniform(0, 40), rng.uniform(215, 255)])  # push away from grey
    return a, np.clip(a + rng.normal(0, 45, 3), 0, 255)


def render_scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint8 (size, size, 3) RGB image and uint8 (size, size) class-index mask."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    c0, c1 = _background_colors(rng)
    mix = 0.6 * _smooth_noise(rng, size, int(rng.integers(2, 8))) + 0.4 * _texture(rng, size, yy, xx)
    image = c0 * (1 - mix[..., None]) + c1 * mix[..., None]
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        cls = int(rng.integers(1, len(CLASSES)))
        radius = 0.5 * size * np.exp(rng.uniform(np.log(MIN_SCALE), np.log(MAX_SCALE)))
        cy, cx = rng.uniform(0.0, 1.0, 2) * size
        theta = rng.uniform(0, 2 * np.pi)
        dy, dx = (yy - cy) / radius, (xx - cx) / radius
        u, v = dx * np.cos(theta) + dy * np.sin(theta), -dx * np.sin(theta) + dy * np.cos(theta)
        inside = _shape_mask(cls, u, v)
        if not inside.any():
            continue
        a, b = _object_colors(rng)
        fill = _texture(rng, size, yy, xx)[..., None]
        image[inside] = (a * (1 - fill) + b * fill)[inside]
        mask[inside] = cls
    image += rng.normal(0, rng.uniform(4, 16), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class SyntheticSegmentation(Dataset):
    """Deterministic procedural scenes; `split` is 'train', 'val' or 'calib' (disjoint seeds).

    Each scene is rendered once and kept (uint8, size*size*4 bytes: 64 KiB at 128x128): training
    reads every scene once per epoch, and rendering one costs about as much CPU as the model's
    forward and backward pass on it. `cache=False` renders on every access.
    """

    classes = CLASSES
    colors = COLORS

    def __init__(
        self, split: str, *, size: int, length: int, seed: int = 0, transform: Compose | None = None, cache: bool = True
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid choices: {', '.join(SPLITS)}")
        self.split, self.size, self.length, self.seed, self.transform = split, size, length, seed, transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed uint8 image (H, W, 3) and mask (H, W)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        scene = self._cache.get(index) if self._cache is not None else None
        if scene is None:
            scene = render_scene(self.size, np.random.default_rng([self.seed, SPLITS[self.split], index]))
            if self._cache is not None:
                self._cache[index] = scene
        return scene[0].copy(), scene[1].copy()  # callers may write to theirs; the kept scene stays as rendered

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = to_tensor_pair(*self.raw(index))
        return self.transform(image, mask) if self.transform else (image, mask)
