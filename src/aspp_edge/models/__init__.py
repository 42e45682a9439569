"""Models: mobile backbones, ASPP head variants, decoders and the `create_model` builder; models
people bring (`build_brought`: torchvision:NAME, smp:ARCH, module.path:callable); `parse_models`,
the one grammar for the models a command names."""

from .brought import BroughtModel, build_brought
from .entry import ModelEntry, parse_models
from .factory import describe_model, model_from_recipe, model_key, model_label
from .registry import BACKBONES, DECODERS, HEADS, list_heads, list_models, register_head, register_model
from .segmenter import Segmenter, create_model

__all__ = ["BACKBONES", "DECODERS", "HEADS", "BroughtModel", "ModelEntry", "Segmenter", "build_brought", "create_model",
           "describe_model", "list_heads", "list_models", "model_from_recipe", "model_key", "model_label", "parse_models",
           "register_head", "register_model"]
