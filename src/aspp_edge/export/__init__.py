"""Export: one float model or int8 program -> `.pte` / `.mlpackage` / `.tflite` + manifest.

`export(source, backend, precision, out_dir) -> Path` writes `<name>_<backend>_<precision>.<ext>`
and `<artifact>.manifest.json` atomically (temporary names, renamed together at the end), so a
failed export leaves neither behind. `source` is an `ExportSource`: the float model from a
checkpoint and/or the shared int8 Q/DQ program saved by `aspp-edge quantize` (`<name>_int8.pt2`).
int8 artifacts of all three backends come from that one program, so they carry the same qparams.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import load_model
from ..config import Recipe
from ..errors import AsppEdgeError, CheckpointError, ConfigError, choices_error
from ..fileio import atomic_path, sha256_file
from . import coreml as _coreml
from . import executorch as _executorch
from . import tflite as _tflite
from .manifest import build_manifest, manifest_path, normalization, read_manifest, validate_manifest
from .preprocess import scalar_normalization

BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "executorch": ("pte", _executorch.PRECISIONS),
    "coreml": ("mlpackage", _coreml.PRECISIONS),
    "tflite": ("tflite", _tflite.PRECISIONS),
}
EXTENSIONS = {ext: backend for backend, (ext, _) in BACKENDS.items()}

__all__ = ["BACKENDS", "ExportSource", "export", "from_checkpoint", "from_quantized", "manifest_path", "read_manifest"]


@dataclass
class ExportSource:
    """What an export starts from: the float model, the int8 program, or both, and their provenance."""

    recipe: Recipe
    model: nn.Module | None = None  # float Segmenter
    program: torch.fx.GraphModule | None = None  # int8 Q/DQ program, weights not folded
    method: str = "none"  # how the int8 program was made: ptq | qat
    checkpoint_sha256: str | None = None
    quantized_program: str | None = None
    name: str = ""  # float artifacts: <name>_<backend>_<fp32|fp16>
    int8_name: str = ""  # int8 artifacts: <program stem>_<backend>_int8, e.g. default_qat_tflite_int8
    _model_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.name = self.name or self.recipe.name
        self.int8_name = self.int8_name or self.name

    @property
    def example(self) -> torch.Tensor:
        size = self.recipe.data.resolution
        return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    @property
    def model_config(self) -> dict[str, Any]:
        """The manifest's `model` section: the built-in head's configuration, or a brought model's
        source spec, factory arguments, parameter count and GMACs."""
        if self._model_config is None:
            from ..models import describe_model

            self._model_config = describe_model(self.recipe, self.model)
        return self._model_config

    @property
    def model_label(self) -> str:
        from ..models import model_key

        return model_key(self.recipe.model)


def from_checkpoint(path: str | Path, recipe: Recipe | None = None, *, name: str | None = None) -> ExportSource:
    model, recipe, _ = load_model(path, recipe)
    return ExportSource(recipe, model=model, checkpoint_sha256=sha256_file(path), name=name or recipe.name)


def from_quantized(path: str | Path, source: ExportSource | None = None) -> ExportSource:
    """Add the int8 program `<name>_int8.pt2` (and its `<name>_int8.json`) to `source`, or start one."""
    from ..quantize import load_quantized

    path = Path(path)
    summary_path = path.with_suffix(".json")
    if path.suffix != ".pt2":
        raise CheckpointError(f"quantized program {str(path)!r} is not a .pt2 file written by `aspp-edge quantize`")
    program = load_quantized(path)
    try:
        summary = json.loads(summary_path.read_text())
        recipe = Recipe.from_dict(summary["recipe"])
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"quantized program {str(path)!r} has no readable summary {str(summary_path)!r} beside it ({type(exc).__name__})") from exc
    if source is not None and source.recipe.to_dict()["model"] != recipe.to_dict()["model"]:
        raise CheckpointError(f"quantized program {str(path)!r} was made from a different model than the checkpoint (recipe model sections differ)")
    stem = path.name.removesuffix("_int8.pt2")
    if source is None:
        source = ExportSource(recipe, checkpoint_sha256=summary.get("source_checkpoint_sha256"), name=stem)
    source.program, source.method, source.quantized_program = program, summary.get("method", "ptq"), path.name
    source.checkpoint_sha256 = source.checkpoint_sha256 or summary.get("source_checkpoint_sha256")
    source.int8_name = stem
    return source


def artifact_name(name: str, backend: str, precision: str) -> str:
    return f"{name}_{backend}_{precision}.{BACKENDS[backend][0]}"


def check_choice(backend: str, precision: str) -> None:
    if backend not in BACKENDS:
        raise choices_error("backend", backend, BACKENDS)
    if precision not in BACKENDS[backend][1]:
        raise choices_error(f"precision for {backend}", precision, BACKENDS[backend][1])


def _module_for(source: ExportSource, precision: str) -> nn.Module:
    if precision == "int8":
        if source.program is None:
            raise ConfigError(
                "int8 export needs a quantized program (--quantized NAME_int8.pt2 from `aspp-edge quantize`); "
                "a float checkpoint alone has no int8 qparams"
            )
        return source.program
    if source.model is None:
        raise ConfigError(f"{precision} export needs the float checkpoint (--checkpoint); a quantized program has no float weights")
    return _bn_folded(source.model)


def _bn_folded(model: nn.Module) -> nn.Module:
    """A copy with every conv -> BN pair folded into the conv: the same function in a third of the
    graph nodes, which every backend would fuse anyway (and lowering runs 2-3x faster)."""
    from ..calibration.equalize import fold_batchnorm

    model = copy.deepcopy(model).eval()
    fold_batchnorm(model)
    return model


def _litert_program(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 program in the form LiteRT runs fastest: each hardswish as an int8 gate and multiply
    (LiteRT's XNNPACK delegate runs HARD_SWISH in float only; see quantize/rewrites.py)."""
    from ..quantize.rewrites import hardswish_as_int8_gate

    program = copy.deepcopy(program)
    hardswish_as_int8_gate(program)
    return program


def _folded(program: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The Q/DQ program with its weight quantize ops folded into int8 constants (what XNNPACK lowers)."""
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint

    folded = copy.deepcopy(program)
    constant_fold(folded, _quant_node_constraint)
    return folded


def _io_specs(source: ExportSource, layout: str, *, kind: str = "tensor", quant_in=None, quant_out=None,
              in_dtype: str = "float32", out_dtype: str = "float32", applied_by: str = "app", norm: dict | None = None) -> tuple[dict, dict]:
    size, n = source.recipe.data.resolution, source.recipe.num_classes
    shape_in = [1, 3, size, size] if layout == "NCHW" else [1, size, size, 3]
    shape_out = [1, n, size, size] if layout == "NCHW" else [1, size, size, n]
    name_in, name_out = _tflite.INPUT_NAME, _tflite.OUTPUT_NAME
    return (
        {"name": name_in, "kind": kind, "shape": shape_in, "layout": layout, "dtype": in_dtype, "color_order": "RGB",
         "normalization": {**(norm or normalization(source.recipe)), "applied_by": applied_by}, "quantization": quant_in},
        {"name": name_out, "shape": shape_out, "layout": layout, "dtype": out_dtype, "semantics": "logits", "quantization": quant_out},
    )


def _quant(detail: dict[str, Any] | None) -> dict[str, Any] | None:
    if not detail or detail.get("quantization") is None or detail["dtype"] not in ("int8", "uint8"):
        return None
    return {"dtype": detail["dtype"], **detail["quantization"]}


def export(
    source: ExportSource,
    backend: str,
    precision: str,
    out_dir: str | Path,
    *,
    layout: str | None = None,
    io_dtype: str = "float32",
) -> Path:
    """Write one artifact and its manifest; returns the artifact's path.

    `layout`: NHWC (TFLite's default, what apps and MediaPipe feed) or NCHW; ExecuTorch artifacts
    are NCHW, Core ML takes an image. `io_dtype`: TFLite int8 only, float32 (default) or int8 I/O.
    """
    check_choice(backend, precision)
    layout = layout or ("NHWC" if backend == "tflite" else "NCHW")
    valid_layouts = _tflite.LAYOUTS if backend == "tflite" else ("NCHW",)
    if layout not in valid_layouts:
        raise choices_error(f"layout for {backend}", layout, valid_layouts)
    if io_dtype not in _tflite.IO_DTYPES or (io_dtype != "float32" and (backend, precision) != ("tflite", "int8")):
        valid = _tflite.IO_DTYPES if (backend, precision) == ("tflite", "int8") else ("float32",)
        raise choices_error(f"io dtype for {backend} {precision}", io_dtype, valid)
    module = _module_for(source, precision)
    out = Path(out_dir)
    _check_writable(out)
    artifact = out / artifact_name(source.int8_name if precision == "int8" else source.name, backend, precision)
    example = source.example
    with torch.no_grad(), contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(artifact))
        tmp_manifest = stack.enter_context(atomic_path(manifest_path(artifact)))
        if backend == "executorch":
            data, info = _executorch.to_pte(_folded(module) if precision == "int8" else module, example)
            tmp.write_bytes(data)
            specs = _io_specs(source, "NCHW")
        elif backend == "tflite":
            scalar_input = io_dtype == "float32"
            if precision == "int8":
                module = _litert_program(module)
            data = _tflite.convert(module, example, source.recipe, int8=precision == "int8", layout=layout, scalar_input=scalar_input)
            if io_dtype == "float32":
                data = _tflite.to_float_io(data)
            data = _tflite.name_io(data)
            description = f"aspp-edge {source.model_label} {precision} ({source.recipe.name} recipe)"
            data = _tflite.add_metadata(data, source.recipe, description=description)
            tmp.write_bytes(data)
            summary = _tflite.summarize(_tflite.parse(data))
            (inp,), (outp,) = summary["inputs"], summary["outputs"]
            info = {"ops": summary["ops"], "qdq_at_io": summary["qdq_at_io"], "qdq_inside": summary["qdq_inside"]}
            specs = _io_specs(source, layout, quant_in=_quant(inp), quant_out=_quant(outp), in_dtype=inp["dtype"], out_dtype=outp["dtype"],
                              norm=scalar_normalization(source.recipe)[0] if scalar_input else None)
        else:
            mlmodel = _coreml.convert(_folded(module) if precision == "int8" else module, example, source.recipe, precision=precision)
            scale, bias, factor = _coreml.image_preprocessing(source.recipe)
            info = {"image_scale": scale, "image_bias": bias, "channel_factor": factor,
                    "compute_precision": "fp32" if precision == "fp32" else "fp16",
                    "minimum_deployment_target": "iOS17", "weights": "int8 (constexpr_affine_dequantize)" if precision == "int8" else precision}
            specs = _io_specs(source, "NCHW", kind="image", in_dtype="uint8", out_dtype="float32", applied_by="model")
            _coreml.describe(mlmodel, source.recipe, {
                **({"source": source.recipe.model.source} if source.recipe.model.source else {"head": source.recipe.model.head}),
                "precision": precision, "method": _method(source, precision),
                "normalization": specs[0]["normalization"], "output_layout": "NCHW", "recipe": source.recipe.name,
            })
            tmp.mkdir()
            mlmodel.save(str(tmp / artifact.name))
            # coremltools wants the .mlpackage suffix: save inside the temp dir, then make it the temp dir
            inner = tmp / artifact.name
            staged = tmp.with_name(tmp.name + ".pkg")
            os.replace(inner, staged)
            tmp.rmdir()
            os.replace(staged, tmp)
        manifest = build_manifest(
            artifact, backend=backend, precision=precision, method=_method(source, precision), recipe=source.recipe,
            model_config=source.model_config, input_spec=specs[0], output_spec=specs[1],
            sha256=artifact_sha256(tmp), size_bytes=artifact_size(tmp), checkpoint_sha256=source.checkpoint_sha256,
            quantized_program=source.quantized_program if precision == "int8" else None, backend_info=info,
        )
        tmp_manifest.write_text(json.dumps(manifest, indent=2))
        _fail_point("before-rename")
    return artifact


def _method(source: ExportSource, precision: str) -> str:
    return source.method if precision == "int8" else "none"


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AsppEdgeError(f"output directory {str(out)!r} cannot be created: {exc.strerror}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise AsppEdgeError(f"output directory {str(out)!r} is not writable")


def _fail_point(name: str) -> None:
    """Test hook: ASPP_EDGE_FAIL_AT=<name> raises here, to prove a failed export leaves nothing."""
    if os.environ.get("ASPP_EDGE_FAIL_AT") == name:
        raise AsppEdgeError(f"export failed on purpose at {name!r} (ASPP_EDGE_FAIL_AT)")


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def artifact_sha256(path: str | Path) -> str:
    """sha256 of a file; for a package directory, of its files' relative paths and contents in order."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    import hashlib

    h = hashlib.sha256()
    for f in _files(path):
        h.update(str(f.relative_to(path)).encode() + b"\0" + bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def artifact_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in _files(Path(path)))
