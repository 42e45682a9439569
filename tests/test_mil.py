"""The MIL reference interpreter (runtime/mil.py): each op against the matching torch op, programs
read back from saved packages, and every head's Core ML export interpreted against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aspp_edge.calibration.report import sqnr_db
from aspp_edge.runtime import mil
from aspp_edge.runtime.mil import MILError

RNG = np.random.default_rng(0)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _close(a, b, atol=1e-4):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-4, atol=atol)


# ----------------------------------------------------------------------------- conv

@pytest.mark.parametrize(
    "cin, cout, k, stride, dilation, groups, pad",
    [
        (4, 6, 3, 1, 1, 1, 1),  # dense 3x3
        (4, 6, 3, 1, 2, 1, 2),  # dense dilated
        (8, 8, 3, 1, 6, 8, 6),  # depthwise atrous (sep_aspp's branches)
        (8, 8, 3, 2, 1, 8, 1),  # depthwise strided (MobileNet)
        (8, 16, 3, 1, 3, 8, 3),  # depthwise with channel multiplier 2
        (8, 12, 1, 1, 1, 1, 0),  # pointwise
        (8, 12, 3, 2, 1, 2, 1),  # grouped, strided
        (3, 5, 3, 2, 1, 1, 0),  # valid, strided, odd size
    ],
)
def test_conv_matches_torch(cin, cout, k, stride, dilation, groups, pad):
    x, w, b = _x(1, cin, 13, 11), _x(cout, cin // groups, k, k), _x(cout)
    ours = mil.op_conv(x, w, b, strides=np.array([stride, stride]), pad_type="custom", pad=np.array([pad] * 4),
                       dilations=np.array([dilation, dilation]), groups=np.int32(groups))
    ref = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, pad, dilation, groups)
    _close(ours, ref)


def test_conv_asymmetric_custom_pad_and_same_modes():
    x, w = _x(1, 2, 9, 10), _x(3, 2, 3, 3)
    ours = mil.op_conv(x, w, pad_type="custom", pad=np.array([0, 2, 1, 0]))  # [top, bottom, left, right]
    ref = F.conv2d(F.pad(torch.from_numpy(x), (1, 0, 0, 2)), torch.from_numpy(w))
    _close(ours, ref)
    # same: output = ceil(in / stride); the odd remainder of the padding goes after ("same") or before ("same_lower")
    ours = mil.op_conv(x, w, strides=np.array([2, 2]), pad_type="same", dilations=np.array([1, 1]))
    _close(ours, F.conv2d(F.pad(torch.from_numpy(x), (0, 1, 1, 1)), torch.from_numpy(w), stride=2))
    ours = mil.op_conv(x, w, strides=np.array([2, 2]), pad_type="same_lower")
    _close(ours, F.conv2d(F.pad(torch.from_numpy(x), (1, 0, 1, 1)), torch.from_numpy(w), stride=2))
    ours = mil.op_conv(x, w, pad_type="same", dilations=np.array([2, 2]))
    _close(ours, F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding="same", dilation=2))


def test_conv_bad_groups_and_pad_type_are_named():
    with pytest.raises(MILError, match="groups=3"):
        mil.op_conv(_x(1, 4, 5, 5), _x(4, 1, 3, 3), groups=3)
    with pytest.raises(MILError, match="pad_type 'reflect'; valid choices: custom, same, same_lower, valid"):
        mil.op_conv(_x(1, 4, 5, 5), _x(4, 4, 3, 3), pad_type="reflect")


# ----------------------------------------------------------------------------- resize

@pytest.mark.parametrize("scale", [2.0, 4.0, 8.0, 1.5])
def test_upsample_bilinear_half_pixel_matches_torch(scale):
    x = _x(1, 3, 5, 7)
    ours = mil.op_upsample_bilinear(x, scale, scale, align_corners=False)
    ref = F.interpolate(torch.from_numpy(x), scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=True)
    _close(ours, ref)


def test_upsample_bilinear_align_corners_and_asymmetric():
    x = _x(1, 2, 4, 6)
    ours = mil.op_upsample_bilinear(x, 3.0, 2.0, align_corners=True)
    _close(ours, F.interpolate(torch.from_numpy(x), size=(12, 12), mode="bilinear", align_corners=True))
    # align_corners=False, half_pixel_centers=False: TF's legacy src = i * in / out, clamped
    line = np.array([[[[0.0, 1.0]]]], np.float32)
    ours = mil.op_upsample_bilinear(line, 1.0, 2.0, align_corners=False, half_pixel_centers=False)
    _close(ours, [[[[0.0, 0.5, 1.0, 1.0]]]])
    with pytest.raises(MILError, match="cannot both be true"):
        mil.op_upsample_bilinear(line, 1.0, 2.0, align_corners=True, half_pixel_centers=True)
    # a 1x1 map (the image-pooling branch) broadcasts to every pixel in every mode
    one = _x(1, 4, 1, 1)
    _close(mil.op_upsample_bilinear(one, 8.0, 8.0, align_corners=False), np.broadcast_to(one, (1, 4, 8, 8)))


def test_resize_bilinear_sampling_modes():
    x = _x(1, 2, 5, 4)
    t = torch.from_numpy(x)
    _close(mil.op_resize_bilinear(x, 9, 7, "UNALIGN_CORNERS"), F.interpolate(t, size=(9, 7), mode="bilinear", align_corners=False))
    _close(mil.op_resize_bilinear(x, 9, 7, "ALIGN_CORNERS"), F.interpolate(t, size=(9, 7), mode="bilinear", align_corners=True))
    with pytest.raises(MILError, match="sampling_mode 'OFFSET_CORNERS'.*valid choices: ALIGN_CORNERS"):
        mil.op_resize_bilinear(x, 9, 7, "OFFSET_CORNERS")


# ----------------------------------------------------------------------------- quantization

def test_quantize_per_tensor_matches_torch_at_the_boundaries():
    scale, zp = 0.05, 3
    # saturation both ways, exact half steps (round half to even, as torch), and ordinary values
    x = np.concatenate([[-1e3, 1e3, -6.5, 6.5], (np.arange(-8, 8) + 0.5) * scale, _x(64)]).astype(np.float32)
    q = mil.op_quantize(x, np.float32(scale), "int8", zero_point=np.int8(zp))
    ref = torch.quantize_per_tensor(torch.from_numpy(x), scale, zp, torch.qint8)
    assert q.dtype == np.int8 and q.min() == -128 and q.max() == 127
    np.testing.assert_array_equal(q, ref.int_repr().numpy())
    _close(mil.op_dequantize(q, np.float32(scale), np.int8(zp)), ref.dequantize())


def test_quantize_uint8_and_per_channel_match_torch():
    x = _x(1, 4, 3, 3) * 3
    q = mil.op_quantize(x, np.float32(0.02), "uint8", zero_point=np.uint8(128))
    ref = torch.quantize_per_tensor(torch.from_numpy(x), 0.02, 128, torch.quint8)
    np.testing.assert_array_equal(q, ref.int_repr().numpy())
    scales, zps = np.array([0.01, 0.02, 0.05, 0.1], np.float32), np.array([0, -3, 5, 0], np.int8)
    q = mil.op_quantize(x, scales, "int8", zero_point=zps, axis=np.int32(1))
    ref = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(scales).double(), torch.from_numpy(zps).long(), 1, torch.qint8)
    np.testing.assert_array_equal(q, ref.int_repr().numpy())
    _close(mil.op_dequantize(q, scales, zps, axis=np.int32(1)), ref.dequantize())


def test_constexpr_affine_dequantize_per_output_channel():
    w = RNG.integers(-128, 128, (6, 2, 3, 3)).astype(np.int8)
    scale, zp = RNG.uniform(0.01, 0.1, 6).astype(np.float16), np.zeros(6, np.int8)
    ours = mil.op_constexpr_affine_dequantize(w, zp, scale, np.int32(0))
    _close(ours, w.astype(np.float32) * scale.astype(np.float32).reshape(6, 1, 1, 1))


# ----------------------------------------------------------------------------- the rest of the subset

def test_pool_reduce_concat_and_activations_match_torch():
    x = _x(1, 4, 7, 6)
    t = torch.from_numpy(x)
    _close(mil.op_avg_pool(x, np.array([3, 3]), np.array([2, 2]), "custom", np.array([1, 1, 1, 1]), exclude_padding_from_average=False),
           F.avg_pool2d(t, 3, 2, 1, count_include_pad=True))
    _close(mil.op_avg_pool(x, np.array([3, 3]), np.array([2, 2]), "custom", np.array([1, 1, 1, 1]), exclude_padding_from_average=True),
           F.avg_pool2d(t, 3, 2, 1, count_include_pad=False))
    _close(mil.op_reduce_mean(x, np.array([-2, -1]), keep_dims=True), t.mean((-2, -1), keepdim=True))
    y = _x(1, 2, 7, 6)
    _close(mil.op_concat([x, y], np.int32(1)), torch.cat([t, torch.from_numpy(y)], 1))
    inter = mil.op_concat([x[:, :2], y], np.int32(1), interleave=True)
    _close(inter[:, 0::2], x[:, :2]), _close(inter[:, 1::2], y)
    ops = mil.OPS
    _close(ops["sigmoid"](x * 20), torch.sigmoid(t * 20))
    _close(ops["sigmoid_hard"](x * 4, alpha=np.float32(1 / 6), beta=np.float32(0.5)), F.hardsigmoid(t * 4))
    _close(ops["relu6"](x * 8), F.relu6(t * 8))
    _close(ops["clip"](x, alpha=np.float32(-0.5), beta=np.float32(0.25)), t.clamp(-0.5, 0.25))
    _close(ops["thresholded_relu"](x, alpha=np.float32(0.3)), torch.where(t > 0.3, t, 0))
    _close(ops["real_div"](x, y[:, :1] + 3), t / (torch.from_numpy(y[:, :1]) + 3))
    assert mil.op_cast(np.array([1.5, 70000.0], np.float32), "fp16").dtype == np.float16
    with pytest.raises(MILError, match="cast to 'fp8'.*valid choices"):
        mil.op_cast(x, "fp8")


# ----------------------------------------------------------------------------- programs from saved packages

def _save(prog, path, precision="fp16"):
    import coremltools as ct

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                       compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)
    model.save(str(path))
    return path


def test_fp16_program_holds_fp16_values_between_ops(tmp_path):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 2, 3, 3))])
    def prog(x):
        return mb.add(x=mb.mul(x=x, y=np.float32(1.0 / 3.0)), y=np.float32(1e-4))

    path = _save(prog, tmp_path / "fp16.mlpackage")
    program = mil.MILProgram(path)
    x = _x(1, 2, 3, 3)
    (name,) = program.outputs
    out = program.run({"x": x})[name]
    third = np.float16(1.0 / 3.0).astype(np.float32)
    expected = ((x.astype(np.float16).astype(np.float32) * third).astype(np.float16).astype(np.float32) + np.float32(np.float16(1e-4)))
    # bit-exact fp16 rounding after each op (the program casts its fp16 result back to the fp32 output)
    np.testing.assert_array_equal(out, expected.astype(np.float16).astype(np.float32))
    assert not np.array_equal(out.astype(np.float32), x / 3 + 1e-4)  # and it is not the fp32 result


def test_op_outside_the_subset_is_refused_by_name(tmp_path):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 2, 2))])
    def prog(x):
        return mb.softmax(x=x, axis=1)

    path = _save(prog, tmp_path / "softmax.mlpackage", "fp32")
    with pytest.raises(MILError, match=r"op\(s\) 'softmax' outside the reference interpreter's subset: add, .*conv"):
        mil.MILProgram(path)


def test_corrupt_weight_file_is_named(tmp_path):
    from coremltools.converters.mil import Builder as mb

    w = _x(8, 4, 3, 3)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 6, 6))])
    def prog(x):
        return mb.conv(x=x, weight=w, pad_type="same")

    path = _save(prog, tmp_path / "conv.mlpackage", "fp32")
    program = mil.MILProgram(path)
    x = _x(1, 4, 6, 6)
    (name,) = program.outputs
    _close(program.run({"x": x})[name], F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1))
    blob = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(blob.read_bytes())
    data[64:68] = b"\0\0\0\0"  # the first record's sentinel
    blob.write_bytes(bytes(data))
    with pytest.raises(MILError, match="weight record at offset 64 .* is corrupt"):
        mil.MILProgram(path)


# ----------------------------------------------------------------------------- every head, exported and interpreted

@pytest.fixture(scope="module")
def tiny_recipe(quick_recipe):
    return quick_recipe.replace(model={"width_mult": 0.25, "head_channels": 16})


def _heads():
    from aspp_edge.models import list_models

    from .test_export import CORE_HEADS

    # the core heads' trained packages are interpreted and compared in test_export (with .pte/.tflite too)
    # make test converts sep_se_aspp (separable atrous + SE gate) and hdc_aspp (stacked dilations): between them
    # every op the other heads use; aspp, aspp_nobn, sep_aspp and se_aspp are the full tier
    fast = ("sep_se_aspp", "hdc_aspp")
    return [pytest.param(h, marks=pytest.mark.slow) if h in CORE_HEADS else h if h in fast else pytest.param(h, marks=pytest.mark.full)
            for h in list_models()]


@pytest.mark.parametrize("head", _heads())
def test_every_head_coreml_program_matches_pytorch(head, tiny_recipe, tmp_path):
    """fp16 package vs PyTorch float (agreement >= 0.995) and W8A8 package vs the PyTorch int8
    program (agreement >= 0.99, SQNR >= 25 dB), on an untrained (seeded) model of each head: this
    checks the conversion of every head's ops; trained packages are checked in test_export and in
    the `aspp-edge run` report."""
    from aspp_edge import runtime
    from aspp_edge.config import PTQConfig
    from aspp_edge.export import ExportSource, export
    from aspp_edge.models import create_model
    from aspp_edge.quantize import quantize

    torch.manual_seed(0)
    recipe = tiny_recipe.replace(model={"head": head})
    model = create_model(head, **{**recipe.model_kwargs(), "backbone_weights": None}).eval()
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (6, 3, 64, 64), generator=gen).float()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (recipe.data.mean, recipe.data.std))
    images = (pixels / 255 - mean) / std  # whole pixel values: the image input sees exactly these
    q = quantize(model, PTQConfig(observer="minmax"), calibration=[images[:4]])
    source = ExportSource(recipe, model=model, program=q.convert(fold_quantize=False), method="ptq", name=f"t_{head}")
    with torch.no_grad():
        float_logits, int8_logits = model(images).numpy(), source.program(images).numpy()
    fp16 = runtime.load(export(source, "coreml", "fp16", tmp_path)).predict(images)
    agreement = (fp16.argmax(1) == float_logits.argmax(1)).mean()
    assert agreement >= 0.995, f"{head} fp16: agreement {agreement:.4f}"
    int8 = runtime.load(export(source, "coreml", "int8", tmp_path)).predict(images)
    agreement = (int8.argmax(1) == int8_logits.argmax(1)).mean()
    sqnr = sqnr_db(torch.from_numpy(int8_logits), torch.from_numpy(int8))
    assert agreement >= 0.99 and sqnr >= 25.0, f"{head} W8A8: agreement {agreement:.4f}, SQNR {sqnr:.1f} dB"


@pytest.mark.macos
@pytest.mark.skipif(__import__("platform").system() != "Darwin", reason="needs macOS (Core ML prediction)")
def test_interpreter_matches_core_ml_on_macos(tmp_path):
    """On a Mac, the interpreter and Core ML itself run the same saved program (CPU only)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    w, dw = _x(8, 4, 3, 3), _x(8, 1, 3, 3)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 16, 16))])
    def prog(x):
        y = mb.relu(x=mb.conv(x=x, weight=w, pad_type="same"))
        y = mb.conv(x=y, weight=dw, groups=8, dilations=[4, 4], pad_type="custom", pad=[4, 4, 4, 4])
        return mb.upsample_bilinear(x=y, scale_factor_height=2.0, scale_factor_width=2.0, align_corners=False)

    path = _save(prog, tmp_path / "p.mlpackage", "fp32")
    x = _x(1, 4, 16, 16)
    ours = mil.MILProgram(path).run({"x": x})
    (name,) = ours
    theirs = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY).predict({"x": x})[name]
    _close(ours[name], theirs, atol=1e-3)
