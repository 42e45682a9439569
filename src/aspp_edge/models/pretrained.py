"""Published torchvision weights by name, read from the torch hub cache.

A name is `imagenet` (backbones only: the builder's DEFAULT ImageNet weights) or a member of the
builder's torchvision weights enum (`IMAGENET1K_V2`, `COCO_WITH_VOC_LABELS_V1`, `DEFAULT`). The file
is torchvision's own: `$TORCH_HOME/hub/checkpoints/<basename of the enum's url>` (torch.hub.get_dir()).
A file already there is loaded with `weights_only=True` and no network access; a missing one is
downloaded into the cache through torchvision's weights API (`WeightsEnum.get_state_dict`, hash
checked), unless `ASPP_EDGE_OFFLINE` is set, in which case nothing is tried and the error says which
file to place where. Every failure is one line (`CheckpointError` / `ConfigError`).

What a model started from is recorded as `{"weights": "MobileNet_V2_Weights.IMAGENET1K_V2", "file":
"mobilenet_v2-7ebf99e0.pth", "sha256": <of that file>}` (`record`), for manifests and reports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from ..errors import CheckpointError, ConfigError
from ..fileio import sha256_file

IMAGENET = "imagenet"  # backbones: the builder's DEFAULT weights (ImageNet-1k)
OFFLINE_ENV = "ASPP_EDGE_OFFLINE"  # set (non-empty): never download, a missing file is an error at once


def weights_enum(builder: str):
    """torchvision's weights enum of a classification or segmentation builder (`mobilenet_v2`, ...)."""
    from torchvision.models import get_model_weights

    return get_model_weights(builder)


def weight_names(builder: str, *, imagenet: bool = False) -> list[str]:
    """The names `builder`'s published weights go by: the enum's members and DEFAULT (+ `imagenet`)."""
    names = list(weights_enum(builder).__members__)
    return names + ([IMAGENET] if imagenet else [])


def is_weights_name(value: str | None, builder: str, *, imagenet: bool = False) -> bool:
    return isinstance(value, str) and value in weight_names(builder, imagenet=imagenet)


def resolve(builder: str, name: str, *, imagenet: bool = False):
    """The weights enum member `name` stands for (`imagenet` and `DEFAULT` -> the enum's DEFAULT)."""
    enum = weights_enum(builder)
    if imagenet and name == IMAGENET:
        name = "DEFAULT"
    if name not in enum.__members__:
        raise ConfigError(f"unknown weights {name!r} for {builder}; valid choices: {', '.join(weight_names(builder, imagenet=imagenet))}")
    return enum[name]


def label(weights) -> str:
    """`MobileNet_V2_Weights.IMAGENET1K_V2`: the enum's canonical name (an alias such as DEFAULT resolved)."""
    return f"{type(weights).__name__}.{weights.name}"


def hub_file(weights) -> Path:
    """Where torchvision keeps (and torch.hub looks for) the weights file: $TORCH_HOME/hub/checkpoints/<name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def normalization(weights) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the weights' own preprocessing (`weights.transforms()`)."""
    t = weights.transforms()
    return tuple(float(v) for v in t.mean), tuple(float(v) for v in t.std)


def _place_hint(weights, path: Path) -> str:
    return f"place {path.name} (from {weights.url}) at {path} ($TORCH_HOME/hub/checkpoints)"


def _fetch(weights, path: Path, what: str) -> None:
    """Download into the hub cache through torchvision's weights API, or fail in one line."""
    if os.environ.get(OFFLINE_ENV):
        raise CheckpointError(f"{what} weights {label(weights)} are not in the torch hub cache and {OFFLINE_ENV} is set: "
                              + _place_hint(weights, path))
    try:
        weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, timeouts, a hash mismatch: all mean no usable file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{what} weights {label(weights)} are not in the torch hub cache and could not be downloaded "
                              f"({type(exc).__name__}: {first}); " + _place_hint(weights, path)) from exc
    if not path.is_file():
        raise CheckpointError(f"{what} weights {label(weights)}: the download left no file at {path}; " + _place_hint(weights, path))


def load_published(weights, what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of published `weights` (from the hub cache, downloaded into it when missing and
    allowed) and its record. `what` names the model in errors (`backbone mobilenet_v2`)."""
    path = hub_file(weights)
    if not path.is_file():
        _fetch(weights, path, what)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors: not a file we can read safely
        raise CheckpointError(f"{what} weights file {str(path)!r} ({label(weights)}) is corrupt or not a weights-only torch file "
                              f"({type(exc).__name__}); delete it to download it again, or " + _place_hint(weights, path)) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} weights file {str(path)!r} ({label(weights)}) holds no state dict (name -> tensor)")
    return dict(state), record(weights)


@cache
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a weights file (cached per path, size and mtime); None when the file is gone."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _digest(str(p.resolve()), st.st_size, st.st_mtime_ns)


def record(weights) -> dict[str, Any]:
    """What a model started from, for manifests and reports: enum name, file name, sha256 of the file."""
    path = hub_file(weights)
    return {"weights": label(weights), "file": path.name, "sha256": file_sha256(path)}


def file_record(path: str | Path) -> dict[str, Any]:
    """The same record for a local weights file given by path."""
    return {"file": str(path), "sha256": file_sha256(path)}


def class_layers(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], n_from: int, n_to: int) -> list[str]:
    """Keys of the per-class output layers when re-heading from `n_from` to `n_to` classes: tensors whose
    first dimension is the class count and that differ from the model's only there."""
    keys = []
    for key in sorted(set(state) & set(own)):
        a, b = state[key].shape, own[key].shape
        if a != b and len(a) == len(b) >= 1 and a[0] == n_from and b[0] == n_to and a[1:] == b[1:]:
            keys.append(key)
    return keys
