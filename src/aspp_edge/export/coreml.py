"""Core ML `.mlpackage` (ML Program) through coremltools: fp16/fp32 float, W8A8 int8 (iOS17).

Input: an `ImageType` named `image` (RGB, 0-255), so Vision / `VNCoreMLRequest` and Xcode's
preview feed camera frames directly. Core ML's ImageType preprocessing is `scale * pixel +
bias[c]` with one scale for all channels, while the recipe normalizes per channel,
x[c] = (pixel / 255 - mean[c]) / std[c]. The ImageType therefore carries the mean and the average
std s (scale = 1 / (255 s), bias[c] = -mean[c] / s), and the model gets one leading per-channel
multiply by s / std[c]: exact, not an approximation. When the recipe's stds are all equal that
multiply is 1 and is left out. Output: `logits`, NCHW float.

W8A8 comes from the shared int8 Q/DQ program: coremltools turns its quantize/dequantize pairs into
Core ML quantize/dequantize ops and its int8 weights into constexpr_affine_dequantize.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import Recipe
from ..errors import AsppEdgeError
from ..formats.files import load_mlpackage_spec
from .common import INPUT_NAME, OUTPUT_NAME, Written, folded, io_specs
from .preprocess import InputAffine, image_type_preprocessing

PREVIEW_TYPE = "com.apple.coreml.model.preview.type"
PREVIEW_PARAMS = "com.apple.coreml.model.preview.params"
METADATA_PREFIX = "aspp_edge."


def image_preprocessing(recipe: Recipe) -> tuple[float, list[float], list[float] | None]:
    """(ImageType scale, ImageType bias, per-channel factor the model must apply, or None)."""
    return image_type_preprocessing(recipe)


def convert(module: nn.Module, example: torch.Tensor, recipe: Recipe, *, precision: str):
    """The coremltools MLModel (ML Program, iOS17) of `module` with the image input and metadata."""
    import coremltools as ct

    scale, bias, factor = image_preprocessing(recipe)
    if factor is not None:
        module = InputAffine(module, factor, [0.0] * len(factor))
    program = torch.export.export(module, (example,)).run_decompositions({})
    image = ct.ImageType(name=INPUT_NAME, shape=tuple(example.shape), scale=scale, bias=bias, color_layout=ct.colorlayout.RGB)
    mlmodel = ct.convert(
        program,
        inputs=[image],
        outputs=[ct.TensorType(name=OUTPUT_NAME)],
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
    )
    return mlmodel


def describe(mlmodel, recipe: Recipe, essentials: dict[str, Any]) -> None:
    """Xcode preview metadata, descriptions and the manifest essentials in user_defined_metadata."""
    labels = list(recipe.class_names)
    mlmodel.short_description = f"aspp-edge {essentials.get('head') or essentials.get('source', '')} segmentation ({recipe.name} recipe)"
    mlmodel.author, mlmodel.license = "aspp-edge", "Apache-2.0"
    mlmodel.input_description[INPUT_NAME] = "RGB image, 0-255; normalization is inside the model"
    mlmodel.output_description[OUTPUT_NAME] = "per-class logits, NCHW; argmax over axis 1 is the mask"
    meta = mlmodel.user_defined_metadata
    meta[PREVIEW_TYPE] = "imageSegmenter"
    meta[PREVIEW_PARAMS] = json.dumps({"labels": labels})
    meta[METADATA_PREFIX + "labels"] = json.dumps(labels)
    meta[METADATA_PREFIX + "colors"] = json.dumps([list(c) for c in recipe.class_colors])
    for key, value in essentials.items():
        meta[METADATA_PREFIX + key] = value if isinstance(value, str) else json.dumps(value)


def _ops(block, counts: Counter) -> None:
    for op in block.operations:
        counts[op.type] += 1
        for inner in op.blocks:
            _ops(inner, counts)


def mlpackage_summary(path: str | Path) -> dict[str, Any]:
    """MIL op histogram, I/O description and metadata of a saved package, read from its spec."""
    spec = load_mlpackage_spec(path)
    counts: Counter = Counter()
    if spec.WhichOneof("Type") == "mlProgram":
        for function in spec.mlProgram.functions.values():
            for block in function.block_specializations.values():
                _ops(block, counts)

    def feature(f) -> dict[str, Any]:
        kind = f.type.WhichOneof("Type")
        if kind == "imageType":
            return {"name": f.name, "kind": "image", "width": f.type.imageType.width, "height": f.type.imageType.height}
        if kind == "multiArrayType":
            return {"name": f.name, "kind": "tensor", "shape": list(f.type.multiArrayType.shape)}
        return {"name": f.name, "kind": kind}

    return {
        "spec_version": spec.specificationVersion,
        "inputs": [feature(f) for f in spec.description.input],
        "outputs": [feature(f) for f in spec.description.output],
        "ops": dict(sorted(counts.items())),
        "metadata": dict(spec.description.metadata.userDefined),
    }



def graph_facts(path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """A latency row's graph facts: the package's MIL op counts."""
    return {"mil_ops": mlpackage_summary(path)["ops"]}


def graph_line(facts: dict[str, Any]) -> str:
    ops = facts.get("mil_ops") or {}
    return f"{sum(ops.values())} MIL ops ({len(ops)} kinds)"

def write(module: nn.Module, source, precision: str, tmp: Path, *, layout: str, io_dtype: str) -> Written:
    """The `.mlpackage` (ML Program, iOS17, image input) of a float module or the int8 program at `tmp`."""
    recipe = source.recipe
    mlmodel = convert(folded(module) if precision == "int8" else module, source.example, recipe, precision=precision)
    scale, bias, factor = image_preprocessing(recipe)
    info = {"image_scale": scale, "image_bias": bias, "channel_factor": factor,
            "compute_precision": "fp32" if precision == "fp32" else "fp16",
            "minimum_deployment_target": "iOS17", "weights": "int8 (constexpr_affine_dequantize)" if precision == "int8" else precision}
    input_spec, output_spec = io_specs(source, "NCHW", kind="image", in_dtype="uint8", out_dtype="float32", applied_by="model")
    describe(mlmodel, recipe, {
        **({"source": recipe.model.source} if recipe.model.source else {"head": recipe.model.head}),
        "precision": precision, "method": source.method_for(precision),
        "normalization": input_spec["normalization"], "output_layout": "NCHW", "recipe": recipe.name,
    })
    # coremltools wants the .mlpackage suffix: save inside the temp dir, then make the package the temp dir
    tmp.mkdir()
    inner = tmp / "model.mlpackage"
    mlmodel.save(str(inner))
    staged = tmp.with_name(tmp.name + ".pkg")
    os.replace(inner, staged)
    tmp.rmdir()
    os.replace(staged, tmp)
    return Written(info, input_spec, output_spec)
