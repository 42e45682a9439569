"""The host demo (`aspp-edge demo`): decoding, letterbox, every Linux runner, overlay and legend."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aspp_edge.cli import main
from aspp_edge.demo import Box, argmax, letterbox, overlay, read_rgb, reference_input, segment, unletterbox
from aspp_edge.errors import AsppEdgeError
from aspp_edge.runtime import load

RNG = np.random.default_rng(7)


def artifacts(quick_run) -> list:
    """Every artifact of the shared quick run: .pte and .tflite fp32 and int8, .mlpackage fp16 and int8."""
    found = sorted(p for p in (quick_run / "sep_aspp" / "artifacts").iterdir() if p.suffix in (".pte", ".tflite", ".mlpackage"))
    assert len(found) == 6
    return found


def write_images(folder) -> dict:
    """RGB, RGBA, greyscale (8 and 16 bit) and odd-sized images, PNG and JPEG."""
    rgb = RNG.integers(0, 256, (45, 71, 3), dtype=np.uint8)
    paths = {}
    for name, array, mode, fmt in (
        ("rgb.png", rgb, "RGB", "PNG"),
        ("rgba.png", np.concatenate([rgb, RNG.integers(0, 256, (45, 71, 1), dtype=np.uint8)], axis=2), "RGBA", "PNG"),
        ("grey.png", rgb[:, :, 0], "L", "PNG"),
        ("tall.jpg", RNG.integers(0, 256, (97, 33, 3), dtype=np.uint8), "RGB", "JPEG"),
        ("square.png", RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB", "PNG"),
    ):
        paths[name] = folder / name
        Image.fromarray(array, mode).save(paths[name], format=fmt)
    return paths


def test_read_rgb_composites_alpha_and_replicates_grey(tmp_path):
    paths = write_images(tmp_path)
    rgba = np.asarray(Image.open(paths["rgba.png"]), dtype=np.int64)
    got = read_rgb(paths["rgba.png"])
    assert got.shape == (45, 71, 3) and got.dtype == np.uint8
    assert np.array_equal(got, np.floor(rgba[:, :, :3] * rgba[:, :, 3:] / 255 + 0.5).astype(np.uint8))  # over black
    grey = read_rgb(paths["grey.png"])
    assert np.array_equal(grey[:, :, 0], grey[:, :, 2]) and np.array_equal(grey[:, :, 1], np.asarray(Image.open(paths["grey.png"])))
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((5, 6), 0xABCD, np.uint16)).save(deep)
    assert np.all(read_rgb(deep) == 0xAB)
    assert read_rgb(paths["tall.jpg"]).shape == (97, 33, 3)
    # a phone photo stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view)
    turned = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.asarray(Image.open(paths["rgb.png"]))).save(turned, format="JPEG", exif=exif)
    assert read_rgb(turned).shape == (71, 45, 3)


@pytest.mark.parametrize("content, message", [(None, "not found"), (b"not an image", "not a readable image"), ("gif", "GIF image")])
def test_bad_image_is_refused(tmp_path, content, message):
    path = tmp_path / "x.png"
    if content == "gif":
        path = tmp_path / "x.gif"
        Image.new("RGB", (4, 4)).save(path, format="GIF")
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(AsppEdgeError, match=message):
        read_rgb(path)


def test_letterbox_geometry_and_its_inverse():
    rgb = RNG.integers(0, 256, (23, 37, 3), dtype=np.uint8)
    canvas, box = letterbox(rgb, 64, 64)
    assert box == Box(0, 12, 64, 40) and canvas.shape == (64, 64, 3)  # 23 * 64 / 37 = 39.8 -> 40 rows, centred
    assert not canvas[:12].any() and not canvas[52:].any() and canvas[12:52].any()
    # a mask that is the column index inside the box maps back to a monotone column map of the image's width
    mask = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    back = unletterbox(mask, box, 37, 23)
    assert back.shape == (23, 37) and np.all(np.diff(back[0].astype(int)) >= 1) and back[0, 0] == 0 and back[0, -1] == 63
    rows = np.repeat(np.arange(64, dtype=np.uint8)[:, None], 64, axis=1)
    assert unletterbox(rows, box, 37, 23)[:, 0].min() >= 12 and unletterbox(rows, box, 37, 23)[:, 0].max() < 52
    same, full = letterbox(canvas, 64, 64)  # already the input's size: untouched
    assert full == Box(0, 0, 64, 64) and np.array_equal(same, canvas)
    assert np.array_equal(unletterbox(mask, full, 64, 64), mask)


def test_overlay_blends_half_and_half():
    rgb = np.array([[[200, 100, 0], [255, 255, 255]]], np.uint8)
    out = overlay(rgb, np.array([[1, 0]], np.uint8), [[0, 0, 0], [100, 50, 255]])
    assert out.tolist() == [[[150, 75, 128], [128, 128, 128]]]  # half to even: 127.5 -> 128


def test_demo_through_every_linux_runner(quick_run, tmp_path):
    images = write_images(tmp_path)
    for path in artifacts(quick_run):
        runner = load(path)
        for name, image in images.items():
            rgb = read_rgb(image)
            seg = segment(runner, rgb)
            assert seg.mask.shape == rgb.shape[:2] and seg.mask.dtype == np.uint8, (path.name, name)
            canvas, box = letterbox(rgb, 64, 64)
            assert seg.box == box
            # the mask is the runner's own argmax on the letterboxed input, mapped back
            want = np.argmax(runner.predict(reference_input(canvas, runner.manifest))[0], axis=0)
            assert np.array_equal(seg.model_mask, want), (path.name, name)
            assert np.array_equal(seg.mask, unletterbox(want.astype(np.uint8), box, rgb.shape[1], rgb.shape[0]))
            if name == "square.png":
                assert np.array_equal(seg.mask, want)


def test_reference_input_is_the_recipe_normalization(quick_run):
    path = artifacts(quick_run)[0]
    runner = load(path)
    pixels = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ref = runner.manifest["reference_normalization"]
    x = reference_input(pixels, runner.manifest)
    c = 1
    assert x.shape == (1, 3, 64, 64)
    assert np.allclose(x[0, c], (pixels[:, :, c] / 255.0 - ref["mean"][c]) / ref["std"][c], atol=1e-5)
    assert argmax(np.stack([np.zeros((2, 2)), np.zeros((2, 2))])[None]).tolist() == [[0, 0], [0, 0]]  # ties: lowest class


def test_demo_cli_writes_overlay_legend_and_mask(quick_run, tmp_path, capsys):
    images = write_images(tmp_path)
    artifact = next(p for p in artifacts(quick_run) if p.name.endswith("_tflite_int8.tflite"))
    out, mask = tmp_path / "out" / "overlay.png", tmp_path / "out" / "mask.png"
    assert main(["demo", str(artifact), "--image", str(images["rgba.png"]), "--out", str(out), "--mask", str(mask), "--runs", "2"]) == 0
    text = capsys.readouterr().out
    assert "latency: median" in text and "over 2 runs" in text and "litert" in text
    with Image.open(out) as im:
        assert im.size == (71, 45) and im.mode == "RGB"
    with Image.open(out.with_name("overlay.legend.png")) as im:
        assert im.size[0] > 100 and im.size[1] >= 30
    saved = np.asarray(Image.open(mask))
    assert saved.shape == (45, 71) and saved.max() < len(load(artifact).manifest["labels"])
    seg = segment(load(artifact), read_rgb(images["rgba.png"]))
    assert np.array_equal(saved, seg.mask)
    assert np.array_equal(np.asarray(Image.open(out)), overlay(read_rgb(images["rgba.png"]), saved, load(artifact).manifest["colors"]))


@pytest.mark.parametrize("case, message", [
    ("no-image", "not found"), ("jpg-out", "must name a .png"), ("not-artifact", "unknown artifact type"), ("runs", "at least 1"),
])
def test_demo_bad_input_is_one_clear_error(quick_run, tmp_path, capsys, case, message):
    images = write_images(tmp_path)
    artifact = str(artifacts(quick_run)[0])
    argv = {"no-image": ["demo", artifact, "--image", str(tmp_path / "missing.png")],
            "jpg-out": ["demo", artifact, "--image", str(images["rgb.png"]), "--out", str(tmp_path / "o.jpg")],
            "not-artifact": ["demo", str(images["rgb.png"]), "--image", str(images["rgb.png"])],
            "runs": ["demo", artifact, "--image", str(images["rgb.png"]), "--runs", "0"]}[case]
    before = set(tmp_path.iterdir())
    assert main(argv + (["--out", str(tmp_path / "o.png")] if case != "jpg-out" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and sum(line.startswith("aspp-edge: error:") for line in err.splitlines()) == 1
    assert set(tmp_path.iterdir()) == before  # nothing written
