from __future__ import annotations

import os

import pytest
import torch

from aspp_edge.config import load_recipe

torch.set_num_threads(min(2, os.cpu_count() or 1))

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
