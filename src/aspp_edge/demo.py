"""The host demo: one image through any artifact, with exactly the pre/post-processing of
mobile_demo/CONTRACT.md, which the Android and iOS apps implement too.

`read_rgb(path)` decodes any PNG/JPEG to 8-bit RGB (greyscale replicated, alpha composited over
black); `letterbox` fits it into the model's input keeping its aspect ratio; the runner applies
the manifest's normalization, layout and int8 (de)quantization; `argmax` picks the class (ties to
the lowest index); `unletterbox` maps the mask back to the image with nearest neighbour;
`overlay` blends the label colours over the image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AsppEdgeError

OVERLAY_ALPHA = 0.5  # overlay = (1 - a) * pixel + a * colour, rounded half to even
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Box:
    """Where the resized image sits inside the model's input: offset (x, y) and size (w, h)."""

    x: int
    y: int
    w: int
    h: int


@dataclass
class Segmentation:
    image: np.ndarray  # H x W x 3 uint8, what the model saw before letterboxing
    mask: np.ndarray  # H x W uint8 class indices, at the image's size
    model_mask: np.ndarray  # the argmax at the output's size, letterbox included
    box: Box
    latency_ms: list[float] = field(default_factory=list)
    evaluated_by: str = ""


def read_rgb(path: str | Path) -> np.ndarray:
    """Any PNG/JPEG as H x W x 3 uint8 RGB: EXIF orientation applied, greyscale replicated, alpha
    composited over black."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise AsppEdgeError(f"image {str(path)!r} not found")
    try:
        with Image.open(path) as im:
            im.load()
            fmt = im.format
            im = ImageOps.exif_transpose(im)  # phone photos: pixels as the camera held them
            if im.mode.startswith("I"):  # 16-bit greyscale: its top 8 bits
                grey = np.asarray(im, dtype=np.int64)
                grey = np.clip(grey >> 8 if im.mode.startswith("I;16") or grey.max() > 255 else grey, 0, 255).astype(np.uint8)
                return np.repeat(grey[:, :, None], 3, axis=2)
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
    except (UnidentifiedImageError, OSError) as exc:
        raise AsppEdgeError(f"{str(path)!r} is not a readable image ({exc}); valid formats: PNG, JPEG") from exc
    if fmt not in ("PNG", "JPEG", "MPO"):  # MPO: the multi-picture JPEG many phone cameras write
        raise AsppEdgeError(f"{str(path)!r} is a {fmt} image; valid formats: PNG, JPEG")
    alpha = rgba[:, :, 3:4]
    return ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)  # round(c * a / 255)


def letterbox(rgb: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Box]:
    """Resize (bilinear) to fit width x height keeping the aspect ratio, centred on black."""
    from PIL import Image

    h, w = rgb.shape[:2]
    s = min(width / w, height / h)
    box_w, box_h = max(1, min(width, round(w * s))), max(1, min(height, round(h * s)))
    box = Box((width - box_w) // 2, (height - box_h) // 2, box_w, box_h)
    canvas = np.zeros((height, width, 3), np.uint8)
    resized = rgb if (box_w, box_h) == (w, h) else np.asarray(Image.fromarray(rgb).resize((box_w, box_h), Image.BILINEAR))
    canvas[box.y : box.y + box_h, box.x : box.x + box_w] = resized
    return canvas, box


def unletterbox(mask: np.ndarray, box: Box, width: int, height: int, scale: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The mask inside `box` (model-input coordinates; `scale` = output / input size), nearest
    neighbour at pixel centres, back at width x height."""
    sy, sx = scale
    ys = np.floor((box.y + (np.arange(height) + 0.5) * box.h / height) * sy).astype(np.int64)
    xs = np.floor((box.x + (np.arange(width) + 0.5) * box.w / width) * sx).astype(np.int64)
    ys, xs = np.clip(ys, 0, mask.shape[0] - 1), np.clip(xs, 0, mask.shape[1] - 1)
    return mask[ys[:, None], xs[None, :]]


def reference_input(canvas: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """H x W x 3 pixels -> the (1, 3, H, W) float32 input the float reference takes; the runner
    converts it to the artifact's own input (normalization, layout, int8) per its manifest."""
    ref = manifest["reference_normalization"]
    mean, std = (np.asarray(ref[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    x = canvas.astype(np.float32).transpose(2, 0, 1)[None] * np.float32(ref["pixel_scale"])
    return ((x - mean) / std).astype(np.float32)


def argmax(logits: np.ndarray) -> np.ndarray:
    """(1, C, H, W) logits -> H x W uint8 classes; ties go to the lowest class index."""
    return np.argmax(logits[0], axis=0).astype(np.uint8)


def segment(runner, rgb: np.ndarray, *, runs: int = 1) -> Segmentation:
    """Letterbox, predict `runs` times (the first untimed when runs > 1), argmax, map back."""
    _, _, in_h, in_w = runner.input_shape
    canvas, box = letterbox(rgb, in_w, in_h)
    x = reference_input(canvas, runner.manifest)
    times, logits = [], None
    for i in range(max(1, runs) + (1 if runs > 1 else 0)):
        start = time.perf_counter()
        logits = runner.predict(x)
        if runs == 1 or i > 0:
            times.append((time.perf_counter() - start) * 1e3)
    model_mask = argmax(logits)
    scale = (model_mask.shape[0] / in_h, model_mask.shape[1] / in_w)
    mask = unletterbox(model_mask, box, rgb.shape[1], rgb.shape[0], scale)
    return Segmentation(image=rgb, mask=mask, model_mask=model_mask, box=box, latency_ms=times, evaluated_by=runner.evaluated_by)


def overlay(rgb: np.ndarray, mask: np.ndarray, colors: list[list[int]], alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    palette = np.zeros((256, 3), np.float64)
    palette[: len(colors)] = np.asarray(colors, np.float64)
    blended = (1.0 - alpha) * rgb.astype(np.float64) + alpha * palette[mask]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def legend(mask: np.ndarray, labels: list[str], colors: list[list[int]]) -> list[tuple[int, str, list[int], float]]:
    """(class, label, colour, fraction of pixels) of every class present, most pixels first."""
    counts = np.bincount(mask.reshape(-1), minlength=len(labels))
    order = sorted((i for i in range(len(labels)) if counts[i]), key=lambda i: (-counts[i], i))
    return [(i, labels[i], list(colors[i]), counts[i] / mask.size) for i in order]


def legend_png(entries: list[tuple[int, str, list[int], float]], path: Path) -> None:
    from PIL import Image, ImageDraw

    row, width = 22, 260
    im = Image.new("RGB", (width, row * max(1, len(entries)) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for k, (_, name, color, frac) in enumerate(entries):
        y = 4 + k * row
        draw.rectangle([6, y + 3, 24, y + row - 3], fill=tuple(color), outline=(0, 0, 0))
        draw.text((32, y + 5), f"{name}  {100 * frac:.1f}%", fill=(0, 0, 0))
    im.save(path, format="PNG")


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an RGB (H x W x 3) or class-index (H x W) uint8 array as a PNG, atomically."""
    from PIL import Image

    from .fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
    return path


def run_demo(artifact: str | Path, image: str | Path, out: str | Path = "overlay.png", *, mask_out: str | Path | None = None,
             runs: int = 5, threads: int | None = None) -> tuple[Segmentation, dict[str, Path]]:
    """`aspp-edge demo`: overlay PNG (the image's size) and a legend PNG beside it (`<out stem>.legend.png`)."""
    from .runtime import check_artifact, load

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise AsppEdgeError(f"--out {str(out)!r} must name a .png file")
    if runs < 1:
        raise AsppEdgeError(f"--runs {runs} must be at least 1")
    rgb = read_rgb(image)  # the image first: a bad one fails before the runtime loads
    runner = load(check_artifact(artifact), threads=threads)
    seg = segment(runner, rgb, runs=runs)
    labels, colors = runner.manifest["labels"], runner.manifest["colors"]
    paths = {"overlay": save_png(overlay(rgb, seg.mask, colors), out)}
    legend_path = out.with_name(out.stem + ".legend.png")
    from .fileio import atomic_path

    with atomic_path(legend_path) as tmp:
        legend_png(legend(seg.mask, labels, colors), tmp)
    paths["legend"] = legend_path
    if mask_out is not None:
        paths["mask"] = save_png(seg.mask, mask_out)
    return seg, paths
