"""Name -> builder registries for heads, backbones and decoders.

`register_head` fills the head registry (the ASPP variant's name); backbones and decoders have
registries of their own. A duplicate name raises instead of overwriting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ..errors import choices_error

F = TypeVar("F", bound=Callable)


class Registry(Generic[F]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, F] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        def wrap(fn: F) -> F:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[key] = fn
            return fn

        return wrap

    def get(self, name: str) -> F:
        if name not in self._entries:
            raise choices_error(self.kind, name, self._entries)
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


HEADS: Registry = Registry("head")
BACKBONES: Registry = Registry("backbone")
DECODERS: Registry = Registry("decoder")

register_head = HEADS.register
register_model = register_head  # the older name
register_backbone = BACKBONES.register
register_decoder = DECODERS.register


def list_heads() -> list[str]:
    """Names of the registered head variants (what `create_model` accepts)."""
    return HEADS.names()


list_models = list_heads  # the older name
