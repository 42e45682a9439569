"""What each artifact file is, checked without its runtime: magic bytes, package layout, size, digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import AsppEdgeError
from ..fileio import check_flatbuffer, sha256_file

PTE_IDENTIFIER = b"ET12"
TFLITE_IDENTIFIER = b"TFL3"


def check_pte(path: str | Path) -> None:
    check_flatbuffer(path, PTE_IDENTIFIER, "an ExecuTorch program (.pte)")


def check_tflite(path: str | Path) -> None:
    check_flatbuffer(path, TFLITE_IDENTIFIER, "a TFLite model (.tflite)")


def check_mlpackage(path: str | Path) -> None:
    path = Path(path)
    if not (path.is_dir() and (path / "Manifest.json").is_file()):
        raise AsppEdgeError(f"{str(path)!r} is not a Core ML package (.mlpackage): expected a directory with Manifest.json")


def load_mlpackage_spec(path: str | Path):
    """The protobuf spec of a saved .mlpackage (works on Linux), or a clear error."""
    import coremltools as ct  # optional and slow to import: only where a package is read

    check_mlpackage(path)
    try:
        return ct.utils.load_spec(str(path))
    except Exception as exc:
        raise AsppEdgeError(f"{str(path)!r} is a truncated or corrupt Core ML package (.mlpackage): {type(exc).__name__}: {exc}") from exc


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def artifact_sha256(path: str | Path) -> str:
    """sha256 of a file; for a package directory, of its files' relative paths and contents in order."""
    path = Path(path)
    if not path.is_dir():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in _files(path):
        h.update(str(f.relative_to(path)).encode() + b"\0" + bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def artifact_size(path: str | Path) -> int:
    return sum(f.stat().st_size for f in _files(Path(path)))
