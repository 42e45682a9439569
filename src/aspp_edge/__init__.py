"""aspp-edge: ASPP-head segmentation models for phones.

Build (`create_model`), train (`train`), quantize (`aspp_edge.quantize`), export (`aspp_edge.export`),
run (`aspp_edge.runtime`) and measure (`aspp_edge.evaluate`, `aspp_edge.pipeline.run`) them.
The README's "Code layout" shows the units and the order their imports follow.

Quantization lives in `aspp_edge.quantize` (`from aspp_edge.quantize import quantize`) and is not
imported here: it pulls in torchao and ExecuTorch's quantizer, which the float model, training,
evaluation and the runners do not need.
"""

from . import kernels

kernels.pin()  # before torch's first CPU op: one kernel ISA, so seeded training repeats across machines

import os as _os

from .config import PTQConfig, QATConfig, Recipe, load_recipe
from .errors import AsppEdgeError, CheckpointError, ConfigError, DatasetError

# The timing child (`evaluate.latency`, one fresh process per artifact) runs a runtime only: without
# torch and torchvision a LiteRT child starts in 0.2 s instead of 3 s and its peak RSS is the
# runtime's (59 MB for the default int8 .tflite, against 715 MB with torch loaded).
_RUNTIME_ONLY = _os.environ.get("ASPP_EDGE_RUNTIME_ONLY") == "1"
if not _RUNTIME_ONLY:
    from .models import create_model, list_heads, list_models
    from .train import train


def __getattr__(name: str):
    """The model and training API in a runtime-only process, imported when first asked for."""
    if _RUNTIME_ONLY and name in ("create_model", "list_heads", "list_models"):
        from . import models

        return getattr(models, name)
    if _RUNTIME_ONLY and name == "train":
        from .train import train as fn

        globals()["train"] = fn  # the function, not the submodule its import just bound here
        return fn
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "AsppEdgeError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "PTQConfig",
    "QATConfig",
    "Recipe",
    "__version__",
    "create_model",
    "list_heads",
    "list_models",
    "load_recipe",
    "train",
]

