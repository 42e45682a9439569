"""Recipes: typed, validated configuration loaded from YAML.

A recipe is a `Recipe` dataclass with one section per stage. Loading is strict: an unknown key
or a value of the wrong type is a `ConfigError` that names the key (`train.lr`), and each
section checks its values in `__post_init__`. `Recipe.to_dict()` / `Recipe.from_dict()` round
trip through JSON.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import ConfigError, choices_error

CONFIG_DIR = Path(__file__).parent / "configs"
# The synthetic scenes, a VOC-style folder of the user's, and three public datasets as they lie on disk
# (data/voc.py, data/cityscapes.py, data/ade20k.py: their own layouts, classes and palettes).
DATASETS = ("synthetic", "folder", "voc", "cityscapes", "ade20k")
NAMED_DATASETS = ("voc", "cityscapes", "ade20k")
# How an image becomes `resolution` x `resolution`: `square` resizes the whole image (aspect not kept);
# `short_side` resizes its short side to `resolution` and crops (train: random, after the scale jitter;
# eval: the centre), the usual way for wide images such as Cityscapes' 2048x1024.
RESIZE_MODES = ("square", "short_side")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    head: str = "sep_aspp"
    backbone: str = "mobilenet_v2"
    decoder: str = "deeplabv3plus"
    output_stride: int = 16
    width_mult: float = 1.0
    head_channels: int | None = None
    dropout: float = 0.1  # = models.aspp.DEFAULT_DROPOUT (tests/test_config.py checks they agree)
    # None (random init), `imagenet` or a torchvision enum member (IMAGENET1K_V2, DEFAULT: published
    # weights from the torch hub cache, width 1.0 only), or a local classification state dict file.
    backbone_weights: str | None = None
    # A brought model instead of a built-in head (models/brought.py): torchvision:NAME, smp:ARCH or
    # module.path:callable, its factory's keyword arguments, and an optional state dict file.
    # With `source` set, the built-in fields above are not used.
    source: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None  # a state dict file, or for torchvision:NAME a published weights name (DEFAULT, ...)
    # Published weights of other classes than the data's: load all but the per-class output layers,
    # which start fresh for the data's classes (models/brought.py).
    rehead: bool = False

    def __post_init__(self) -> None:
        from .models.registry import BACKBONES, DECODERS, HEADS
        from .models import segmenter  # noqa: F401  (fills the registries)

        if self.source is not None:
            from .models.brought import parse_spec, published_name

            spec = parse_spec(self.source)
            if self.rehead and not published_name(spec, self.weights):
                raise ConfigError(f"model.rehead applies to published weights by name (torchvision:NAME with model.weights DEFAULT "
                                  f"or an enum member); model.weights is {self.weights!r}")
        elif self.args or self.weights or self.rehead:
            raise ConfigError("model.args, model.weights and model.rehead belong to a brought model: set model.source too "
                              "(torchvision:NAME, smp:ARCH or module.path:callable)")

        for kind, registry, value in (("model.head", HEADS, self.head), ("model.backbone", BACKBONES, self.backbone),
                                      ("model.decoder", DECODERS, self.decoder)):
            if value not in registry:
                raise choices_error(kind, value, registry.names())
        if self.output_stride not in (8, 16):
            raise ConfigError(f"model.output_stride {self.output_stride!r} is not supported; valid choices: 8, 16")
        if self.width_mult <= 0:
            raise ConfigError(f"model.width_mult {self.width_mult!r} must be > 0")
        if self.head_channels is not None and self.head_channels < 1:
            raise ConfigError(f"model.head_channels {self.head_channels!r} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout {self.dropout!r} must be in [0, 1)")
        if self.source is None and self.published_backbone() is not None:
            from .models.backbones import check_published_width

            check_published_width(self.backbone, self.backbone_weights, self.width_mult, "model.backbone_weights")

    def published_backbone(self):
        """The torchvision weights enum member `backbone_weights` names, or None (unset, or a file)."""
        from .models import pretrained

        if self.source is None and pretrained.is_weights_name(self.backbone_weights, self.backbone, imagenet=True):
            return pretrained.resolve(self.backbone, self.backbone_weights, imagenet=True)
        return None

    def published_weights(self):
        """The published weights the model starts from (backbone or brought torchvision model), or None."""
        if self.source is None:
            return self.published_backbone()
        from .models import pretrained
        from .models.brought import parse_spec, published_name

        spec = parse_spec(self.source)
        return pretrained.resolve(spec.name, self.weights) if published_name(spec, self.weights) else None


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    # folder: the VOC-style root; voc: the folder holding VOCdevkit/VOC2012; cityscapes: the folder
    # holding leftImg8bit/ and gtFine/; ade20k: ADEChallengeData2016 (or the folder holding it)
    root: str | None = None
    # Class names, index order. Folder datasets: required. Synthetic: unset means its own 6 classes;
    # set, it names the model's outputs (e.g. VOC's 21 at deploy size, where the logits' size matters
    # for latency) and only the unlabelled calib images may be drawn (data.build_dataset refuses
    # train/val when the count differs from the scenes' 6 classes).
    classes: tuple[str, ...] | None = None
    resolution: int = 128
    train_size: int = 2000  # synthetic dataset: number of train scenes
    val_size: int = 200  # synthetic dataset: number of val scenes
    seed: int = 0
    # Pixel normalisation. Unset: the published weights' own (`weights.transforms()`: ImageNet's mean
    # and std for every torchvision weights used here), else ImageNet's; Recipe fills them in.
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    scale_range: tuple[float, float] = (0.75, 1.25)
    hflip: bool = True
    resize: str = "square"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise choices_error("data.dataset", self.dataset, DATASETS)
        if self.resize not in RESIZE_MODES:
            raise choices_error("data.resize", self.resize, RESIZE_MODES)
        if self.dataset == "folder" and (not self.root or not self.classes):
            raise ConfigError("data.dataset 'folder' needs data.root and data.classes")
        if self.dataset in NAMED_DATASETS and not self.root:
            raise ConfigError(f"data.dataset {self.dataset!r} needs data.root (where the dataset lies on disk)")
        if self.dataset in NAMED_DATASETS and self.classes is not None:
            raise ConfigError(f"data.classes is set by data.dataset {self.dataset!r} (its own classes); unset data.classes")
        if self.classes is not None and len(self.classes) < 2:
            raise ConfigError(f"data.classes {list(self.classes)!r} must name at least 2 classes")
        if self.resolution < 1:
            raise ConfigError(f"data.resolution {self.resolution!r} must be >= 1")
        if self.train_size < 1 or self.val_size < 1:
            raise ConfigError(f"data.train_size {self.train_size!r} and data.val_size {self.val_size!r} must be >= 1")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ConfigError(f"data.std {list(self.std)!r} must be > 0")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ConfigError(f"data.scale_range {[lo, hi]!r} must satisfy 0 < low <= high")


OPTIMIZERS = ("sgd", "adamw")
# Training losses: cross-entropy, or cross-entropy plus soft Dice averaged over the classes (train.py).
LOSSES = ("ce", "ce_dice")


@dataclass(frozen=True)
class TrainConfig:
    optimizer: str = "sgd"
    epochs: int = 10
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 4e-5
    poly_power: float = 0.9
    warmup_steps: int = 0  # linear LR warm-up from 0 before the poly decay
    loss: str = "ce"
    seed: int = 0
    num_workers: int = 0
    # CPU threads for training (0: torch's default). The trained weights depend on it: reductions
    # split their sums by thread, so a seed reproduces bit for bit only at the same count (train.py).
    threads: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise choices_error("train.optimizer", self.optimizer, OPTIMIZERS)
        if self.loss not in LOSSES:
            raise choices_error("train.loss", self.loss, LOSSES)
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps {self.warmup_steps!r} must be >= 0")
        if self.epochs < 0:
            raise ConfigError(f"train.epochs {self.epochs!r} must be >= 0 (0: use the model's weights as they are)")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size {self.batch_size!r} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr {self.lr!r} must be > 0")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers {self.num_workers!r} must be >= 0")
        if self.threads < 0:
            raise ConfigError(f"train.threads {self.threads!r} must be >= 0 (0: torch's default)")


OBSERVERS = ("minmax", "ema", "percentile", "mse")  # PTQ activation observers (calibration/observers.py)
METHODS = ("ptq", "qat")  # how an int8 program is made: each is a recipe section
QAT_SELECT = ("best", "last")  # which of QAT's measured steps is returned (config.QATConfig.select)
QAT_WEIGHT_RANGES = ("auto", "held", "learned")  # QAT's weight ranges (QATConfig.weight_ranges)
# `aspp-edge run` also offers `mixed` (opt-in): PTQ with layers kept in float, beside full int8. Its
# layers: the recipe's ptq.keep_float where it names some, else `auto` at ptq.max_drop (or this).
RUN_METHODS = (*METHODS, "mixed")
MIXED_MAX_DROP = 0.1  # points of val mIoU


class _QuantSection:
    """JSON round trip for the ptq: and qat: sections (`method` names the section)."""

    method: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return _build(cls, data, cls.method + ".")

    @property
    def auto_float(self) -> bool:
        """`keep_float: auto`: choose the float layers on val until `max_drop` holds."""
        return self.keep_float == "auto"

    @property
    def float_layers(self) -> tuple[str, ...]:
        """The layers named in `keep_float` (none for `auto` until they are chosen)."""
        return () if self.auto_float else tuple(self.keep_float)

    def _check_keep_float(self) -> None:
        """Mixed precision: `keep_float` is a list of layer names (as the sensitivity report prints
        them) or `auto` with `max_drop` (points of val mIoU) and an optional `max_float_layers`."""
        p = self.method + "."
        if isinstance(self.keep_float, str) and not self.auto_float:
            raise ConfigError(f"{p}keep_float {self.keep_float!r} must be a list of layer names or 'auto'")
        if not self.auto_float:
            if any(not isinstance(n, str) or not n for n in self.keep_float):
                raise ConfigError(f"{p}keep_float {list(self.keep_float)!r} must list layer names (non-empty strings)")
            if len(set(self.keep_float)) != len(self.keep_float):
                raise ConfigError(f"{p}keep_float {list(self.keep_float)!r} names a layer twice")
            for key in ("max_drop", "max_float_layers"):
                if getattr(self, key) is not None:
                    raise ConfigError(f"{p}{key} applies to {p}keep_float 'auto' only (keep_float is {list(self.keep_float)!r})")
            return
        if self.max_drop is None:
            raise ConfigError(f"{p}keep_float 'auto' needs {p}max_drop: the largest val mIoU drop in points to reach, e.g. 0.1")
        if not self.max_drop >= 0:
            raise ConfigError(f"{p}max_drop {self.max_drop!r} must be >= 0 (points of val mIoU)")
        if self.max_float_layers is not None and self.max_float_layers < 1:
            raise ConfigError(f"{p}max_float_layers {self.max_float_layers!r} must be >= 1 (leave it unset for no limit)")
MIN_CALIB_SIZE = 8  # fewer images than this cannot give stable activation ranges


@dataclass(frozen=True)
class PTQConfig(_QuantSection):
    """Calibrated post-training quantization (the shared int8 scheme)."""

    method: ClassVar[str] = "ptq"

    observer: str = "minmax"
    per_channel: bool = True
    cle: bool = False
    calib_size: int = 64
    batch_size: int = 16
    percentile: float = 99.99
    seed: int = 0
    keep_float: tuple[str, ...] | str = ()  # layers kept in float (mixed precision), or "auto"
    max_drop: float | None = None  # keep_float auto: val mIoU drop target, points
    max_float_layers: int | None = None  # keep_float auto: at most this many float layers

    def __post_init__(self) -> None:
        self._check_keep_float()
        if self.observer not in OBSERVERS:
            raise choices_error("observer", self.observer, OBSERVERS)
        if self.calib_size < MIN_CALIB_SIZE:
            raise ConfigError(f"ptq.calib_size {self.calib_size!r} is too small; it must be >= {MIN_CALIB_SIZE}")
        if self.batch_size < 1:
            raise ConfigError(f"ptq.batch_size {self.batch_size!r} must be >= 1")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"ptq.percentile {self.percentile!r} must be in (50, 100]")



@dataclass(frozen=True)
class QATConfig(_QuantSection):
    """Quantization-aware fine-tuning from the float checkpoint.

    Steps count optimizer steps. BN statistics freeze after `freeze_bn_step` steps and the
    fake-quant observers after `freeze_observer_step` (both must lie within `steps`). Left unset
    (None), they scale with `steps`: BN freezes after two thirds of the steps and the observers
    after five sixths (200 and 250 of the default 300), rounded down; `bn_freeze_at` and
    `observer_freeze_at` give the step that applies.
    """

    method: ClassVar[str] = "qat"
    FREEZE_BN_FRACTION: ClassVar[tuple[int, int]] = (2, 3)  # of `steps`, when freeze_bn_step is unset
    FREEZE_OBSERVER_FRACTION: ClassVar[tuple[int, int]] = (5, 6)  # of `steps`, when freeze_observer_step is unset

    # The defaults start QAT where PTQ is (the ranges PTQ's minmax observer picks, held; BN on its
    # running statistics) and train the int8 model towards the float model it is judged against:
    # training BN on batch statistics or letting the ranges move took a trained MobileNetV3 from
    # 28.7 to 22.4 dB logits SQNR in 60 steps (issue 37, benchmarks/results/qat_probe_mnv3.md).
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-5
    weight_decay: float = 0.0
    freeze_bn_step: int | None = 0  # None: 2/3 of steps
    freeze_observer_step: int | None = 0  # None: 5/6 of steps
    observer: str = "minmax"  # activation ranges: a PTQ observer inside FakeQuantize, or ema (XNNPACK's fused fake quant)
    per_channel: bool = True
    calib_size: int = 64  # forward passes that initialise the fake-quant ranges before training
    distill: float = 1.0  # weight of the KL loss to the float model's logits (1 - distill stays on the labels)
    seed: int = 0
    keep_float: tuple[str, ...] | str = ()  # layers kept in float (mixed precision), or "auto" (chosen on the PTQ program)
    max_drop: float | None = None  # keep_float auto: val mIoU drop target, points
    max_float_layers: int | None = None  # keep_float auto: at most this many float layers
    # The program is measured against the float model on the calibration images at step 0 and
    # `checks` times while it trains; `best` returns the check whose classes match the float model's
    # best (mIoU against its argmax), among those whose gain over step 0 is clear (`confidence`,
    # shared among the checks), or else step 0 as PTQ builds it; `last` the last check.
    select: str = "best"
    checks: int = 10
    # A gain that resampling the held-out images could make of none does not replace step 0: shipped
    # such gains made QAT end behind PTQ on most quick-ablation heads (issue 37)
    confidence: float = 0.95
    # The weights' int8 ranges: `held` where PTQ's minmax puts them, or `learned` (LSQ on the log of
    # each scale at `range_lr`, from PTQ's, cut to LSQ's initial range where outliers set it);
    # `auto`: learned for per-tensor weights, held per channel. Per-tensor MobileNetV2s lose 34-58
    # points to PTQ, their depthwise ranges set by dead channels; of that QAT recovered 1.5-17% held,
    # 85-98% learned, on the default recipe's seeds (issue 37, benchmarks/results/qat_per_tensor_default.md)
    weight_ranges: str = "auto"
    range_lr: float = 0.03

    def __post_init__(self) -> None:
        self._check_keep_float()
        if self.select not in QAT_SELECT:
            raise choices_error("qat.select", self.select, QAT_SELECT)
        if self.weight_ranges not in QAT_WEIGHT_RANGES:
            raise choices_error("qat.weight_ranges", self.weight_ranges, QAT_WEIGHT_RANGES)
        if self.range_lr <= 0:
            raise ConfigError(f"qat.range_lr {self.range_lr!r} must be > 0")
        if not 0 < self.confidence < 1:
            raise ConfigError(f"qat.confidence {self.confidence!r} must be in (0, 1): how sure a check's gain over step 0 must be")
        if self.checks < 1:
            raise ConfigError(f"qat.checks {self.checks!r} must be >= 1")
        if self.steps < 1:
            raise ConfigError(f"qat.steps {self.steps!r} must be >= 1")
        for key in ("freeze_bn_step", "freeze_observer_step"):
            value = getattr(self, key)
            if value is not None and not 0 <= value <= self.steps:
                raise ConfigError(f"qat.{key} {value!r} must be between 0 and qat.steps ({self.steps}); "
                                  "leave it unset to scale it with qat.steps")
        if self.lr <= 0:
            raise ConfigError(f"qat.lr {self.lr!r} must be > 0")
        if self.observer not in OBSERVERS:
            raise choices_error("qat.observer", self.observer, OBSERVERS)
        if not 0.0 <= self.distill <= 1.0:
            raise ConfigError(f"qat.distill {self.distill!r} must be between 0 (labels only) and 1 (float model only)")
        if self.batch_size < 1:
            raise ConfigError(f"qat.batch_size {self.batch_size!r} must be >= 1")
        if self.calib_size < MIN_CALIB_SIZE:
            raise ConfigError(f"qat.calib_size {self.calib_size!r} is too small; it must be >= {MIN_CALIB_SIZE}")

    @property
    def learns_weight_ranges(self) -> bool:
        """Whether QAT learns the weights' ranges (`weight_ranges`; auto: when they are per-tensor)."""
        return self.weight_ranges == "learned" or (self.weight_ranges == "auto" and not self.per_channel)

    @property
    def bn_freeze_at(self) -> int:
        """The optimizer step after which BN statistics are held: `freeze_bn_step`, or 2/3 of `steps`."""
        if self.freeze_bn_step is not None:
            return self.freeze_bn_step
        num, den = self.FREEZE_BN_FRACTION
        return self.steps * num // den

    @property
    def observer_freeze_at(self) -> int:
        """The optimizer step after which the fake-quant ranges stop moving: `freeze_observer_step`, or 5/6 of `steps`."""
        if self.freeze_observer_step is not None:
            return self.freeze_observer_step
        num, den = self.FREEZE_OBSERVER_FRACTION
        return self.steps * num // den



@dataclass(frozen=True)
class DeployConfig:
    """`deploy:` in a recipe: `aspp-edge run` also times the run's architecture at a phone's input size.

    The same model (head, backbone, decoder, output stride, classes; `width_mult` unset: the
    recipe's) at `resolution`, with seeded random weights and the shared int8 scheme calibrated on
    `calib_size` images (latency does not depend on trained values): exported for the run's backends
    and each artifact timed in its own process, `runs` times after `warmup`. The report labels these
    rows as architecture latency, apart from the accuracy rows."""

    resolution: int = 512
    width_mult: float | None = None  # None: the recipe's model.width_mult
    calib_size: int = 8
    runs: int = 20
    warmup: int = 3

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ConfigError(f"deploy.resolution {self.resolution!r} must be >= 1")
        if self.width_mult is not None and not self.width_mult > 0:
            raise ConfigError(f"deploy.width_mult {self.width_mult!r} must be > 0 (or unset: the recipe's model.width_mult)")
        if self.calib_size < MIN_CALIB_SIZE:
            raise ConfigError(f"deploy.calib_size {self.calib_size!r} is too small; it must be >= {MIN_CALIB_SIZE}")
        if self.runs < 1 or self.warmup < 0:
            raise ConfigError(f"deploy.runs {self.runs!r} must be >= 1 and deploy.warmup {self.warmup!r} >= 0")


@dataclass(frozen=True)
class Recipe:
    name: str
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ptq: PTQConfig = field(default_factory=PTQConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    deploy: DeployConfig | None = None  # set: `run` also times the architecture at deploy size

    def __post_init__(self) -> None:
        d = self.data
        if d.mean is None or d.std is None:  # follow the published weights' transforms, else ImageNet's
            weights = self.model.published_weights()
            if weights is not None:
                from .models.pretrained import normalization

                mean, std = normalization(weights)
            else:
                mean, std = IMAGENET_MEAN, IMAGENET_STD
            object.__setattr__(self, "data", dataclasses.replace(d, mean=d.mean or mean, std=d.std or std))
        if self.model.source is not None:
            return  # a brought model: its own strides; build_brought checks it on the recipe's resolution
        os_ = self.model.output_stride
        for key, size in (("data.resolution", self.data.resolution),
                          ("deploy.resolution", self.deploy.resolution if self.deploy else None)):
            if size is None:
                continue
            if size % os_:
                raise ConfigError(f"{key} {size} is not divisible by model.output_stride {os_}")
            if size < 2 * os_:
                raise ConfigError(f"{key} {size} is too small for output stride {os_}: minimum {2 * os_}")

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.data.dataset == "synthetic" and self.data.classes is None:
            from .data.synthetic import CLASSES

            return CLASSES
        if self.data.dataset in NAMED_DATASETS:
            from .data import named_dataset

            return named_dataset(self.data.dataset).CLASSES
        assert self.data.classes is not None
        return self.data.classes

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        """One RGB colour per class, for masks and overlays (synthetic palette, a named dataset's own, else VOC's)."""
        if self.data.dataset == "synthetic" and self.data.classes is None:
            from .data.synthetic import COLORS

            return COLORS
        if self.data.dataset in NAMED_DATASETS:
            from .data import named_dataset

            return named_dataset(self.data.dataset).COLORS
        from .data.folder import default_colors

        return default_colors(self.num_classes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def model_kwargs(self) -> dict[str, Any]:
        """Arguments for `create_model` (the head is passed as the name)."""
        m = self.model
        return dict(
            num_classes=self.num_classes, backbone=m.backbone, decoder=m.decoder, output_stride=m.output_stride,
            width_mult=m.width_mult, head_channels=m.head_channels, dropout=m.dropout,
            input_size=self.data.resolution, backbone_weights=m.backbone_weights,
        )

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return _build(cls, data, "")

    def replace(self, **sections: Any) -> Recipe:
        """Copy with some fields changed: `recipe.replace(train={"epochs": 1})`."""
        merged = self.to_dict()
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return Recipe.from_dict(merged)


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and str in inner:  # e.g. keep_float: a list, or "auto"
            return value
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"recipe key {key!r} must be a mapping, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"recipe key {key!r} must be a mapping with string keys, got {value!r}")
        return dict(value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"recipe key {key!r} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"recipe key {key!r} must have {len(args)} entries, got {list(value)!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ConfigError(f"recipe key {key!r} must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown recipe key {prefix + unknown[0]!r}; valid keys here: {', '.join(names)}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def recipe_differences(saved: dict[str, Any], wanted: Recipe, keys: list[str]) -> list[str]:
    """'section.key: checkpoint A, recipe B' for each dotted key whose value differs."""
    want = wanted.to_dict()
    diffs = []
    for dotted in keys:
        section, key = dotted.split(".")
        a, b = saved.get(section, {}).get(key), want[section][key]
        if a != b:
            diffs.append(f"{dotted}: checkpoint {a!r}, recipe {b!r}")
    return diffs


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a built-in recipe by name (`quick`, `default`) or a YAML file by path."""
    path = Path(name_or_path)
    if str(name_or_path) in builtin_recipes():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    elif not path.is_file():
        raise ConfigError(
            f"recipe {str(name_or_path)!r} is neither a built-in recipe nor a file; "
            f"built-in recipes: {', '.join(builtin_recipes())}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r} must be a YAML mapping")
    data.setdefault("name", path.stem)
    return Recipe.from_dict(data)
