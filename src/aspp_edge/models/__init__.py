"""Models: mobile backbones, ASPP head variants, decoders and the `create_model` builder; models
people bring (`build_brought`: torchvision:NAME, smp:ARCH, module.path:callable)."""

from .brought import BroughtModel, build_brought
from .factory import describe_model, model_from_recipe, model_key, model_label
from .registry import BACKBONES, DECODERS, HEADS, list_models, register_model
from .segmenter import Segmenter, create_model

__all__ = ["BACKBONES", "DECODERS", "HEADS", "BroughtModel", "Segmenter", "build_brought", "create_model", "describe_model",
           "list_models", "model_from_recipe", "model_key", "model_label", "register_model"]
