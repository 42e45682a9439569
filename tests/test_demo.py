"""The host demo (`aspp-edge demo`): decoding, letterbox, every Linux runner, overlay and legend."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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


# Where each test image lands in the 64x64 input, by hand: scale s = min(64 / w, 64 / h), the box
# round(w s) x round(h s), centred (offsets floored).
HAND_BOXES = {
    "rgb.png": Box(0, 11, 64, 41),  # 71 x 45: s = 64/71, 45 s = 40.56 -> 41 rows, (64 - 41) // 2 = 11
    "rgba.png": Box(0, 11, 64, 41),
    "grey.png": Box(0, 11, 64, 41),
    "tall.jpg": Box(21, 0, 22, 64),  # 33 x 97: s = 64/97, 33 s = 21.77 -> 22 columns, (64 - 22) // 2 = 21
    "square.png": Box(0, 0, 64, 64),
}


class RedDetector(torch.nn.Module):
    """A hand-made segmenter whose mask is known: class 1 where the pixel's red value is above 127.5,
    class 0 elsewhere, the other classes never. A 1x1 conv on the recipe-normalized input
    x_R = (r / 255 - mean_R) / std_R: logit_1 = 4 (r / 255 - 0.5), logit_0 = 0, the rest -10."""

    def __init__(self, recipe) -> None:
        super().__init__()
        n, (mean_r, std_r) = recipe.num_classes, (recipe.data.mean[0], recipe.data.std[0])
        self.conv = torch.nn.Conv2d(3, n, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.fill_(-10.0)
            self.conv.weight[1, 0] = 4 * std_r
            self.conv.bias[0], self.conv.bias[1] = 0.0, 4 * (mean_r - 0.5)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def red_detector(tmp_path_factory):
    """The hand-made model exported to a real .pte with its manifest, as `aspp-edge export` writes it."""
    from aspp_edge.config import load_recipe
    from aspp_edge.export import ExportSource, export

    recipe = load_recipe("quick")
    source = ExportSource(recipe, model=RedDetector(recipe).eval(), name="red_detector")
    return export(source, "executorch", "fp32", tmp_path_factory.mktemp("red"))


def red_scene() -> tuple[np.ndarray, np.ndarray]:
    """A 32 x 16 image (red background, a black bar and a black block) and its known mask. At 2x
    into the 64x64 input, every image pixel's own 2x2 block keeps its class through the bilinear
    resize, so the mask comes back exactly."""
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2] = 200, 30, 30
    rgb[:, 10:14] = 0
    rgb[10:, 24:] = 0
    return rgb, (rgb[:, :, 0] > 127).astype(np.uint8)


def test_hand_made_model_gives_its_known_mask(red_detector):
    rgb, want = red_scene()
    assert 0 < want.mean() < 1
    seg = segment(load(red_detector), rgb)
    assert seg.box == Box(0, 16, 64, 32)  # 32 x 16 at s = 2: 64 x 32, centred vertically
    assert np.array_equal(seg.mask, want)
    # the letterbox bands are black (class 0); inside the box, each image pixel is a 2x2 block
    assert not seg.model_mask[:16].any() and not seg.model_mask[48:].any()
    assert np.array_equal(seg.model_mask[16:48], np.kron(want, np.ones((2, 2), np.uint8)))


def test_demo_through_every_linux_runner(quick_run, tmp_path):
    images = write_images(tmp_path)
    for path in artifacts(quick_run):
        runner = load(path)
        for name, image in images.items():
            rgb = read_rgb(image)
            seg = segment(runner, rgb)
            assert seg.mask.shape == rgb.shape[:2] and seg.mask.dtype == np.uint8, (path.name, name)
            assert seg.box == HAND_BOXES[name], (path.name, name)
            assert seg.mask.max() < len(runner.manifest["labels"])
            if name == "square.png":  # no letterbox: the mask is the output's argmax as it is
                assert np.array_equal(seg.mask, seg.model_mask)
                # the one round trip kept: the demo's mask is the runner's own argmax on the same input
                want = np.argmax(runner.predict(reference_input(letterbox(rgb, 64, 64)[0], runner.manifest))[0], axis=0)
                assert np.array_equal(seg.model_mask, want), path.name


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


def test_demo_cli_writes_overlay_legend_and_mask(red_detector, tmp_path, capsys):
    rgb, want = red_scene()
    image = tmp_path / "scene.png"
    Image.fromarray(rgb).save(image)
    out, mask = tmp_path / "out" / "overlay.png", tmp_path / "out" / "mask.png"
    assert main(["demo", str(red_detector), "--image", str(image), "--out", str(out), "--mask", str(mask), "--runs", "2"]) == 0
    text = capsys.readouterr().out
    assert "latency: median" in text and "over 2 runs" in text and "executorch" in text
    saved = np.asarray(Image.open(mask))
    assert np.array_equal(saved, want)  # the hand-made model's known mask
    colors = np.asarray(load(red_detector).manifest["colors"], np.float64)
    with Image.open(out) as im:
        assert im.size == (32, 16) and im.mode == "RGB"
        # half the pixel, half its class colour, rounded half to even
        assert np.array_equal(np.asarray(im), np.rint(0.5 * rgb + 0.5 * colors[want]).astype(np.uint8))
    with Image.open(out.with_name("overlay.legend.png")) as im:
        assert im.size[0] > 100 and im.size[1] >= 30


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
