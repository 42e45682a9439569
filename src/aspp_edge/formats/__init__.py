"""Artifact formats, the bottom that export (which writes artifacts) and runtime (which runs them)
share: the backend registry, file checks, and `<artifact>.manifest.json` (read, validate, write)."""

from __future__ import annotations

from pathlib import Path

from ..errors import AsppEdgeError
from .backends import (BACKENDS, DEFAULT_BACKENDS, SUFFIXES, Backend, artifact_name, backend_for, get_backend, register_backend,
                       suffixes)
from .files import artifact_sha256, artifact_size
from .manifest import manifest_path, read_manifest

__all__ = ["BACKENDS", "DEFAULT_BACKENDS", "SUFFIXES", "Backend", "artifact_name", "artifact_sha256", "artifact_size", "backend_for",
           "check_artifact", "existing_backend", "get_backend", "manifest_path", "read_manifest", "register_backend", "suffixes"]


def existing_backend(path: str | Path) -> Backend:
    """The backend of an artifact that must exist: known type first, then present."""
    path = Path(path)
    backend = backend_for(path)
    if not path.exists():
        raise AsppEdgeError(f"artifact {str(path)!r} not found")
    return backend


def check_artifact(path: str | Path) -> Path:
    """Raise one clear error unless `path` is an artifact we can run: known type, present, in its
    format, its manifest beside it."""
    path = Path(path)
    existing_backend(path).check(path)
    read_manifest(path)
    return path
