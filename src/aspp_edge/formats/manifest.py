"""`<artifact>.manifest.json`: what an app needs to feed an artifact and read its output.

The JSON Schema (`manifest.schema.json`, beside this file) is the contract; every manifest is
validated against it before it is written, and again when a runner reads it.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema

from ..errors import AsppEdgeError
from .backends import BACKENDS, get_backend

if TYPE_CHECKING:  # formats sit below the recipe: export and runtime both read manifests
    from ..config import Recipe

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
SCHEMA_VERSION = 1
# The `model` section: a built-in head's fields, or a brought model's (models/brought.py).
MODEL_FIELDS = ("head", "backbone", "decoder", "output_stride", "num_classes", "width_mult", "source", "args", "params", "gmacs",
                "pretrained")
TOOL_DISTRIBUTIONS = ("aspp-edge", "torch", "torchao", "executorch", "coremltools", "litert-torch", "ai-edge-litert", "mediapipe")


class ManifestError(AsppEdgeError, ValueError):
    """A manifest that is missing or does not follow the schema."""


def manifest_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".manifest.json")


@cache
def _schema_file() -> str:
    return SCHEMA_PATH.read_text()


def schema() -> dict[str, Any]:
    """manifest.schema.json with its backend and format names taken from the backend registry as it
    is now and artifact suffixes (the file lists the built-in ones, for readers outside Python; a test holds them equal)."""
    doc = json.loads(_schema_file())
    extensions = list(dict.fromkeys(b.extension for b in BACKENDS.values()))
    doc["properties"]["backend"]["enum"] = list(BACKENDS)
    doc["properties"]["format"]["enum"] = extensions
    doc["properties"]["artifact"]["pattern"] = rf"^[A-Za-z0-9_.-]+\.({'|'.join(re.escape(e) for e in extensions)})$"
    return doc


@cache
def tool_versions() -> dict[str, str]:
    versions = {}
    for dist in TOOL_DISTRIBUTIONS:
        try:
            versions[dist.replace("-", "_")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def normalization(recipe: Recipe, applied_by: str = "app") -> dict[str, Any]:
    """x = (pixel * pixel_scale - mean) / std, per RGB channel."""
    return {"pixel_scale": 1.0 / 255.0, "mean": list(recipe.data.mean), "std": list(recipe.data.std), "applied_by": applied_by}


def build_manifest(
    artifact: Path,
    *,
    backend: str,
    precision: str,
    method: str,
    recipe: Recipe,
    model_config: dict[str, Any],
    input_spec: dict[str, Any],
    output_spec: dict[str, Any],
    sha256: str,
    size_bytes: int,
    checkpoint_sha256: str | None,
    quantized_program: str | None,
    backend_info: dict[str, Any],
    float_layers: list[str] | None = None,
) -> dict[str, Any]:
    """`float_layers`: int8 artifacts, the layers the program keeps in float (mixed precision; [] for full int8)."""
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "artifact": artifact.name,
        "format": artifact.suffix.lstrip("."),
        "backend": backend,
        "checked_here": get_backend(backend).checked_here,  # how the exporting machine checks it (the registry's word)
        "precision": precision,
        "method": method,
        "size_bytes": size_bytes,
        "sha256": sha256,
        "model": {k: model_config[k] for k in MODEL_FIELDS if k in model_config},
        "input": input_spec,
        "output": output_spec,
        "reference_normalization": {k: v for k, v in normalization(recipe).items() if k != "applied_by"},
        "labels": list(recipe.class_names),
        "colors": [list(c) for c in recipe.class_colors],
        "source": {"recipe": recipe.name, "dataset": recipe.data.dataset, "checkpoint_sha256": checkpoint_sha256,
                   "quantized_program": quantized_program},
        "tools": tool_versions(),
        "backend_info": backend_info,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if float_layers is not None:
        manifest["quantization"] = {"float_layers": list(float_layers)}
    validate_manifest(manifest, artifact)
    return manifest


def model_name(section: dict[str, Any]) -> str:
    """How a manifest's `model` section is named in tables: the head, or the brought model's source spec."""
    return section.get("head") or section["source"]


def describe_pretrained(start: dict[str, Any] | None) -> str:
    """`MobileNet_V2_Weights.IMAGENET1K_V2 (mobilenet_v2-7ebf99e0.pth, sha256 0123abcd...) for the backbone`, or `random init`."""
    if not start:
        return "random init"
    digest = f"sha256 {start['sha256'][:12]}..." if start.get("sha256") else "file no longer present"
    name = f"{start['weights']} ({start['file']}, {digest})" if start.get("weights") else f"{start['file']} ({digest})"
    return f"{name} for the {start['part']}"


def describe_model_section(section: dict[str, Any]) -> str:
    """One line for a manifest's `model` section."""
    start = f", started from {describe_pretrained(section['pretrained'])}" if section.get("pretrained") else ""
    if "source" in section:
        args = ", ".join(f"{k}={v!r}" for k, v in section["args"].items())
        return (f"{section['source']}({args}), {section['num_classes']} classes, {section['params'] / 1e6:.3g} M params, "
                f"{section['gmacs']:.3g} GMACs{start}")
    return (f"{section['head']} on {section['backbone']}, {section['decoder']}, OS{section['output_stride']}, "
            f"{section['num_classes']} classes{start}")


def validate_manifest(manifest: dict[str, Any], where: str | Path = "manifest") -> None:
    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(manifest), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        at = "/".join(str(p) for p in e.path) or "(top level)"
        raise ManifestError(f"manifest for {str(where)!r} is not valid at {at}: {e.message}")


def read_manifest(artifact: str | Path) -> dict[str, Any]:
    """The validated manifest beside `artifact`."""
    path = manifest_path(artifact)
    if not path.is_file():
        raise ManifestError(f"{str(artifact)!r} has no manifest: expected {str(path)!r} beside it (written by `aspp-edge export`)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {str(path)!r} is not JSON: {exc}") from exc
    validate_manifest(manifest, path)
    return manifest



def add_metrics(artifact: str | Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Write the measured figures into the artifact's manifest (`metrics`), validated, atomically."""
    from ..fileio import atomic_path

    manifest = read_manifest(artifact)
    manifest["metrics"] = metrics
    validate_manifest(manifest, manifest_path(artifact))
    with atomic_path(manifest_path(artifact)) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return manifest
