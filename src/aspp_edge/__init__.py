"""aspp-edge: ASPP-head segmentation models for phones.

Build (`create_model`), train (`train`), and, as the later stages land, quantize, export and
evaluate them. See DESIGN.md for the data flow.
"""

from .config import Recipe, load_recipe
from .errors import AsppEdgeError, CheckpointError, ConfigError, DatasetError
from .models import create_model, list_models
from .train import train

__version__ = "0.1.0"

__all__ = [
    "AsppEdgeError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "Recipe",
    "__version__",
    "create_model",
    "list_models",
    "load_recipe",
    "train",
]
