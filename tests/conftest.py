from __future__ import annotations

import os

import pytest
import torch

from aspp_edge.config import load_recipe

# Under pytest-xdist each worker gets an equal share of the cores (make test runs 2 workers).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // _workers))

# Tiny model settings shared by the model tests: 64x64 inputs, width 0.25, 16-channel heads.
TINY = dict(num_classes=4, width_mult=0.25, head_channels=16, input_size=64)


@pytest.fixture(scope="session")
def quick_recipe():
    return load_recipe("quick")


@pytest.fixture(scope="session")
def quick_trained(tmp_path_factory, quick_recipe):
    """The quick recipe trained once per session (float.pt + last.pt)."""
    from aspp_edge.train import train

    out = tmp_path_factory.mktemp("quick")
    return train(quick_recipe, out, progress=False)


@pytest.fixture(scope="session")
def quick_calib(quick_recipe):
    from aspp_edge.calibration.calibrate import calibration_batches
    from aspp_edge.data import build_dataset

    return calibration_batches(build_dataset(quick_recipe, "train", augment=False), 32, 16)


class HeadModels:
    """Each head trained on the quick recipe for half its epochs (4), on first use: head -> float model."""

    def __init__(self, root, recipe) -> None:
        self.root, self.recipe, self._done = root, recipe, {}

    def recipe_for(self, head: str):
        return self.recipe.replace(model={"head": head}, train={"epochs": 4})

    def checkpoint(self, head: str):
        if head not in self._done:
            from aspp_edge.train import train

            self._done[head] = train(self.recipe_for(head), self.root / head, progress=False).checkpoint
        return self._done[head]

    def __getitem__(self, head: str):
        from aspp_edge.checkpoint import load_model

        return load_model(self.checkpoint(head), self.recipe_for(head))[0]


@pytest.fixture(scope="session")
def head_models(tmp_path_factory, quick_recipe):
    return HeadModels(tmp_path_factory.mktemp("heads"), quick_recipe)
