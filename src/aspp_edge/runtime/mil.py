"""A numpy reference interpreter for the Core ML ML Programs (MIL) our exporter writes.

Core ML predicts only on macOS, so on Linux the `.mlpackage` is checked by executing its program
here: the program and its weights are read from the saved package (`model.mlmodel` protobuf and
`weights/weight.bin`), never from the converter's in-memory objects, so what is checked is what
ships. The interpreter runs the op subset our heads use (`SUPPORTED_OPS`); a program holding any
other op is refused when it is loaded, naming the op.

Precision follows the program: each op computes in float32 from its inputs and rounds its result
to the dtype the program declares for that output (fp16 where the program says fp16), so every
tensor between ops holds exactly the values an fp16 program can hold. Accumulation inside an op
is float32, as on Core ML's CPU and GPU paths; the Neural Engine's own accumulation order is not
modelled. This checks the program (op semantics, padding, dilation, resize modes, quantization
parameters, the ImageType preprocessing), not Apple's kernels, and it reports no latency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AsppEdgeError
from ..formats.files import load_mlpackage_spec

NAME = "mil-reference"  # what reports write in evaluated_by for figures from this interpreter
WEIGHTS_PREFIX = "@model_path/"
_BLOB_SENTINEL = 0xDEADBEEF
_NUMPY = {
    "BOOL": np.bool_, "FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64, "STRING": np.object_,
}
_CAST = {"fp16": np.float16, "fp32": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
         "uint16": np.uint16, "int32": np.int32, "bool": np.bool_}


class MILError(AsppEdgeError):
    """A Core ML program the reference interpreter cannot read or run."""


# ----------------------------------------------------------------------------- reading the package

class _Weights:
    """The package's weight files (MIL blob storage v2), read on first use."""

    def __init__(self, package: Path) -> None:
        self.root = package / "Data" / "com.apple.CoreML"
        self._files: dict[str, bytes] = {}

    def read(self, file_name: str, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        if not file_name.startswith(WEIGHTS_PREFIX):
            raise MILError(f"weight file {file_name!r} is not inside the package ({WEIGHTS_PREFIX}...)")
        if file_name not in self._files:
            path = self.root / file_name[len(WEIGHTS_PREFIX):]
            try:
                self._files[file_name] = path.read_bytes()
            except OSError as exc:
                raise MILError(f"weight file {str(path)!r} of the package cannot be read: {exc}") from exc
        data = self._files[file_name]
        # a 64-byte record per blob: sentinel u32, blob dtype u32, size u64, data offset u64, reserved
        if offset + 24 > len(data):
            raise MILError(f"weight record at offset {offset} lies outside {file_name!r} ({len(data)} bytes)")
        sentinel, _, size, start = np.frombuffer(data, np.dtype("<u4, <u4, <u8, <u8"), count=1, offset=offset)[0]
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if sentinel != _BLOB_SENTINEL or size != expected or start + size > len(data):
            raise MILError(f"weight record at offset {offset} of {file_name!r} is corrupt "
                           f"(sentinel {sentinel:#x}, {size} bytes at {start}; expected {expected} bytes of {np.dtype(dtype).name})")
        return np.frombuffer(data, dtype, count=int(np.prod(shape, dtype=np.int64)), offset=int(start)).reshape(shape)


def _data_type(value_type) -> tuple[np.dtype, tuple[int, ...] | None]:
    """(numpy dtype, shape or None when a dimension is not constant) of a MIL ValueType."""
    from coremltools.proto import MIL_pb2

    if value_type.WhichOneof("type") != "tensorType":
        raise MILError(f"MIL value type {value_type.WhichOneof('type')!r} is not supported (tensors only)")
    t = value_type.tensorType
    name = MIL_pb2.DataType.Name(t.dataType)
    if name not in _NUMPY:
        raise MILError(f"MIL data type {name} is not supported; valid choices: {', '.join(sorted(_NUMPY))}")
    dims = []
    for d in t.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return np.dtype(_NUMPY[name]), None
        dims.append(int(d.constant.size))
    return np.dtype(_NUMPY[name]), tuple(dims)


def _value(value, weights: _Weights) -> np.ndarray:
    """A MIL Value (immediate or in the weight file) as a numpy array of its declared dtype and shape."""
    dtype, shape = _data_type(value.type)
    kind = value.WhichOneof("value")
    if kind == "blobFileValue":
        return weights.read(value.blobFileValue.fileName, value.blobFileValue.offset, dtype, shape or ())
    if kind != "immediateValue" or value.immediateValue.WhichOneof("value") != "tensor":
        raise MILError(f"MIL value of kind {kind!r} is not supported (tensor constants only)")
    tensor = value.immediateValue.tensor
    field = tensor.WhichOneof("value")
    if field == "bytes":
        array = np.frombuffer(tensor.bytes.values, dtype)
    elif field is None:
        array = np.zeros(0, dtype)
    else:
        array = np.asarray(list(getattr(tensor, field).values), dtype=dtype)
    return array.reshape(shape) if shape is not None else array


# ----------------------------------------------------------------------------- ops

def _scalar(v: Any, default: Any = None) -> Any:
    if v is None:
        return default
    a = np.asarray(v)
    return a.item() if a.ndim == 0 or a.size == 1 else a


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _pads(pad_type: str, pad: np.ndarray | None, size: tuple[int, ...], kernel: tuple[int, ...],
          strides: tuple[int, ...], dilations: tuple[int, ...], ceil_mode: bool = False) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim for MIL's pad_type valid | same | same_lower | custom."""
    if pad_type == "valid":
        return [(0, 0)] * len(size)
    if pad_type == "custom":
        p = [int(v) for v in np.asarray(pad).reshape(-1)]
        if len(p) != 2 * len(size):
            raise MILError(f"custom pad {p} needs {2 * len(size)} values for {len(size)} spatial dims")
        return [(p[2 * i], p[2 * i + 1]) for i in range(len(size))]
    if pad_type in ("same", "same_lower"):
        out = []
        for n, k, s, d in zip(size, kernel, strides, dilations):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if pad_type == "same" else (big, small))
        return out
    raise MILError(f"unknown pad_type {pad_type!r}; valid choices: custom, same, same_lower, valid")


def _taps(x: np.ndarray, kernel, strides, dilations, pads, value: float = 0.0) -> tuple[list[np.ndarray], tuple[int, int]]:
    """The kh*kw strided views (N, C, Ho, Wo) of the padded NCHW `x`, one per kernel tap, row-major."""
    if x.ndim != 4:
        raise MILError(f"conv/pool inputs must be rank 4 (NCHW); got shape {x.shape}")
    xp = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]), constant_values=value) if any(sum(pads, ())) else x
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    ho = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise MILError(f"kernel {kernel} (dilation {dilations}) is larger than the padded input {xp.shape[2:]}")
    taps = [xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            for i in range(kh) for j in range(kw)]
    return taps, (ho, wo)


def op_conv(x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1, **_):
    x, w = _f32(x), _f32(weight)
    n, cin = x.shape[:2]
    cout, cin_g, kh, kw = w.shape
    groups = int(_scalar(groups, 1))
    if cin_g * groups != cin or cout % groups:
        raise MILError(f"conv: weight {w.shape} with groups={groups} does not fit input channels {cin}")
    strides = tuple(int(v) for v in (strides if strides is not None else (1, 1)))
    dilations = tuple(int(v) for v in (dilations if dilations is not None else (1, 1)))
    pads = _pads(str(_scalar(pad_type, "valid")), pad, x.shape[2:], (kh, kw), strides, dilations)
    if (kh, kw, *strides) == (1, 1, 1, 1) and not any(sum(pads, ())) and groups == 1:  # pointwise: one matmul
        y = np.matmul(w.reshape(cout, cin), x.reshape(n, cin, -1)).reshape(n, cout, *x.shape[2:])
    elif cin_g == 1 and cout == groups:  # depthwise: one multiply-add per tap over all channels
        taps, (ho, wo) = _taps(x, (kh, kw), strides, dilations, pads)
        y = np.zeros((n, cout, ho, wo), np.float32)
        for k, tap in enumerate(taps):
            y += tap * w.reshape(cout, kh * kw)[:, k].reshape(1, cout, 1, 1)
    else:
        taps, (ho, wo) = _taps(x, (kh, kw), strides, dilations, pads)
        cols = np.stack(taps, axis=2).reshape(n, groups, cin_g * kh * kw, ho * wo)  # channel-major, then tap: as w's (cin_g, kh, kw)
        y = np.matmul(w.reshape(groups, cout // groups, cin_g * kh * kw), cols).reshape(n, cout, ho, wo)
    if bias is not None:
        y = y + _f32(bias).reshape(1, -1, 1, 1)
    return y


def op_avg_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, exclude_padding_from_average=False,
                ceil_mode=False, **_):
    if bool(_scalar(ceil_mode, False)):
        raise MILError("avg_pool with ceil_mode=True is not supported by the reference interpreter")
    x = _f32(x)
    kernel = tuple(int(v) for v in kernel_sizes)
    strides = tuple(int(v) for v in (strides if strides is not None else (1, 1)))
    pads = _pads(str(_scalar(pad_type, "valid")), pad, x.shape[2:], kernel, strides, (1, 1))
    total = sum(_taps(x, kernel, strides, (1, 1), pads)[0])
    if bool(_scalar(exclude_padding_from_average, False)):
        return total / sum(_taps(np.ones((1, 1) + x.shape[2:], np.float32), kernel, strides, (1, 1), pads)[0])
    return total / (kernel[0] * kernel[1])


def _resize_axis(x: np.ndarray, axis: int, size_out: int, mode: str) -> np.ndarray:
    """Linear interpolation along `axis` to `size_out` samples.

    mode: align_corners (src = i (n-1)/(m-1)), half_pixel (src = (i + 0.5) n/m - 0.5) or
    asymmetric (src = i n/m); src is clamped to [0, n-1]."""
    n = x.shape[axis]
    i = np.arange(size_out, dtype=np.float64)
    if mode == "align_corners":
        src = i * ((n - 1) / (size_out - 1)) if size_out > 1 else np.zeros_like(i)
    elif mode == "half_pixel":
        src = (i + 0.5) * (n / size_out) - 0.5
    elif mode == "asymmetric":
        src = i * (n / size_out)
    else:
        raise MILError(f"unknown resize mode {mode!r}")
    src = np.clip(src, 0, n - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (src - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = size_out
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def _resize(x: np.ndarray, height: int, width: int, mode: str) -> np.ndarray:
    return _resize_axis(_resize_axis(_f32(x), x.ndim - 2, height, mode), x.ndim - 1, width, mode)


def op_upsample_bilinear(x, scale_factor_height=1.0, scale_factor_width=1.0, align_corners=True, half_pixel_centers=None, **_):
    align = bool(_scalar(align_corners, True))
    half = (not align) if half_pixel_centers is None else bool(_scalar(half_pixel_centers))
    if align and half:
        raise MILError("upsample_bilinear: align_corners and half_pixel_centers cannot both be true")
    h = int(np.floor(x.shape[-2] * float(_scalar(scale_factor_height, 1.0))))
    w = int(np.floor(x.shape[-1] * float(_scalar(scale_factor_width, 1.0))))
    return _resize(x, h, w, "align_corners" if align else "half_pixel" if half else "asymmetric")


_SAMPLING = {"ALIGN_CORNERS": "align_corners", "STRICT_ALIGN_CORNERS": "align_corners",
             "UNALIGN_CORNERS": "half_pixel", "DEFAULT": "asymmetric"}


def op_resize_bilinear(x, target_size_height=1, target_size_width=1, sampling_mode="DEFAULT", **_):
    mode = str(_scalar(sampling_mode, "DEFAULT"))
    if mode not in _SAMPLING:
        raise MILError(f"resize_bilinear sampling_mode {mode!r} is not supported; valid choices: {', '.join(sorted(_SAMPLING))}")
    return _resize(x, int(_scalar(target_size_height)), int(_scalar(target_size_width)), _SAMPLING[mode])


def _axis_shape(param: np.ndarray, ndim: int, axis: Any) -> np.ndarray:
    """A per-axis quantization parameter broadcast against a rank-`ndim` tensor."""
    param = np.asarray(param)
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    axis = int(_scalar(axis, 0)) % ndim
    shape = [1] * ndim
    shape[axis] = param.size
    return param.reshape(shape)


def op_quantize(input, scale, output_dtype, zero_point=None, axis=None, **_):
    dtype = np.dtype(str(_scalar(output_dtype)))
    info = np.iinfo(dtype)
    s = _axis_shape(_f32(scale), input.ndim, axis)
    zp = _axis_shape(_f32(zero_point if zero_point is not None else 0), input.ndim, axis)
    return np.clip(np.rint(_f32(input) / s) + zp, info.min, info.max).astype(dtype)


def op_dequantize(input, scale, zero_point=None, axis=None, **_):
    s = _axis_shape(_f32(scale), input.ndim, axis)
    zp = _axis_shape(_f32(zero_point if zero_point is not None else 0), input.ndim, axis)
    return (_f32(input) - zp) * s


def op_constexpr_affine_dequantize(quantized_data, zero_point, scale, axis, **_):
    return op_dequantize(quantized_data, scale, zero_point, axis)


def op_concat(values, axis, interleave=False, **_):
    axis = int(_scalar(axis))
    values = [np.asarray(v) for v in values]
    if not bool(_scalar(interleave, False)):
        return np.concatenate(values, axis=axis)
    axis %= values[0].ndim
    stacked = np.stack(values, axis=axis + 1)
    return stacked.reshape(values[0].shape[:axis] + (-1,) + values[0].shape[axis + 1:])


def op_reduce_mean(x, axes=None, keep_dims=False, **_):
    axes = None if axes is None else tuple(int(a) for a in np.asarray(axes).reshape(-1))
    return _f32(x).mean(axis=axes, keepdims=bool(_scalar(keep_dims, False)))


def op_cast(x, dtype, **_):
    name = str(_scalar(dtype))
    if name not in _CAST:
        raise MILError(f"cast to {name!r} is not supported; valid choices: {', '.join(sorted(_CAST))}")
    return np.asarray(x).astype(_CAST[name])


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    return lambda x, y, **_: fn(_f32(x), _f32(y))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = _f32(x)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


OPS: dict[str, Callable[..., np.ndarray]] = {
    "conv": op_conv,
    "avg_pool": op_avg_pool,
    "upsample_bilinear": op_upsample_bilinear,
    "resize_bilinear": op_resize_bilinear,
    "quantize": op_quantize,
    "dequantize": op_dequantize,
    "concat": op_concat,
    "reduce_mean": op_reduce_mean,
    "cast": op_cast,
    "add": _binary(np.add),
    "sub": _binary(np.subtract),
    "mul": _binary(np.multiply),
    "real_div": _binary(np.divide),
    "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum),
    "relu": lambda x, **_: np.maximum(_f32(x), 0),
    "relu6": lambda x, **_: np.clip(_f32(x), 0, 6),
    "clip": lambda x, alpha, beta, **_: np.clip(_f32(x), float(_scalar(alpha)), float(_scalar(beta))),
    "sigmoid": lambda x, **_: _sigmoid(x),
    "sigmoid_hard": lambda x, alpha=0.2, beta=0.5, **_: np.clip(float(_scalar(alpha, 0.2)) * _f32(x) + float(_scalar(beta, 0.5)), 0, 1),
    "thresholded_relu": lambda x, alpha=1.0, **_: np.where(_f32(x) > float(_scalar(alpha, 1.0)), _f32(x), 0).astype(np.float32),
    "identity": lambda x, **_: x,
}
# Weight ops whose inputs are all constants: evaluated once when the program is loaded.
CONSTEXPR_OPS: dict[str, Callable[..., np.ndarray]] = {
    "constexpr_affine_dequantize": op_constexpr_affine_dequantize,
    "constexpr_cast": lambda source_val, output_dtype, **_: op_cast(source_val, output_dtype),
}
SUPPORTED_OPS = tuple(sorted({"const", *OPS, *CONSTEXPR_OPS}))


# ----------------------------------------------------------------------------- the program

class MILProgram:
    """The `main` function of a saved `.mlpackage`, ready to run on numpy inputs.

    `fp16_values=False` is a diagnostic: op results the program declares fp16 are kept in float32
    (its constants keep the values the package stores), to tell the cost of fp16 tensors between
    ops from that of fp16 constants (benchmarks/coreml_w8a8_precision.py). Checks use the default.
    """

    def __init__(self, package: str | Path, *, fp16_values: bool = True) -> None:
        from coremltools.proto import FeatureTypes_pb2  # noqa: F401  (registers the image color spaces)

        self.fp16_values = fp16_values
        self.path = Path(package)
        spec = load_mlpackage_spec(self.path)
        if spec.WhichOneof("Type") != "mlProgram":
            raise MILError(f"{self.path.name} holds a {spec.WhichOneof('Type')!r} model, not an ML Program (MIL)")
        functions = spec.mlProgram.functions
        if "main" not in functions:
            raise MILError(f"{self.path.name} has no 'main' function; it has: {', '.join(functions) or 'none'}")
        function = functions["main"]
        if function.opset not in function.block_specializations:
            raise MILError(f"{self.path.name}: no block for opset {function.opset!r}")
        block = function.block_specializations[function.opset]
        self.opset = function.opset
        self.inputs = {i.name: _data_type(i.type) for i in function.inputs}
        self.outputs = list(block.outputs)
        self.images = {f.name: f.type.imageType for f in spec.description.input if f.type.WhichOneof("Type") == "imageType"}
        unsupported = sorted({op.type for op in block.operations} - set(SUPPORTED_OPS))
        if unsupported:
            raise MILError(f"{self.path.name} uses MIL op(s) {', '.join(map(repr, unsupported))} outside the reference "
                           f"interpreter's subset: {', '.join(SUPPORTED_OPS)}")
        weights = _Weights(self.path)
        self.constants: dict[str, np.ndarray] = {}
        self.ops: list[tuple[str, Callable[..., np.ndarray], dict[str, list], list[tuple[str, np.dtype, tuple | None]]]] = []
        for op in block.operations:
            if op.blocks:
                raise MILError(f"{self.path.name}: op {op.type!r} has nested blocks (control flow), which the interpreter does not run")
            if op.type == "const":
                self.constants[op.outputs[0].name] = _value(op.attributes["val"], weights)
                continue
            outputs = [(o.name, *_data_type(o.type)) for o in op.outputs]
            if op.type in CONSTEXPR_OPS:
                args = {k: _value(v, weights) for k, v in op.attributes.items() if k != "name"}
                args.update({k: self._bound(v.arguments, k, op.type) for k, v in op.inputs.items()})
                self.constants[outputs[0][0]] = self._typed(CONSTEXPR_OPS[op.type](**args), outputs[0], op.type)
                continue
            inputs = {k: [(a.name if a.WhichOneof("binding") == "name" else _value(a.value, weights)) for a in v.arguments]
                      for k, v in op.inputs.items()}
            self.ops.append((op.type, OPS[op.type], inputs, outputs))
        self.op_counts = {t: sum(1 for o in block.operations if o.type == t) for t in sorted({o.type for o in block.operations})}

    def _bound(self, arguments, name: str, op_type: str) -> np.ndarray:
        values = [self.constants[a.name] for a in arguments if a.WhichOneof("binding") == "name"]
        if len(values) != 1:
            raise MILError(f"{op_type}: input {name!r} must be one constant")
        return values[0]

    def _typed(self, result: np.ndarray, output: tuple[str, np.dtype, tuple | None], op_type: str) -> np.ndarray:
        name, dtype, shape = output
        result = np.asarray(result)
        if shape is not None and tuple(result.shape) != shape:
            raise MILError(f"{op_type} -> {name!r}: computed shape {tuple(result.shape)} but the program declares {shape}")
        if dtype == np.float16 and not self.fp16_values:
            dtype = np.dtype(np.float32)
        return result.astype(dtype, copy=False)

    def image_tensor(self, name: str, pixels: np.ndarray) -> np.ndarray:
        """Pixels (H, W, 3) uint8 RGB -> the (1, C, H, W) float32 tensor Core ML feeds an ImageType
        input, in the package's color space (RGB, BGR or grayscale); its scale/bias are ops in the program."""
        image = self.images[name]
        space = type(image).ColorSpace.Name(image.colorSpace)
        pixels = np.asarray(pixels)
        if pixels.shape != (image.height, image.width, 3):
            raise MILError(f"image input {name!r} takes {image.height}x{image.width} RGB pixels; got shape {pixels.shape}")
        if space == "RGB":
            chw = pixels.transpose(2, 0, 1)
        elif space == "BGR":
            chw = pixels[:, :, ::-1].transpose(2, 0, 1)
        elif space == "GRAYSCALE":
            chw = np.rint(pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[None]
        else:
            raise MILError(f"image color space {space} is not supported; valid choices: BGR, GRAYSCALE, RGB")
        return np.ascontiguousarray(chw[None], dtype=np.float32)

    def run(self, feeds: Mapping[str, np.ndarray], *, keep: bool = False) -> dict[str, np.ndarray]:
        """Execute `main`. Image inputs take (H, W, 3) uint8 RGB pixels; tensor inputs their declared shape.
        Returns the outputs, or with `keep=True` every value the program computed, by name (per-layer numerics)."""
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise MILError(f"{self.path.name} needs input(s) {', '.join(missing)}; got {', '.join(feeds) or 'none'}")
        env: dict[str, np.ndarray] = dict(self.constants)
        for name, (dtype, shape) in self.inputs.items():
            value = self.image_tensor(name, feeds[name]) if name in self.images else np.asarray(feeds[name])
            if shape is not None and tuple(value.shape) != shape:
                raise MILError(f"input {name!r} takes shape {shape}; got {tuple(value.shape)}")
            env[name] = value.astype(dtype, copy=False)
        for op_type, fn, inputs, outputs in self.ops:
            args = {k: [env[v] if isinstance(v, str) else v for v in vs] for k, vs in inputs.items()}
            args = {k: (vs if k == "values" else vs[0]) for k, vs in args.items()}
            try:
                result = fn(**args)
            except MILError:
                raise
            except Exception as exc:
                raise MILError(f"{op_type} -> {outputs[0][0]!r} failed: {type(exc).__name__}: {exc}") from exc
            env[outputs[0][0]] = self._typed(result, outputs[0], op_type)
        return env if keep else {name: env[name] for name in self.outputs}
