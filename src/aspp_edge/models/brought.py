"""Models people bring: any PyTorch segmentation model through the same pipeline.

A model spec names where the model comes from:

    torchvision:NAME       a builder of `torchvision.models.segmentation` (e.g. lraspp_mobilenet_v3_large),
                           called with weights=None, weights_backbone=None, num_classes=<from the data>;
                           its published weights load by name (`weights: DEFAULT` or an enum member,
                           from the torch hub cache, models/pretrained.py)
    smp:ARCH               a segmentation_models_pytorch architecture (e.g. DeepLabV3Plus), called with
                           classes=<from the data> and encoder_weights=None unless the arguments say
                           otherwise (the optional extra: pip install 'aspp-edge[smp]')
    module.path:callable   any importable factory (the current directory included) returning an
                           nn.Module; it gets num_classes=<from the data> when its signature has a
                           `num_classes` parameter

plus keyword arguments for the factory (`model.args` in a recipe, `--model-arg KEY=VALUE` on the
command line) and, optionally, a state dict (`model.weights`, `--weights FILE`, loaded with
`weights_only=True`) or, for torchvision:NAME, a published weights name (`--weights DEFAULT`).

Published weights predict their own classes (`meta["categories"]`: 21 for the COCO-with-VOC-labels
models): the data must have that many classes, or the recipe re-heads the model (`model.rehead:
true`): every tensor is loaded except the per-class output layers (LR-ASPP's low/high classifiers,
DeepLabV3's last classifier conv), which start from torchvision's init for the data's classes and
are learned by fine-tuning. torchvision's auxiliary classifier (aux_classifier.*) is not built here
and its tensors are left out.

The pipeline needs from a model: image N x 3 x H x W in, logits out, traceable by `torch.export`
(no data-dependent Python control flow). `BroughtModel` adapts the output once, so every stage and
every exporter sees `image NCHW -> logits NCHW at the input size`:
- a dict: its "out" entry (torchvision's segmentation models; "aux" is dropped), or its only entry;
- a tuple or list: its first element (SMP with `aux_params` returns (mask, labels));
- logits at a lower resolution: upsampled bilinearly (align_corners=False) to the input size.
Anything else, an output that is not rank 4, or a class count that is not the data's, is a
`ConfigError` naming the shape it got. The adapter is checked once when the model is built, on a
1 x 3 x H x W input at the recipe's resolution.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError, choices_error

SOURCE_FORMS = ("torchvision:NAME", "smp:ARCH", "module.path:callable")
SMP_PIP = "pip install 'aspp-edge[smp]' (segmentation-models-pytorch==0.6.0)"
# Factory arguments that would download weights or that the pipeline sets itself.
TORCHVISION_RESERVED = ("weights", "weights_backbone", "num_classes", "progress")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: `kind` is torchvision, smp or module; `name` the builder, architecture or callable."""

    text: str
    kind: str
    name: str
    module: str | None = None


def _forms() -> str:
    return ", ".join(SOURCE_FORMS)


def torchvision_builders() -> list[str]:
    from torchvision.models import list_models, segmentation

    return list_models(module=segmentation)


def parse_spec(text: str) -> ModelSpec:
    """Check a spec's form (no import of the user's module yet); a bad one is a one-line ConfigError."""
    if not isinstance(text, str) or ":" not in text:
        raise ConfigError(f"model source {text!r} has no source prefix; valid forms: {_forms()}")
    prefix, _, name = text.partition(":")
    if not name:
        raise ConfigError(f"model source {text!r} names nothing after {prefix + ':'!r}; valid forms: {_forms()}")
    if prefix == "torchvision":
        valid = torchvision_builders()
        if name not in valid:
            raise choices_error("torchvision segmentation builder", name, valid)
        return ModelSpec(text, "torchvision", name)
    if prefix == "smp":
        if not name.isidentifier():
            raise ConfigError(f"model source {text!r}: {name!r} is not an SMP architecture name (e.g. smp:DeepLabV3Plus)")
        return ModelSpec(text, "smp", name)
    # module.path:callable. A dotted path, or a single name that is an importable module; any other
    # prefix is a scheme this tool does not know (hub:, timm:, https:, ...).
    if "." not in prefix:
        _cwd_importable()
    if not _DOTTED.match(prefix) or ("." not in prefix and importlib.util.find_spec(prefix) is None):
        raise ConfigError(f"unknown model source prefix {prefix + ':'!r} in {text!r}; valid forms: {_forms()} "
                          "(module.path must be importable)")
    if not name.isidentifier():
        raise ConfigError(f"model source {text!r}: {name!r} is not a callable's name")
    return ModelSpec(text, "module", name, module=prefix)


def slug(text: str) -> str:
    """A file-name-safe key for a spec (run folders, artifact names): torchvision:x -> torchvision-x."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")


def _cwd_importable() -> None:
    """Modules in the current directory are importable, as with `python -m` (console scripts lack it)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _import_smp():
    try:
        import segmentation_models_pytorch as smp
    except ImportError as exc:
        raise ConfigError(f"smp: models need segmentation_models_pytorch, which is not installed ({exc}); {SMP_PIP}") from exc
    return smp


def smp_architectures(smp) -> list[str]:
    return sorted(n for n in dir(smp) if isinstance(getattr(smp, n), type) and issubclass(getattr(smp, n), nn.Module)
                  and not n.startswith("_"))


def _factory(spec: ModelSpec, args: Mapping[str, Any], num_classes: int) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The callable to build `spec` and the keyword arguments it gets."""
    kwargs = dict(args)
    if spec.kind == "torchvision":
        from torchvision.models import get_model_builder

        reserved = sorted(set(kwargs) & set(TORCHVISION_RESERVED))
        if reserved:
            raise ConfigError(f"model.args {reserved[0]!r} is set by aspp-edge for {spec.text} (weights are never downloaded; "
                              "pass a state dict with --weights / model.weights); reserved: " + ", ".join(TORCHVISION_RESERVED))
        return get_model_builder(spec.name), {"weights": None, "weights_backbone": None, "num_classes": num_classes, **kwargs}
    if spec.kind == "smp":
        smp = _import_smp()
        valid = smp_architectures(smp)
        if spec.name not in valid:
            raise choices_error("smp architecture", spec.name, valid)
        if "classes" in kwargs:
            raise ConfigError(f"model.args 'classes' is set by aspp-edge for {spec.text} (the data has {num_classes} classes)")
        if kwargs.setdefault("encoder_weights", None) is not None:
            raise ConfigError(f"model.args encoder_weights {kwargs['encoder_weights']!r} would be downloaded; set encoder_weights: "
                              "null and pass a state dict with --weights / model.weights")
        return getattr(smp, spec.name), {"classes": num_classes, **kwargs}
    assert spec.module is not None
    _cwd_importable()
    try:
        module = importlib.import_module(spec.module)
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"cannot import module {spec.module!r} of model source {spec.text!r}: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, spec.name, None)
    if fn is None or not callable(fn):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        what = "has no" if fn is None else "has a non-callable"
        raise ConfigError(f"module {spec.module!r} {what} {spec.name!r}; its callables: {', '.join(public) or '(none)'}")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "num_classes" in params and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    return fn, kwargs


def _shape(t: Any) -> str:
    return "x".join(str(int(s)) for s in t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def to_logits(out: Any, size: tuple[int, int] | torch.Size, num_classes: int, where: str) -> torch.Tensor:
    """The one output contract: whatever `where` returned -> logits N x num_classes x H x W at `size`."""
    got = out
    if isinstance(out, Mapping):
        if "out" in out:
            out = out["out"]
        elif len(out) == 1:
            out = next(iter(out.values()))
        else:
            raise ConfigError(f"{where} returns a dict with keys {sorted(map(str, out))}; expected an 'out' entry or a single entry")
    elif isinstance(out, (tuple, list)):
        if not out:
            raise ConfigError(f"{where} returns an empty {type(out).__name__}; expected logits N x {num_classes} x H x W")
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"{where} returns {type(got).__name__} holding {type(out).__name__}; expected logits N x {num_classes} x H x W")
    if out.dim() != 4:
        raise ConfigError(f"{where} returns a tensor of shape {_shape(out)} (rank {out.dim()}); expected logits N x {num_classes} x H x W")
    if out.shape[1] != num_classes:
        raise ConfigError(f"{where} returns logits of shape {_shape(out)}: {int(out.shape[1])} classes; expected {num_classes} "
                          "(the data's classes)")
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
    return out


class BroughtModel(nn.Module):
    """A model someone brought, with its output adapted: image (N, 3, H, W) -> logits (N, num_classes, H, W).

    The wrapped model is `self.model` (its state dict keys gain a `model.` prefix here)."""

    def __init__(self, model: nn.Module, *, source: str, args: Mapping[str, Any], num_classes: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.model = model
        self.source = source
        self.num_classes = num_classes
        self.input_size = input_size
        self.config = {"source": source, "args": dict(args), "num_classes": num_classes, "input_size": list(input_size)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_logits(self.model(x), x.shape[-2:], self.num_classes, f"model {self.source}")

    def example_inputs(self, batch_size: int = 1) -> tuple[torch.Tensor]:
        return (torch.randn(batch_size, 3, *self.input_size),)


def load_weights(model: nn.Module, path: str | Path, source: str) -> None:
    """Load a state dict (weights_only=True) into the brought model; keys that do not match are named."""
    _load_state(model, _read_state(path, source), repr(str(path)), source)


def _read_state(path: str | Path, source: str) -> Mapping[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights {str(path)!r} for {source} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors: not a state dict we can read safely
        raise CheckpointError(f"weights {str(path)!r} for {source} are corrupt or not a weights-only torch file "
                              f"({type(exc).__name__})") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # an aspp-edge float.pt or a trainer checkpoint
        own = model.state_dict()
        if not (set(state) & set(own)) and all(k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items()}  # the wrapper's keys (aspp-edge float.pt)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights {str(path)!r} for {source} hold no state dict (name -> tensor)")
    return state


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: str, source: str) -> None:
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in sorted(set(own) & set(state)) if own[k].shape != state[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first {unexpected[0]!r})")
    if shapes:
        k = shapes[0]
        problems.append(f"{len(shapes)} shape mismatches (first {k!r}: file {_shape(state[k])}, model {_shape(own[k])})")
    if problems:
        raise CheckpointError(f"weights {where} do not fit {source}: " + "; ".join(problems))
    model.load_state_dict(state)


def load_published_weights(model: nn.Module, spec: ModelSpec, name: str, num_classes: int, *, rehead: bool) -> None:
    """torchvision's published weights `name` for `spec` into `model` (built for `num_classes`); with
    `rehead`, the per-class output layers keep their fresh init (see the module docstring)."""
    from . import pretrained

    w = pretrained.resolve(spec.name, name)
    categories = list(w.meta.get("categories") or [])
    n = len(categories)
    if n and n != num_classes and not rehead:
        raise ConfigError(f"weights {pretrained.label(w)} predict {n} classes ({', '.join(categories[:3])}, ...) but the data has "
                          f"{num_classes}: set model.rehead: true to fine-tune to the data's classes (the per-class output layers "
                          "start fresh), or use data with those classes (e.g. data.dataset voc)")
    if rehead and n == num_classes:
        raise ConfigError(f"model.rehead: the data has as many classes as weights {pretrained.label(w)} ({n}), so no output "
                          "layer changes shape; unset model.rehead to keep the weights' classifier")
    state, _ = pretrained.load_published(w, spec.text)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not (k.startswith("aux_classifier.") and k not in own)}
    if rehead:
        fresh = pretrained.class_layers(state, own, n, num_classes)
        if not fresh:
            raise CheckpointError(f"weights {pretrained.label(w)}: found no per-class output layer of {n} classes to re-head "
                                  f"in {spec.text}")
        state = {**state, **{k: own[k] for k in fresh}}
    _load_state(model, state, f"{pretrained.label(w)} ({str(pretrained.hub_file(w))!r})", spec.text)


def published_name(spec: ModelSpec, weights: str | Path | None) -> bool:
    """Whether `weights` names torchvision's published weights of `spec` rather than a file."""
    if spec.kind != "torchvision" or not isinstance(weights, str):
        return False
    from . import pretrained

    return pretrained.is_weights_name(weights, spec.name)


def build_brought(
    source: str,
    args: Mapping[str, Any] | None = None,
    *,
    num_classes: int,
    input_size: int | tuple[int, int],
    weights: str | Path | None = None,
    rehead: bool = False,
    check: bool = True,
) -> BroughtModel:
    """Build the model `source` names (see the module docstring), adapt its output, optionally load
    `weights` (a file, or for torchvision:NAME a published weights name), and check the adapted output
    on one image of `input_size`."""
    spec = parse_spec(source)
    args = dict(args or {})
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    fn, kwargs = _factory(spec, args, num_classes)
    try:
        model = fn(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"model source {source!r} with arguments {args!r} failed to build: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model source {source!r} returned {type(model).__name__}, not a torch.nn.Module")
    if spec.kind == "torchvision" and published_name(spec, weights):
        load_published_weights(model, spec, str(weights), num_classes, rehead=rehead)
    elif rehead:
        raise ConfigError(f"model.rehead applies to published weights by name (torchvision:NAME with model.weights DEFAULT or an "
                          f"enum member); {source} has weights {weights!r}")
    elif weights is not None:
        if spec.kind == "torchvision" and not Path(weights).is_file():
            from .pretrained import weight_names

            raise CheckpointError(f"weights {str(weights)!r} for {source} are neither a file nor a published weights name; "
                                  f"valid names: {', '.join(weight_names(spec.name))}")
        load_weights(model, weights, source)
    wrapped = BroughtModel(model, source=source, args=args, num_classes=num_classes, input_size=size)
    if check:
        was_training = wrapped.training
        wrapped.eval()
        try:
            with torch.no_grad():
                out = wrapped(torch.zeros(1, 3, *size))
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"model {source} fails on a 1x3x{size[0]}x{size[1]} image: {type(exc).__name__}: {exc}") from exc
        finally:
            wrapped.train(was_training)
        assert out.shape == (1, num_classes, *size)
    return wrapped
