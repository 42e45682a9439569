"""One grammar for the models a command names (`run --model/--heads`, `sweep --models`,
`train/quantize/export --model`): each item is

    HEAD                 a built-in head (on the recipe's backbone, or the sweep's --backbone)
    HEAD@BACKBONE        a built-in head on a named backbone
    all                  every built-in head
    SPEC                 a brought model: torchvision:NAME, smp:ARCH or module.path:callable
    {source: SPEC, args: {...}, weights: FILE}   a brought model with its factory's arguments and a
                         state dict (YAML mapping, or a dict from Python or a recipe)

and a string may hold several items separated by commas (a YAML mapping is one item). Names are
checked here (heads, backbones, the spec's form), before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, choices_error
from .brought import SOURCE_FORMS, parse_spec, slug
from .registry import BACKBONES, list_heads

ALL = "all"
BROUGHT_KEYS = ("source", "args", "weights")


@dataclass(frozen=True)
class ModelEntry:
    """A built-in head (`head`, with `backbone` None for the recipe's own) or a brought model (`source`,
    `args`, `weights`)."""

    head: str | None = None
    backbone: str | None = None
    source: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None

    @property
    def brought(self) -> bool:
        return self.source is not None

    def key(self, backbone: str | None = None) -> str:
        """How a sweep names it: head@backbone (`backbone`: the default), or the spec."""
        return self.source if self.brought else f"{self.head}@{self.backbone or backbone}"

    def folder(self, backbone: str | None = None) -> str:
        """The key, file-name-safe: head-backbone, or the spec's slug."""
        return slug(self.source) if self.brought else f"{self.head}-{self.backbone or backbone}"

    def model_section(self) -> dict[str, Any]:
        """The overrides of a recipe's `model:` section that make it this model."""
        if self.brought:
            return {"source": self.source, "args": dict(self.args), "weights": self.weights}
        return {"head": self.head, **({"backbone": self.backbone} if self.backbone else {}), "source": None, "args": {}, "weights": None}


def _yaml_mapping(text: str) -> dict[str, Any]:
    import yaml

    example = "'{source: smp:Unet, args: {encoder_depth: 3}}'"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"model {text!r} is not a YAML mapping ({exc}); e.g. {example}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"model {text!r} is not a YAML mapping; e.g. {example}")
    return value


def _from_mapping(item: dict[str, Any]) -> ModelEntry:
    unknown = sorted(set(item) - set(BROUGHT_KEYS))
    if unknown or "source" not in item:
        raise ConfigError(f"model entry {item!r} is not valid; valid keys: source (required), args, weights")
    parse_spec(item["source"])
    args = item.get("args") or {}
    if not isinstance(args, dict):
        raise ConfigError(f"model entry {item!r}: args must be a mapping of the factory's keyword arguments")
    return ModelEntry(source=item["source"], args=dict(args), weights=item.get("weights"))


def _from_text(token: str) -> list[ModelEntry]:
    if token == ALL:
        return [ModelEntry(head=h) for h in list_heads()]
    if ":" in token:
        parse_spec(token)
        return [ModelEntry(source=token)]
    head, at, backbone = token.partition("@")
    heads = list_heads()
    if head not in heads:
        raise ConfigError(f"unknown head {head!r} in model {token!r}; valid choices: {', '.join([ALL, *heads])}, head@backbone, "
                          f"or a brought model ({', '.join(SOURCE_FORMS)})")
    if at and backbone not in BACKBONES:
        raise choices_error(f"backbone in model {token!r}:", backbone, BACKBONES.names())
    return [ModelEntry(head=head, backbone=backbone or None)]


def parse_models(value: str | dict[str, Any] | ModelEntry | list | tuple | None, *, what: str = "model",
                 heads_only: bool = False) -> list[ModelEntry]:
    """Every model `value` names, in order (None: none). `heads_only`: brought models are refused
    (`run --heads`)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    entries: list[ModelEntry] = []
    for item in items:
        if isinstance(item, ModelEntry):
            entries.append(item)
        elif isinstance(item, dict):
            entries.append(_from_mapping(item))
        elif isinstance(item, str) and item.lstrip().startswith("{"):
            entries.append(_from_mapping(_yaml_mapping(item)))
        elif isinstance(item, str):
            for token in (t.strip() for t in item.split(",")):
                if token:
                    entries += _from_text(token)
        else:
            raise ConfigError(f"{what} {item!r} is not a model name, spec or mapping")
    if heads_only:
        brought = [e.source for e in entries if e.brought]
        if brought:
            raise ConfigError(f"{what} takes built-in heads ({', '.join([ALL, *list_heads()])}); {brought[0]!r} is a brought model: "
                              "give it with --model")
    return entries
