"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019) for the float model.

Steps, on a copy of the model in eval mode:
1. Fold every BatchNorm into the conv before it (`fuse_conv_bn_eval`); the BN becomes Identity.
2. For each conv pair joined by a positive-homogeneous activation (ReLU, or nothing), scale
   output channel i of the first conv by 1/s_i and input channel i of the second by s_i, with
   s_i = sqrt(r1_i * r2_i) / r2_i (r = the channel's weight range). The function is unchanged
   because relu(x / s) = relu(x) / s for s > 0; both channels end with range sqrt(r1_i * r2_i).
3. ReLU6 is not homogeneous (its clip at 6 would move to 6 s_i). As in the DFQ paper, an
   equalized pair's ReLU6 is replaced by ReLU, which changes the function only where an
   activation exceeded 6; `equalize` reports how many it replaced.

Brought models (any nn.Module, models/brought.py) get the generic chains: inside any
nn.Sequential, a conv[-BN]-activation block directly followed by a conv (or a block starting with
one) that is its only consumer, e.g. torchvision's MobileNetV2 blocks (also inside SMP encoders)
and MobileNetV3's ReLU blocks without squeeze-excitation. Hardswish, SE gates and residual blocks
end a chain. When a model has none, `equalize` says "CLE: no equalizable chains found" and
returns the BN-folded copy unchanged in function.

Chains and branching points are different: along a chain (depthwise -> pointwise, expand ->
depthwise) one producer feeds one consumer. At ASPP's branching point the backbone's last
projection feeds every branch (and the image-pooling conv, through a linear average pool), so
one s per channel must serve all consumers at once: r2_i is the largest range of input channel i
over all of them, and every consumer's input channel i is scaled by the same s_i.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual as V2Block

from ..console import progress_line
from ..models.aspp import ASPP, LRASPP, ImagePooling, SeparableAtrousConv
from ..models.fold import fold_batchnorm
from ..models.segmenter import Segmenter

MIN_RANGE = 1e-8  # channels whose weights are all ~0 are left alone


@dataclass
class EqualizeReport:
    pairs: int = 0
    branch_points: int = 0
    relu6_replaced: int = 0
    note: str = ""


NO_CHAINS = "CLE: no equalizable chains found"


def _out_range(conv: nn.Conv2d) -> torch.Tensor:
    w = conv.weight.detach()
    return w.abs().reshape(w.shape[0], -1).amax(1)


def _in_range(conv: nn.Conv2d) -> torch.Tensor:
    w = conv.weight.detach()
    if conv.groups == conv.in_channels and conv.groups > 1:  # depthwise: input channel i is filter i
        return w.abs().reshape(w.shape[0], -1).amax(1)
    if conv.groups != 1:
        raise ValueError(f"grouped conv with {conv.groups} groups is not supported by CLE")
    return w.abs().transpose(0, 1).reshape(w.shape[1], -1).amax(1)


@torch.no_grad()
def _scale_pair(producer: nn.Conv2d, consumers: list[nn.Conv2d]) -> float:
    """Equalize one group in place; returns max |log s| (0 when already equal)."""
    r1 = _out_range(producer)
    r2 = torch.stack([_in_range(c) for c in consumers]).amax(0)
    ok = (r1 > MIN_RANGE) & (r2 > MIN_RANGE)
    s = torch.where(ok, torch.sqrt(r1 * r2) / r2.clamp_min(MIN_RANGE), torch.ones_like(r1))
    producer.weight.div_(s.view(-1, 1, 1, 1))
    if producer.bias is not None:
        producer.bias.div_(s)
    for c in consumers:
        if c.groups == c.in_channels and c.groups > 1:
            c.weight.mul_(s.view(-1, 1, 1, 1))
        else:
            c.weight.mul_(s.view(1, -1, 1, 1))
    return float(s.log().abs().max())


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def _is_relu6(m: nn.Module) -> bool:
    return isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0))


def _homogeneous(seq: nn.Sequential, report: EqualizeReport) -> bool:
    """True if `seq`'s activation is ReLU or absent; a ReLU6 is replaced by ReLU (counted)."""
    if not all(isinstance(m, (nn.Conv2d, nn.ReLU, nn.Identity)) or _is_relu6(m) for m in seq):
        return False
    for i, m in enumerate(seq):
        if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0)):
            seq[i] = nn.ReLU()
            report.relu6_replaced += 1
        elif not isinstance(m, (nn.Conv2d, nn.ReLU, nn.Identity)):
            return False
    return True


def _v2_block_pairs(block: V2Block, report: EqualizeReport) -> list[tuple[nn.Conv2d, list[nn.Conv2d]]]:
    stages = list(block.conv)  # [expand CNA]?, dw CNA, project conv, (BN -> Identity)
    cnas = [s for s in stages if isinstance(s, nn.Sequential)]
    project = next(s for s in stages if isinstance(s, nn.Conv2d))
    chain = [*cnas, project]
    return [(_first_conv(a), [_first_conv(b)]) for a, b in zip(chain, chain[1:]) if _homogeneous(a, report)]


def _equalizable_consumer(conv: nn.Conv2d) -> bool:
    return conv.groups == 1 or conv.groups == conv.in_channels == conv.out_channels


def _generic_pairs(model: nn.Module, report: EqualizeReport) -> list[tuple[nn.Conv2d, list[nn.Conv2d]]]:
    """Chains in any model (BN already folded): inside an nn.Sequential, a block of exactly one conv
    plus ReLU/ReLU6/Identity followed by a conv, or by an nn.Sequential that starts with a conv."""
    def plain(m: nn.Module) -> bool:  # an nn.Sequential that composes its children (no forward of its own)
        return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward

    pairs = []
    for seq in [m for m in model.modules() if plain(m)]:
        for a, b in zip(list(seq), list(seq)[1:]):
            if not plain(a) or sum(isinstance(m, nn.Conv2d) for m in a) != 1:
                continue
            consumer = b if isinstance(b, nn.Conv2d) else b[0] if plain(b) and len(b) else None
            if not isinstance(consumer, nn.Conv2d) or not _equalizable_consumer(consumer):
                continue
            producer = _first_conv(a)
            if producer.out_channels == consumer.in_channels and _homogeneous(a, report):
                pairs.append((producer, [consumer]))
    return pairs


MAX_SWEEPS, TOLERANCE = 50, 1e-4  # groups share convs, so the scalings are repeated until they settle


def equalize(model: nn.Module, report: EqualizeReport | None = None) -> nn.Module:
    """A BN-folded, cross-layer-equalized copy of `model` (see the module docstring)."""
    report = report if report is not None else EqualizeReport()
    model = copy.deepcopy(model).eval()
    fold_batchnorm(model)
    if not isinstance(model, Segmenter):
        groups = _generic_pairs(model, report)
        report.pairs = len(groups)
        if not groups:
            report.note = NO_CHAINS
            progress_line(f"{NO_CHAINS} in {getattr(model, 'source', type(model).__name__)}: PTQ goes on without it", err=True)
        _sweep(groups)
        return model
    groups: list[tuple[nn.Conv2d, list[nn.Conv2d]]] = []
    for block in model.backbone.features:
        if isinstance(block, V2Block):
            groups += _v2_block_pairs(block, report)
    for sep in [m for m in model.modules() if isinstance(m, SeparableAtrousConv)]:
        if _homogeneous(sep[0], report):
            groups.append((_first_conv(sep[0]), [_first_conv(sep[1])]))
    report.pairs = len(groups)
    # ASPP's branching point: the backbone's last block ends in a linear projection (MobileNetV2)
    # whose output feeds only the head's branches.
    last = model.backbone.features[-1]
    if isinstance(last, V2Block) and not last.use_res_connect and isinstance(model.head, (ASPP, LRASPP)):
        producer = [m for m in last.conv if isinstance(m, nn.Conv2d)][-1]
        if isinstance(model.head, ASPP):
            consumers = [b.conv if isinstance(b, ImagePooling) else _first_conv(b) for b in model.head.branches]
        else:
            consumers = [_first_conv(model.head.cbr), model.head.scale]
        groups.append((producer, consumers))
        report.branch_points += 1
    _sweep(groups)
    return model


def _sweep(groups: list[tuple[nn.Conv2d, list[nn.Conv2d]]]) -> None:
    for _ in range(MAX_SWEEPS):
        if max((_scale_pair(p, c) for p, c in groups), default=0.0) < TOLERANCE:
            break
