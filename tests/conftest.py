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


# One `aspp-edge run --recipe quick` serves every test that reads a run (PTQ only: QAT's exports are
# the same code path, and QAT's prepare alone costs ~40 s, which tests/test_quantize.py runs). It
# starts in the background as soon as a worker's session begins, so the workers go on with other
# tests meanwhile instead of one of them idling on a lock while the other runs it.
# No per-layer numerics stages: the .pte's per-operator debug copy alone costs ~45 s; tests/test_numerics.py
# adds them to a copy of the run for the backends it checks.
QUICK_RUN_ARGS = ["run", "--recipe", "quick", "--methods", "ptq", "--runs", "3", "--no-peaks", "--numerics-images", "0"]


def pytest_collection_modifyitems(session, config, items):
    """Tests that read the shared quick run go last (stable order otherwise, the same on every
    xdist worker), so both workers have other tests to run while it runs in the background."""
    items.sort(key=lambda item: "quick_run" in getattr(item, "fixturenames", ()))


def _pipeline_root(tmp_path_factory):
    """Shared by the xdist workers: their basetemps are subfolders of the session's."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "pipeline"


@pytest.fixture(scope="session", autouse=True)
def _start_quick_run(request, tmp_path_factory):
    """Start the shared quick run once per session (whichever worker comes first), if any selected
    test needs it. The run writes its exit status to `rc` when it ends."""
    import subprocess
    import sys

    from filelock import FileLock

    if not any("quick_run" in getattr(item, "fixturenames", ()) for item in request.session.items):
        return
    root = _pipeline_root(tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "start.lock")):
        if (root / "started").exists():
            return
        (root / "started").write_text("")
        cmd = " ".join([sys.executable, "-m", "aspp_edge.cli", *QUICK_RUN_ARGS, "--out", str(root / "quick")])
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the third process on two cores: one thread
        subprocess.Popen(["sh", "-c", f"{cmd} > {root / 'run.log'} 2>&1; echo $? > {root / 'rc'}"], env=env,
                         start_new_session=True)


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory, _start_quick_run):
    """The shared quick run's folder, once it has finished. Tests that change a run work on a copy."""
    import time

    root = _pipeline_root(tmp_path_factory)
    deadline = time.monotonic() + 1800
    while not (root / "rc").is_file() or not (root / "rc").read_text().strip():
        assert time.monotonic() < deadline, "the shared quick run did not finish in 30 minutes"
        time.sleep(1)
    rc = (root / "rc").read_text().strip()
    assert rc == "0", f"the shared quick run failed (exit {rc}):\n" + (root / "run.log").read_text()[-3000:]
    return root / "quick"


@pytest.fixture(scope="session")
def quick_recipe():
    return load_recipe("quick")


@pytest.fixture(scope="session")
def val_images(quick_recipe):
    """Four val images of the quick recipe on whole 0-255 pixel values, so the Core ML image input
    (uint8 pixels) sees exactly what the tensor-input artifacts and PyTorch see."""
    from aspp_edge.data import build_dataset

    val = build_dataset(quick_recipe, "val")
    images = torch.stack([val[i][0] for i in range(4)])
    mean = torch.tensor(quick_recipe.data.mean).view(1, 3, 1, 1)
    std = torch.tensor(quick_recipe.data.std).view(1, 3, 1, 1)
    pixels = ((images * std + mean) * 255).round().clamp(0, 255)
    return (pixels / 255 - mean) / std


@pytest.fixture(scope="session")
def quick_trained(quick_run, quick_recipe):
    """The quick recipe trained once per session: the shared run's float stage (float.pt + last.pt),
    whose `train()` is the one `aspp-edge train` runs."""
    from aspp_edge.train import TrainResult

    path = quick_run / quick_recipe.model.head / "float" / "float.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return TrainResult(path, ckpt["val_miou"], float("nan"), "cpu", 1, ckpt["history"])


@pytest.fixture(scope="session")
def quick_calib(quick_recipe):
    from aspp_edge.calibration.calibrate import calibration_batches
    from aspp_edge.data import calibration_dataset

    return calibration_batches(calibration_dataset(quick_recipe)[0], 32, 16)


class HeadModels:
    """Each head trained on the quick recipe for half its epochs (4), on first use: head -> float model.
    A key `head@backbone` trains the head on that backbone."""

    def __init__(self, root, recipe) -> None:
        self.root, self.recipe, self._done = root, recipe, {}

    def recipe_for(self, head: str):
        """`head`, or `head@backbone` (e.g. `lraspp@mobilenet_v3_large`) for another backbone."""
        name, _, backbone = head.partition("@")
        model = {"head": name, **({"backbone": backbone} if backbone else {})}
        return self.recipe.replace(model=model, train={"epochs": 4})

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
