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

from .config import PTQConfig, QATConfig, Recipe, load_recipe
from .errors import AsppEdgeError, CheckpointError, ConfigError, DatasetError
from .models import create_model, list_heads, list_models
from .train import train

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

