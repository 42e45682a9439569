"""aspp-edge: ASPP-head segmentation models for phones.

Build (`create_model`), train (`train`) and quantize (`quantize`) them; export and evaluation
join as they land. See DESIGN.md for the data flow.
"""

from .config import PTQConfig, QATConfig, Recipe, load_recipe
from .errors import AsppEdgeError, CheckpointError, ConfigError, DatasetError
from .models import create_model, list_models
from .quantize import QuantizedModel, quantize
from .train import train

__version__ = "0.1.0"

__all__ = [
    "AsppEdgeError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "PTQConfig",
    "QATConfig",
    "QuantizedModel",
    "Recipe",
    "__version__",
    "create_model",
    "list_models",
    "load_recipe",
    "quantize",
    "train",
]
