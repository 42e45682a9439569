"""Generated segmentation models (issue 36): a small grammar of the blocks people's models are made of.

A model is a stem (a strided conv), a list of blocks and a classifier; it returns
`(logits at the last block's stride, aux logits)` as many brought models do, so the pipeline's
adapter unwraps and upsamples it (or, with `up: inside`, the model resizes its logits to the input
itself). Each block is a dict, so a model is JSON and a recipe's `model.args` carries it:

    {"kind": "conv", "k": 1|3, "stride": 1|2, "dilation": 1|2, "depthwise": bool, "bias": bool, "bn": bool, "act": ACT}
    {"kind": "se", "gate": "sigmoid"|"hardsigmoid", "squeeze": "mean"|"avgpool", "act": ACT}
    {"kind": "residual", "depthwise": bool, "act": ACT}              x + conv(x)
    {"kind": "branches", "n": 2|3, "pool": bool, "act": ACT}         ASPP-like: 1x1 and dilated 3x3 branches,
                                                                     an image-pooling branch, concat, 1x1 project
    {"kind": "up", "how": "bilinear"|"transposed", "act": ACT}       x2 upsampling

ACT is one of ACTIVATIONS. `describe` prints a drawn model on one line, so a failing draw names it.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu")
_ACT = {"none": nn.Identity, "relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid,
        "sigmoid": nn.Sigmoid, "silu": nn.SiLU, "gelu": nn.GELU}


def conv_block(cin: int, cout: int, *, k: int = 3, stride: int = 1, dilation: int = 1, depthwise: bool = False,
               bias: bool = False, bn: bool = True, act: str = "relu") -> nn.Sequential:
    cout = cin if depthwise else cout
    layers = [nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation=dilation, groups=cin if depthwise else 1, bias=bias)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(_ACT[act]())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, *, gate: str = "hardsigmoid", squeeze: str = "mean", act: str = "relu") -> None:
        super().__init__()
        self.squeeze = squeeze
        self.fc1, self.act, self.fc2 = nn.Conv2d(c, max(4, c // 4), 1), _ACT[act](), nn.Conv2d(max(4, c // 4), c, 1)
        self.gate = _ACT[gate]()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True) if self.squeeze == "mean" else F.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class Residual(nn.Module):
    def __init__(self, c: int, *, depthwise: bool = False, act: str = "relu") -> None:
        super().__init__()
        self.body = conv_block(c, c, depthwise=depthwise, act=act)

    def forward(self, x):
        return x + self.body(x)


class Branches(nn.Module):
    def __init__(self, c: int, *, n: int = 2, pool: bool = True, act: str = "relu") -> None:
        super().__init__()
        self.branches = nn.ModuleList([conv_block(c, c, k=1, act=act)]
                                      + [conv_block(c, c, dilation=2 * i, act=act) for i in range(1, n)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1), _ACT[act]()) if pool else None
        self.project = conv_block(c * (n + int(pool)), c, k=1, act=act)

    def forward(self, x):
        outs = [b(x) for b in self.branches]
        if self.pool is not None:
            outs.append(F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False))
        return self.project(torch.cat(outs, 1))


class Up(nn.Module):
    def __init__(self, c: int, *, how: str = "bilinear", act: str = "relu") -> None:
        super().__init__()
        self.how = how
        self.conv = nn.ConvTranspose2d(c, c, 2, 2) if how == "transposed" else None
        self.act = _ACT[act]()

    def forward(self, x):
        x = self.conv(x) if self.conv is not None else F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.act(x)


def _block(spec: dict, c: int) -> tuple[nn.Module, int]:
    """The block a spec names and its output channels."""
    kind, args = spec["kind"], {k: v for k, v in spec.items() if k != "kind"}
    if kind == "conv":
        out = c if args.get("depthwise") else 2 * c if args.get("stride", 1) == 2 else c
        return conv_block(c, out, **args), out
    return {"se": SqueezeExcite, "residual": Residual, "branches": Branches, "up": Up}[kind](c, **args), c


class Generated(nn.Module):
    def __init__(self, num_classes: int, blocks: list[dict], *, width: int = 8, stem_act: str = "relu", up: str = "adapter") -> None:
        super().__init__()
        self.stem = conv_block(3, width, stride=2, act=stem_act)
        layers, c = [], width
        for spec in blocks:
            block, c = _block(spec, c)
            layers.append(block)
        self.blocks = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(c, num_classes, 1)
        self.aux = nn.Conv2d(c, num_classes, 1)
        self.up = up

    def forward(self, x):
        features = self.blocks(self.stem(x))
        logits = self.classifier(features)
        if self.up == "inside":
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, self.aux(features)


def generated(num_classes: int, blocks: list[dict], width: int = 8, stem_act: str = "relu", up: str = "adapter") -> nn.Module:
    """The factory a recipe names (`tests.generated_models:generated`)."""
    return Generated(num_classes, blocks, width=width, stem_act=stem_act, up=up)


def describe(args: dict) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


# The model issue 36 was found with: convs with bias before BN, Hardswish, a squeeze-excitation gate
# whose squeeze reads the hardswish output, logits at 1/4 resolution and an aux output.
ISSUE_36_MODEL = {"stem_act": "hardswish", "blocks": [
    {"kind": "conv", "k": 3, "stride": 2, "dilation": 1, "depthwise": False, "bias": True, "bn": True, "act": "hardswish"},
    {"kind": "se", "gate": "hardsigmoid", "squeeze": "mean", "act": "relu"},
    {"kind": "conv", "k": 3, "stride": 1, "dilation": 1, "depthwise": True, "bias": True, "bn": True, "act": "hardswish"},
]}


def strategy():
    """hypothesis: the model arguments (`generated`'s keyword arguments) of a small drawn model."""
    from hypothesis import strategies as st

    act = st.sampled_from(ACTIVATIONS)
    conv = st.fixed_dictionaries({"kind": st.just("conv"), "k": st.sampled_from([1, 3]), "stride": st.sampled_from([1, 2]),
                                  "dilation": st.sampled_from([1, 2]), "depthwise": st.booleans(), "bias": st.booleans(),
                                  "bn": st.booleans(), "act": act})
    se = st.fixed_dictionaries({"kind": st.just("se"), "gate": st.sampled_from(["sigmoid", "hardsigmoid"]),
                                "squeeze": st.sampled_from(["mean", "avgpool"]), "act": st.sampled_from(["relu", "hardswish", "silu"])})
    residual = st.fixed_dictionaries({"kind": st.just("residual"), "depthwise": st.booleans(), "act": act})
    branches = st.fixed_dictionaries({"kind": st.just("branches"), "n": st.sampled_from([2, 3]), "pool": st.booleans(), "act": act})
    up = st.fixed_dictionaries({"kind": st.just("up"), "how": st.sampled_from(["bilinear", "transposed"]), "act": act})
    return st.fixed_dictionaries({"blocks": st.lists(st.one_of(conv, se, residual, branches, up), min_size=1, max_size=4),
                                  "stem_act": act, "up": st.sampled_from(["adapter", "inside"])})
