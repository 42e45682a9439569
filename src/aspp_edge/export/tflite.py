"""TFLite `.tflite` through litert-torch (fp32, and int8 from the shared Q/DQ program).

The file is what MediaPipe Tasks' ImageSegmenter and a plain LiteRT `Interpreter` expect:
- NHWC float32 image input named `image` and NHWC float32 output named `logits` by default
  (NCHW by option). For int8, litert-torch's STATIC Q/DQ conversion makes the graph integer from
  end to end, including int8 I/O; a QUANTIZE op after the input and a DEQUANTIZE op before the
  output turn it back into float I/O (the only Q/DQ ops in the graph), so apps and MediaPipe feed
  floats. `io_dtype="int8"` keeps the integer I/O instead and the manifest gives its qparams.
- Standard TFLite metadata: image input with NormalizationOptions (mean/std in 0-255 pixel
  units), RGB; the output's labels as a TENSOR_AXIS_LABELS associated file (labels.txt, packed
  as a zip after the flatbuffer, as the metadata populator does); MediaPipe's ImageSegmenter
  options (activation SOFTMAX) as SubGraph custom metadata "SEGMENTER_METADATA".

The metadata is built with MediaPipe's generated flatbuffer classes for the TFLite and metadata
schemas. MediaPipe's own `metadata_writers` would be the first choice, but in mediapipe 1.2.2 it
does not import (its compiled `_pywrap_metadata_version` is missing from the wheel).
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import flatbuffers
import torch

from ..config import Recipe
from ..errors import AsppEdgeError
from ..formats.files import TFLITE_IDENTIFIER as MODEL_IDENTIFIER
from ..formats.files import check_tflite
from .common import INPUT_NAME, OUTPUT_NAME, Written, io_specs
from .preprocess import InputAffine, scalar_normalization

LABELS_FILE = "labels.txt"
TFLITE_METADATA = "TFLITE_METADATA"
METADATA_IDENTIFIER, SEGMENTER_IDENTIFIER = b"M001", b"V001"
MIN_PARSER_VERSION = "1.5.0"  # custom metadata in SubGraphMetadata arrived in metadata schema 1.5.0


def _schemas():
    from mediapipe.tasks.metadata import image_segmenter_metadata_schema_py_generated as seg
    from mediapipe.tasks.metadata import metadata_schema_py_generated as meta
    from mediapipe.tasks.metadata import schema_py_generated as tfl

    return tfl, meta, seg


def _static_quant_config():
    """litert-torch's switch for STATIC Q/DQ conversion; the graph's qparams are already fixed by our scheme."""
    from litert_torch.quantize import pt2e_quantizer, quant_config

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    return quant_config.QuantConfig(pt2e_quantizer=quantizer)


def _fp16_weights_config():
    """litert-torch's fp16 weight recipe: ai-edge-quantizer casts every float32 weight buffer to
    float16 and puts an explicit DEQUANTIZE (fp16 -> fp32) after it, the form LiteRT's GPU delegate
    reads as fp16 weights and the CPU interpreter runs by dequantizing once at load."""
    from litert_torch.generative.quantize import quant_recipes

    return quant_recipes.full_fp16_recipe()


def convert(module: torch.nn.Module, example: torch.Tensor, recipe: Recipe | None, *, int8: bool, layout: str = "NHWC",
            scalar_input: bool = True, fp16: bool = False) -> bytes:
    """litert-torch conversion of `module` (float, or the int8 Q/DQ program with weights unfolded;
    `fp16`: float weights stored as float16).

    `scalar_input`: the model takes MediaPipe's one-mean/one-std input and completes the
    normalization itself (see preprocess.py); False keeps the recipe's per-channel input (int8 I/O,
    where the quantized input must be the model's first tensor)."""
    import litert_torch

    if scalar_input:
        _, scale, bias = scalar_normalization(recipe)
        if scale is not None:
            module = InputAffine(module, scale, bias)
    if layout == "NHWC":
        module = litert_torch.to_channel_last_io(module, args=[0], outputs=[0])
        example = example.permute(0, 2, 3, 1).contiguous()
    quant = _static_quant_config() if int8 else _fp16_weights_config() if fp16 else None
    edge = litert_torch.convert(module, (example,), quant_config=quant)
    return inline_buffers(bytes(edge.model_content())) if fp16 else bytes(edge.model_content())


def inline_buffers(buf: bytes) -> bytes:
    """Move buffers stored after the flatbuffer (`offset`/`size`, as ai-edge-quantizer writes them)
    into the flatbuffer itself, so the object-API rewrites below keep their data."""
    model = parse(buf)
    moved = False
    for b in model.buffers:
        if b.offset and b.offset > 1:
            b.data, b.offset, b.size, moved = list(buf[b.offset:b.offset + b.size]), 0, 0, True
    return _pack(model) if moved else buf


def parse(buf: bytes):
    """The flatbuffer object tree (ModelT) of a .tflite file's bytes."""
    tfl, _, _ = _schemas()
    if len(buf) < 8 or buf[4:8] != MODEL_IDENTIFIER:
        raise AsppEdgeError("not a TFLite flatbuffer (no 'TFL3' identifier)")
    return tfl.ModelT.InitFromObj(tfl.Model.GetRootAsModel(buf, 0))


def _pack(model, identifier: bytes = MODEL_IDENTIFIER) -> bytes:
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=identifier)
    return bytes(builder.Output())


def _opcode(model, code: int, version: int) -> int:
    tfl, _, _ = _schemas()
    for i, oc in enumerate(model.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code and oc.version == version:
            return i
    oc = tfl.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
    model.operatorCodes.append(oc)
    return len(model.operatorCodes) - 1


def _float_twin(model, sg, index: int, name: str) -> int:
    """Append a float32 tensor shaped like tensor `index` (an empty buffer of its own); its index."""
    tfl, _, _ = _schemas()
    src = sg.tensors[index]
    t = tfl.TensorT()
    t.shape, t.shapeSignature, t.type, t.name = list(src.shape), src.shapeSignature, tfl.TensorType.FLOAT32, name.encode()
    model.buffers.append(tfl.BufferT())
    t.buffer = len(model.buffers) - 1
    sg.tensors.append(t)
    return len(sg.tensors) - 1


def to_float_io(buf: bytes) -> bytes:
    """Give integer I/O float32 I/O: a QUANTIZE after an int8 input, a DEQUANTIZE before an int8 output."""
    tfl, _, _ = _schemas()
    model = parse(buf)
    sg = model.subgraphs[0]
    (inp,), (out,) = list(sg.inputs), list(sg.outputs)
    before, after = [], []
    if sg.tensors[inp].type != tfl.TensorType.FLOAT32:
        f_in = _float_twin(model, sg, inp, INPUT_NAME)
        op = tfl.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = _opcode(model, tfl.BuiltinOperator.QUANTIZE, 1), [f_in], [inp]
        before, sg.inputs = [op], [f_in]
    if sg.tensors[out].type != tfl.TensorType.FLOAT32:
        f_out = _float_twin(model, sg, out, OUTPUT_NAME)
        op = tfl.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = _opcode(model, tfl.BuiltinOperator.DEQUANTIZE, 2), [out], [f_out]
        after, sg.outputs = [op], [f_out]
    if not before and not after:
        return buf
    sg.operators = [*before, *sg.operators, *after]
    for sig in model.signatureDefs or []:
        sig.inputs[0].tensorIndex, sig.outputs[0].tensorIndex = sg.inputs[0], sg.outputs[0]
    return _pack(model)


def name_io(buf: bytes) -> bytes:
    """Name the I/O tensors and the signature's I/O `image` and `logits` (litert-torch says args_0/output_0)."""
    model = parse(buf)
    sg = model.subgraphs[0]
    sg.tensors[sg.inputs[0]].name, sg.tensors[sg.outputs[0]].name = INPUT_NAME.encode(), OUTPUT_NAME.encode()
    for sig in model.signatureDefs or []:
        sig.inputs[0].name, sig.outputs[0].name = INPUT_NAME.encode(), OUTPUT_NAME.encode()
    return _pack(model)


def _image_tensor(meta, name: str, description: str, color_space: int):
    """TensorMetadata with ImageProperties content (what MediaPipe reads for image in/out tensors)."""
    props = meta.ImagePropertiesT()
    props.colorSpace = color_space
    tensor = meta.TensorMetadataT()
    tensor.name, tensor.description = name, description
    tensor.content = meta.ContentT()
    tensor.content.contentPropertiesType, tensor.content.contentProperties = meta.ContentProperties.ImageProperties, props
    return tensor


def _metadata(recipe: Recipe, *, description: str, float_input: bool) -> bytes:
    _, meta, seg = _schemas()
    norm = meta.NormalizationOptionsT()
    scalar, _, _ = scalar_normalization(recipe)  # one mean, one std: all MediaPipe accepts
    norm.mean = [scalar["mean"][0] / scalar["pixel_scale"]]
    norm.std = [scalar["std"][0] / scalar["pixel_scale"]]
    unit = meta.ProcessUnitT()
    unit.optionsType, unit.options = meta.ProcessUnitOptions.NormalizationOptions, norm
    image = _image_tensor(meta, INPUT_NAME, "RGB image; input = (pixel - mean) / std with NormalizationOptions in 0-255 units",
                          meta.ColorSpaceType.RGB)
    if float_input:
        image.processUnits = [unit]
    stats = meta.StatsT()
    stats.max, stats.min = [255.0], [0.0]
    image.stats = stats

    labels = meta.AssociatedFileT()
    labels.name, labels.description = LABELS_FILE, "class names, one per line, in output channel order"
    labels.type = meta.AssociatedFileType.TENSOR_AXIS_LABELS
    logits = _image_tensor(meta, OUTPUT_NAME, "per-class logits; argmax over the class axis is the mask", meta.ColorSpaceType.GRAYSCALE)
    logits.associatedFiles = [labels]

    options = seg.ImageSegmenterOptionsT()
    options.activation = seg.Activation.SOFTMAX
    builder = flatbuffers.Builder(64)
    builder.Finish(options.Pack(builder), file_identifier=SEGMENTER_IDENTIFIER)
    custom = meta.CustomMetadataT()
    custom.name, custom.data = "SEGMENTER_METADATA", list(builder.Output())

    subgraph = meta.SubGraphMetadataT()
    subgraph.name = "image_segmenter"
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata, subgraph.customMetadata = [image], [logits], [custom]
    root = meta.ModelMetadataT()
    root.name, root.description, root.version = f"aspp-edge {recipe.name}", description, "1"
    root.author, root.license = "aspp-edge", "Apache-2.0"
    root.minParserVersion = MIN_PARSER_VERSION
    root.subgraphMetadata = [subgraph]
    return _pack(root, METADATA_IDENTIFIER)


def add_metadata(buf: bytes, recipe: Recipe, *, description: str) -> bytes:
    """Attach TFLite metadata (buffer + TFLITE_METADATA entry) and the labels file (zip appendix)."""
    tfl, _, _ = _schemas()
    model = parse(buf)
    float_input = model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].type == tfl.TensorType.FLOAT32
    buffer = tfl.BufferT()
    buffer.data = list(_metadata(recipe, description=description, float_input=float_input))
    model.buffers.append(buffer)
    entry = tfl.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA.encode(), len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != TFLITE_METADATA.encode()] + [entry]
    out = io.BytesIO(_pack(model))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(LABELS_FILE, "\n".join(recipe.class_names) + "\n")
    return out.getvalue()


def read_metadata(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(model metadata as a dict of the fields apps use, associated files) of a .tflite file."""
    _, meta, seg = _schemas()
    model = read_tflite(path)
    buffers = {m.name.decode(): m.buffer for m in model.metadata or []}
    if TFLITE_METADATA not in buffers:
        return {}, {}
    raw = bytes(bytearray(model.buffers[buffers[TFLITE_METADATA]].data))
    md = meta.ModelMetadataT.InitFromObj(meta.ModelMetadata.GetRootAsModelMetadata(raw, 0))
    sub = md.subgraphMetadata[0]
    image, logits = sub.inputTensorMetadata[0], sub.outputTensorMetadata[0]
    norm = next((u.options for u in image.processUnits or [] if u.optionsType == meta.ProcessUnitOptions.NormalizationOptions), None)
    activation = None
    for custom in sub.customMetadata or []:
        if custom.name.decode() == "SEGMENTER_METADATA":
            opts = seg.ImageSegmenterOptionsT.InitFromObj(seg.ImageSegmenterOptions.GetRootAs(bytes(bytearray(custom.data)), 0))
            activation = {v: k for k, v in vars(seg.Activation).items() if not k.startswith("_")}[opts.activation]
    files = {}
    with zipfile.ZipFile(io.BytesIO(Path(path).read_bytes())) as zf:
        files = {n: zf.read(n).decode() for n in zf.namelist()}
    summary = {
        "name": md.name.decode(), "min_parser_version": md.minParserVersion.decode(),
        "input": {"name": image.name.decode(), "mean": [float(v) for v in norm.mean] if norm else None,
                  "std": [float(v) for v in norm.std] if norm else None},
        "output": {"name": logits.name.decode(), "label_files": [f.name.decode() for f in logits.associatedFiles or []]},
        "activation": activation,
    }
    return summary, files


def read_tflite(path: str | Path):
    check_tflite(path)
    data = Path(path).read_bytes()
    try:
        return parse(data)
    except Exception as exc:
        raise AsppEdgeError(f"{str(path)!r} is a truncated or corrupt TFLite model (.tflite): {type(exc).__name__}") from exc


def tflite_summary(path: str | Path) -> dict[str, Any]:
    return summarize(read_tflite(path))


def summarize(model) -> dict[str, Any]:
    """Op histogram, I/O tensors, the QUANTIZE/DEQUANTIZE ops split into I/O and inside (float
    islands), and the DEQUANTIZE ops of fp16 weights (constant float16 -> float32), counted apart."""
    tfl, _, _ = _schemas()
    names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(tfl.TensorType).items() if not k.startswith("_")}
    sg = model.subgraphs[0]
    ops, io_qdq, inside, fp16_weights = Counter(), [], [], 0

    def constant(i: int) -> bool:
        return i < 0 or bool(len(model.buffers[sg.tensors[i].buffer].data if model.buffers[sg.tensors[i].buffer].data is not None else []))

    # Float preprocessing on the input (the in-model normalization affine) still counts as I/O.
    input_side = set(int(i) for i in sg.inputs)
    for op in sg.operators:
        oc = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), str(oc.builtinCode))
        ops[name] += 1
        live = [int(i) for i in op.inputs if not constant(int(i))]
        if name not in ("QUANTIZE", "DEQUANTIZE") and live and all(i in input_side for i in live):
            input_side.update(int(o) for o in op.outputs)
        if name == "DEQUANTIZE" and sg.tensors[op.inputs[0]].type == tfl.TensorType.FLOAT16 and constant(int(op.inputs[0])):
            fp16_weights += 1
        elif name in ("QUANTIZE", "DEQUANTIZE"):
            at_io = (name == "QUANTIZE" and op.inputs[0] in input_side) or (name == "DEQUANTIZE" and op.outputs[0] in sg.outputs)
            entry = f"{name} {sg.tensors[op.inputs[0]].name.decode()} -> {sg.tensors[op.outputs[0]].name.decode()}"
            (io_qdq if at_io else inside).append(entry)

    def tensor(i: int) -> dict[str, Any]:
        t = sg.tensors[i]
        q = t.quantization
        has_qp = q is not None and q.scale is not None and len(q.scale)
        qp = {"scale": float(q.scale[0]), "zero_point": int(q.zeroPoint[0])} if has_qp else None
        return {"name": t.name.decode(), "shape": [int(s) for s in t.shape], "dtype": types[t.type].lower(), "quantization": qp}

    return {
        "ops": dict(sorted(ops.items())),
        "inputs": [tensor(i) for i in sg.inputs],
        "outputs": [tensor(i) for i in sg.outputs],
        "qdq_at_io": io_qdq,
        "qdq_inside": inside,
        "fp16_weight_dequantize": fp16_weights,
    }


def _quant(detail: dict[str, Any] | None) -> dict[str, Any] | None:
    if not detail or detail.get("quantization") is None or detail["dtype"] not in ("int8", "uint8"):
        return None
    return {"dtype": detail["dtype"], **detail["quantization"]}


def _litert_program(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 program in the form LiteRT runs fastest: each hardswish as an int8 gate and multiply
    (LiteRT's XNNPACK delegate runs HARD_SWISH in float only; see quantize/rewrites.py)."""
    import copy

    from ..quantize.rewrites import hardswish_as_int8_gate

    program = copy.deepcopy(program)
    hardswish_as_int8_gate(program)
    return program


def write(module: torch.nn.Module, source, precision: str, tmp: Path, *, layout: str, io_dtype: str) -> Written:
    """The `.tflite` (with LiteRT image-segmenter metadata) of a float module or the int8 program at `tmp`.
    `io_dtype` float32: MediaPipe's scalar normalization and QUANTIZE/DEQUANTIZE at the I/O of an int8 model."""
    recipe, int8, scalar_input = source.recipe, precision == "int8", io_dtype == "float32"
    data = convert(_litert_program(module) if int8 else module, source.example, recipe, int8=int8, layout=layout,
                   scalar_input=scalar_input, fp16=precision == "fp16")
    if scalar_input:
        data = to_float_io(data)
    data = add_metadata(name_io(data), recipe, description=f"aspp-edge {source.model_label} {precision} ({recipe.name} recipe)")
    tmp.write_bytes(data)
    summary = summarize(parse(data))
    (inp,), (outp,) = summary["inputs"], summary["outputs"]
    info = {"ops": summary["ops"], "qdq_at_io": summary["qdq_at_io"], "qdq_inside": summary["qdq_inside"]}
    if int8:
        from ..quantize.islands import float_islands

        info["float_islands"] = float_islands(module, "tflite")
    if precision == "fp16":  # fp16 weights for LiteRT's GPU delegate; here the CPU interpreter checks the accuracy
        from ..models.half import half_precision_check

        info.update(weights="fp16 (DEQUANTIZE to fp32 at load on the CPU; read as fp16 by the GPU delegate)",
                    fp16_weight_dequantize=summary["fp16_weight_dequantize"], fp16_check=half_precision_check(module, source.example))
    input_spec, output_spec = io_specs(source, layout, quant_in=_quant(inp), quant_out=_quant(outp), in_dtype=inp["dtype"],
                                       out_dtype=outp["dtype"], norm=scalar_normalization(recipe)[0] if scalar_input else None)
    return Written(info, input_spec, output_spec)


def graph_facts(path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """A latency row's graph facts: Q/DQ pairs left inside the int8 graph (from the manifest) and how
    LiteRT's XNNPACK delegate takes the model (read from the interpreter)."""
    from ..runtime.litert import xnnpack_delegation  # loads the model in LiteRT

    return {"qdq_inside": len(info.get("qdq_inside", [])), "xnnpack": xnnpack_delegation(path)}


def graph_line(facts: dict[str, Any]) -> str:
    x = facts.get("xnnpack") or {}
    outside = ", ".join(f"{k} x{v}" for k, v in (x.get("ops_outside") or {}).items()) or "none"
    return f"{facts.get('qdq_inside', 0)} Q/DQ inside, {x.get('partitions', '-')} XNNPACK partition(s), outside: {outside}"


def file_summary(path: str | Path) -> dict[str, Any]:
    """`aspp-edge inspect`'s view of a .tflite: its ops and Q/DQ (from the flatbuffer), how XNNPACK
    takes it (from the interpreter), its TFLite metadata and associated files."""
    from ..runtime.litert import xnnpack_delegation  # loads the model in LiteRT

    summary = tflite_summary(path)
    summary["xnnpack"] = xnnpack_delegation(path)
    summary["metadata"], files = read_metadata(path)
    summary["associated_files"] = sorted(files)
    return summary
