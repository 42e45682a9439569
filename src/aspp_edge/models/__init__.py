"""Models: mobile backbones, ASPP head variants, decoders and the `create_model` builder."""

from .registry import BACKBONES, DECODERS, HEADS, list_models, register_model
from .segmenter import Segmenter, create_model

__all__ = ["BACKBONES", "DECODERS", "HEADS", "Segmenter", "create_model", "list_models", "register_model"]
