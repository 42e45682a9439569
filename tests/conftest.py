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
def quick_run(tmp_path_factory, worker_id):
    """One quick run for the whole session, shared by the xdist workers (the first to take the lock
    runs it; xdist's loadgroup does not group tests under pytest 9, so a lock, not a group). Tests
    that change a run work on a copy."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    out = root / "pipeline" / "quick"
    with FileLock(str(root / "pipeline.lock")):
        if not (out / "report.json").is_file():
            # PTQ only: QAT's exports are the same code path, and QAT's prepare alone costs ~40 s (tests/test_quantize.py runs it)
            from aspp_edge.cli import main

            # the other worker usually waits on this lock: give the run every core meanwhile
            threads = torch.get_num_threads()
            torch.set_num_threads(os.cpu_count() or 1)
            try:
                assert main(["run", "--recipe", "quick", "--out", str(out), "--methods", "ptq", "--runs", "3", "--no-peaks"]) == 0
            finally:
                torch.set_num_threads(threads)
    return out


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
