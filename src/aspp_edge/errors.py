"""Exception types. Every error names the bad value and, where there is a fixed set, the valid choices."""

from __future__ import annotations

from collections.abc import Iterable


class AsppEdgeError(Exception):
    """Base class for errors the CLI reports as one line (no traceback)."""


class ConfigError(AsppEdgeError, ValueError):
    """A recipe, option or argument that is not valid."""


class CheckpointError(AsppEdgeError, ValueError):
    """A checkpoint that cannot be read, or that does not match the model it is loaded into."""


class DatasetError(AsppEdgeError, ValueError):
    """A dataset folder or sample that cannot be used."""


def choices_error(kind: str, value: object, choices: Iterable[str], cls: type[Exception] = ConfigError) -> Exception:
    """Build the standard "unknown X 'v'; valid choices: a, b, c" error."""
    valid = ", ".join(sorted(choices))
    return cls(f"unknown {kind} {value!r}; valid choices: {valid}")
