"""The end-to-end `aspp-edge run`: one function per stage, chained on a recipe.

Stages so far: float training (the reference model) and its evaluation on the val split.
Quantization, export and per-artifact evaluation join this chain as they land.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .checkpoint import load_model
from .config import Recipe
from .data import build_dataset
from .fileio import atomic_path
from .models.stats import model_stats
from .train import FINAL, evaluate_miou, train


@dataclass
class RunSummary:
    recipe: str
    checkpoint: str
    device: str
    float_miou: float
    train_seconds: float
    params: int
    gmacs: float
    seconds: float


def run(recipe: Recipe, out_dir: str | Path, *, resume: bool = False) -> RunSummary:
    started = time.perf_counter()
    out = Path(out_dir)
    result = train(recipe, out / "float", resume=resume)
    model, _, _ = load_model(out / "float" / FINAL, recipe)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    miou = evaluate_miou(model.to(device), build_dataset(recipe, "val"), device, recipe.train.batch_size)
    stats = model_stats(model.cpu())
    summary = RunSummary(
        recipe=recipe.name, checkpoint=str(result.checkpoint), device=str(device), float_miou=miou,
        train_seconds=result.seconds, params=stats.params, gmacs=stats.macs / 1e9, seconds=time.perf_counter() - started,
    )
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps({**asdict(summary), "recipe_config": recipe.to_dict()}, indent=2))
    return summary
