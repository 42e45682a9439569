"""Export: one float model or int8 program -> `.pte` / `.mlpackage` / `.tflite` + manifest.

`export(source, backend, precision, out_dir) -> Path` writes `<name>_<backend>_<precision>.<ext>`
and `<artifact>.manifest.json` atomically (temporary names, renamed together at the end), so a
failed export leaves neither behind. It validates the choice against the backend registry
(`formats.backends`), calls the backend's writer (`export/<backend>.py: write`) and writes the
manifest. `source` is an `ExportSource`: the float model from a
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
from ..formats import BACKENDS, Backend, artifact_name, artifact_sha256, artifact_size, get_backend
from ..formats.manifest import build_manifest, manifest_path, read_manifest
from ..models.fold import fold_batchnorm
from .common import shared_provenance

__all__ = ["BACKENDS", "ExportSource", "artifact_name", "artifact_sha256", "artifact_size", "check_choice", "export", "export_backends",
           "from_checkpoint", "from_quantized", "manifest_path", "read_manifest"]


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
    float_layers: tuple[str, ...] = ()  # layers the int8 program keeps in float (its summary's float_layers)
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

    def method_for(self, precision: str) -> str:
        """How an artifact of `precision` was quantized: the program's method for int8, else none."""
        return self.method if precision == "int8" else "none"

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
        raise CheckpointError(f"quantized program {str(path)!r} has no readable summary {str(summary_path)!r} beside it "
                              f"({type(exc).__name__})") from exc
    if source is not None and source.recipe.to_dict()["model"] != recipe.to_dict()["model"]:
        raise CheckpointError(f"quantized program {str(path)!r} was made from a different model than the checkpoint "
                              "(recipe model sections differ)")
    stem = path.name.removesuffix("_int8.pt2")
    if source is None:
        source = ExportSource(recipe, checkpoint_sha256=summary.get("source_checkpoint_sha256"), name=stem)
    source.program, source.method, source.quantized_program = program, summary.get("method", "ptq"), path.name
    source.checkpoint_sha256 = source.checkpoint_sha256 or summary.get("source_checkpoint_sha256")
    source.int8_name = stem
    source.float_layers = tuple(summary.get("float_layers", ()))
    return source


def check_choice(backend: str, precision: str, *, layout: str | None = None, io_dtype: str = "float32",
                 options: dict[str, str] | None = None) -> Backend:
    """The backend, once `precision`, `layout`, `io_dtype` and writer `options` are known to be ones it writes."""
    b = get_backend(backend)
    b.check_precision(precision)
    b.check_options(options or {})
    if layout is not None and layout not in b.layouts:
        raise choices_error(f"layout for {backend}", layout, b.layouts)
    if io_dtype not in b.io_dtypes(precision):
        raise choices_error(f"io dtype for {backend} {precision}", io_dtype, b.io_dtypes(precision))
    return b


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
    model = copy.deepcopy(source.model).eval()
    fold_batchnorm(model)  # the same function in a third of the graph nodes: every backend fuses it anyway
    return model


def export(
    source: ExportSource,
    backend: str,
    precision: str,
    out_dir: str | Path,
    *,
    layout: str | None = None,
    io_dtype: str = "float32",
    options: dict[str, str] | None = None,
) -> Path:
    """Write one artifact and its manifest; returns the artifact's path.

    `layout`: NHWC (TFLite's default, what apps and MediaPipe feed) or NCHW; ExecuTorch artifacts
    are NCHW, Core ML takes an image. `io_dtype`: TFLite int8 only, float32 (default) or int8 I/O.
    `options`: the backend's writer options (`Backend.options`), e.g. executorch-coreml's
    compute_units and minimum_deployment_target.
    """
    b = check_choice(backend, precision, layout=layout, io_dtype=io_dtype, options=options)
    layout = layout or b.layouts[0]
    module = _module_for(source, precision)
    out = Path(out_dir)
    _check_writable(out)
    artifact = out / artifact_name(source.int8_name if precision == "int8" else source.name, backend, precision)
    with torch.no_grad(), contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(artifact))
        tmp_manifest = stack.enter_context(atomic_path(manifest_path(artifact)))
        with shared_provenance():
            written = b.write(module, source, precision, tmp, layout=layout, io_dtype=io_dtype, **(options or {}))
        manifest = build_manifest(
            artifact, backend=backend, precision=precision, method=source.method_for(precision), recipe=source.recipe,
            model_config=source.model_config, input_spec=written.input_spec, output_spec=written.output_spec,
            sha256=artifact_sha256(tmp), size_bytes=artifact_size(tmp), checkpoint_sha256=source.checkpoint_sha256,
            quantized_program=source.quantized_program if precision == "int8" else None, backend_info=written.info,
            float_layers=list(source.float_layers) if precision == "int8" else None,
        )
        tmp_manifest.write_text(json.dumps(manifest, indent=2))
        _fail_point("before-rename")
    return artifact


def export_backends(source: ExportSource, backends: str | list[str], precision: str, out_dir: str | Path, *,
                    exact_precision: bool = False, layout: str = "NHWC", io_dtype: str = "float32") -> list[Path]:
    """`aspp-edge export`: one artifact per backend (comma-separated or a list), checked before any is
    written. A float `precision` means each backend's own float default (Core ML: fp16) unless
    `exact_precision`; `layout` and `io_dtype` apply where the backend offers them (TFLite)."""
    names = [b.strip() for b in backends.split(",") if b.strip()] if isinstance(backends, str) else list(backends)
    plans = []
    for name in names:
        b = get_backend(name)
        prec = b.float_precision if precision == "fp32" and not exact_precision else precision
        lay = layout if len(b.layouts) > 1 else None  # the others have one layout
        dtype = io_dtype if len(b.io_dtypes(prec)) > 1 else "float32"
        check_choice(name, prec, layout=lay, io_dtype=dtype)
        plans.append((name, prec, lay, dtype))
    return [export(source, name, prec, out_dir, layout=lay, io_dtype=dtype) for name, prec, lay, dtype in plans]


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
