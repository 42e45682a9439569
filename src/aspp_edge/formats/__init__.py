"""Artifact formats, the bottom that export (which writes artifacts) and runtime (which runs them)
share: the backend registry, file checks, and `<artifact>.manifest.json` (read, validate, write).
`backend_for` lives here, above both `backends` and `manifest`, because a `.pte`'s backend is read
from its manifest; `manifest` imports `backends`, never the other way."""

from __future__ import annotations

from pathlib import Path

from ..errors import AsppEdgeError, choices_error
from .backends import (BACKENDS, DEFAULT_BACKENDS, SUFFIXES, Backend, artifact_name, get_backend, register_backend,
                       suffixes)
from .files import artifact_sha256, artifact_size
from .manifest import manifest_path, read_manifest

__all__ = ["BACKENDS", "DEFAULT_BACKENDS", "SUFFIXES", "Backend", "artifact_name", "artifact_sha256", "artifact_size", "backend_for",
           "check_artifact", "existing_backend", "get_backend", "manifest_path", "read_manifest", "register_backend", "suffixes"]


def backend_for(path: str | Path) -> Backend:
    """The backend an artifact belongs to: by its extension, and where several backends share it
    (.pte: executorch, executorch-coreml, executorch-vulkan) by the manifest beside it."""
    path = Path(path)
    candidates = [b for b in BACKENDS.values() if path.suffix == b.suffix]
    if not candidates:
        raise choices_error("artifact type", path.suffix or path.name, suffixes(), cls=AsppEdgeError)
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(b.name for b in candidates)
    if not path.exists():
        raise AsppEdgeError(f"artifact {str(path)!r} not found")
    for check in dict.fromkeys(b.check for b in candidates):  # the file's own format first: a foreign file says so
        check(path)
    if manifest_path(path).is_file():
        backend = read_manifest(path)["backend"]  # a broken manifest: its own one-line ManifestError
    else:
        raise AsppEdgeError(f"{str(path)!r}: a {path.suffix} file is written by one of {names}; its manifest says which, "
                            f"and there is none beside it ({manifest_path(path).name}, written by `aspp-edge export`)")
    if backend not in {b.name for b in candidates}:
        raise choices_error(f"backend of a {path.suffix} manifest", backend, [b.name for b in candidates], cls=AsppEdgeError)
    return BACKENDS[backend]


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
