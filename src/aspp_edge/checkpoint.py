"""Float checkpoints: state dict + recipe, saved atomically, loaded with `weights_only=True`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .config import Recipe, recipe_differences
from .errors import CheckpointError, ConfigError
from .fileio import atomic_path
from .models import model_from_recipe

FORMAT = "aspp-edge-checkpoint/1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **payload}, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/unpickling errors all mean: not a checkpoint we can read
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint ({type(exc).__name__})") from exc
    if (not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or not isinstance(ckpt.get("state_dict"), dict)
            or not isinstance(ckpt.get("recipe"), dict)):
        raise CheckpointError(f"checkpoint {str(path)!r} is not an aspp-edge checkpoint (format {FORMAT!r})")
    return ckpt


MODEL_KEYS = ["model.head", "model.backbone", "model.decoder", "model.output_stride", "model.width_mult", "model.head_channels",
              "model.source"]


def _recipe_differences(saved: dict[str, Any], wanted: Recipe) -> list[str]:
    """Model-defining fields that differ between a checkpoint's recipe and `wanted`."""
    diffs = recipe_differences(saved, wanted, MODEL_KEYS)
    if wanted.model.source and saved.get("model", {}).get("args", {}) != wanted.model.args:
        diffs.append(f"model.args: checkpoint {saved.get('model', {}).get('args', {})!r}, recipe {wanted.model.args!r}")
    try:
        saved_classes = Recipe.from_dict(saved).num_classes
    except ConfigError:  # an older or hand-edited recipe that no longer validates: the tensors' check still applies
        saved_classes = None
    if saved_classes is not None and saved_classes != wanted.num_classes:
        diffs.append(f"num_classes: checkpoint {saved_classes}, recipe {wanted.num_classes}")
    return diffs


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`load_state_dict` with an error that names the missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state)


def load_model(path: str | Path, recipe: Recipe | None = None) -> tuple[torch.nn.Module, Recipe, dict[str, Any]]:
    """Rebuild the float model from a checkpoint. With `recipe`, refuse a checkpoint made for another model."""
    ckpt = read_checkpoint(path)
    if recipe is not None:
        diffs = _recipe_differences(ckpt["recipe"], recipe)
        if diffs:
            raise CheckpointError(f"checkpoint {str(path)!r} does not match recipe {recipe.name!r}: " + "; ".join(diffs))
    else:
        recipe = Recipe.from_dict(ckpt["recipe"])
    model = model_from_recipe(recipe, load_weights=False, check=False)  # the checkpoint holds every weight
    load_state(model, ckpt["state_dict"], repr(str(path)))
    return model.eval(), recipe, ckpt
