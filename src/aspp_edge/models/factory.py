"""One door for every model a recipe names: a built-in head (`create_model`) or a brought model
(`models/brought.py`), and the one description of it that manifests and reports carry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from .brought import build_brought, slug
from .segmenter import create_model

if TYPE_CHECKING:
    from ..config import ModelConfig, Recipe


def model_from_recipe(recipe: Recipe, *, load_weights: bool = True, check: bool = True) -> nn.Module:
    """The recipe's float model. `load_weights=False` skips backbone/brought weights (a checkpoint
    will overwrite every tensor)."""
    m = recipe.model
    if m.source:
        return build_brought(m.source, m.args, num_classes=recipe.num_classes, input_size=recipe.data.resolution,
                             weights=m.weights if load_weights else None, rehead=m.rehead and load_weights, check=check)
    kwargs = recipe.model_kwargs()
    if not load_weights:
        kwargs["backbone_weights"] = None
    return create_model(m.head, **kwargs)


def model_key(model: ModelConfig) -> str:
    """The name a model goes by in run folders, artifact names and report rows: the head, or the spec's slug."""
    return slug(model.source) if model.source else model.head


def model_label(model: ModelConfig) -> str:
    """How reports and logs name the model: the spec for a brought model, else head on backbone."""
    if model.source:
        return model.source
    return f"{model.head} on {model.backbone} OS{model.output_stride}, {model.decoder}"


def starting_weights(model: ModelConfig) -> dict[str, Any] | None:
    """What the model started from before training: published weights (`weights`: the torchvision enum
    name, `file`, `sha256` of the file in the hub cache), a local file (`file`, `sha256`), or None for
    random init. `sha256` is None when the file is no longer there. `part` says what the weights cover."""
    from . import pretrained
    from .brought import parse_spec, published_name

    if model.source:
        if not model.weights:
            return None
        spec = parse_spec(model.source)
        if published_name(spec, model.weights):
            rec = pretrained.record(pretrained.resolve(spec.name, model.weights))
        else:
            rec = pretrained.file_record(model.weights)
        return {**rec, "part": "model, re-headed" if model.rehead else "model"}
    if not model.backbone_weights:
        return None
    if pretrained.is_weights_name(model.backbone_weights, model.backbone, imagenet=True):
        rec = pretrained.record(pretrained.resolve(model.backbone, model.backbone_weights, imagenet=True))
    else:
        rec = pretrained.file_record(model.backbone_weights)
    return {**rec, "part": "backbone"}


def describe_model(recipe: Recipe, model: nn.Module | None = None) -> dict[str, Any]:
    """The manifest's `model` section. Built-in heads: head, backbone, decoder, output stride,
    classes, width. Brought models: source spec, factory arguments, classes, parameter count and
    GMACs at the recipe's resolution (counted on `model`, or on a fresh build without weights).
    Either: `pretrained`, the weights it started from (`starting_weights`), when it did not start random."""
    m = recipe.model
    start = starting_weights(m)
    extra = {"pretrained": start} if start else {}
    if not m.source:
        return {"head": m.head, "backbone": m.backbone, "decoder": m.decoder, "output_stride": m.output_stride,
                "num_classes": recipe.num_classes, "width_mult": m.width_mult, **extra}
    from .stats import count_macs, count_params

    model = model if model is not None else model_from_recipe(recipe, load_weights=False, check=False)
    size = recipe.data.resolution
    import torch

    return {"source": m.source, "args": dict(m.args), "num_classes": recipe.num_classes, "params": count_params(model),
            "gmacs": count_macs(model, torch.zeros(1, 3, size, size)) / 1e9, **extra}
