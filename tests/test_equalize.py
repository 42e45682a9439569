"""Cross-layer equalization: exact on the BN-folded ReLU model, and it narrows per-channel ranges."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from aspp_edge.calibration.equalize import EqualizeReport, _in_range, _out_range, equalize
from aspp_edge.models.fold import fold_batchnorm
from aspp_edge.models import create_model

from .conftest import TINY


def _relu_only(model: nn.Module) -> nn.Module:
    """The model with every ReLU6 as ReLU, so that CLE has nothing to replace and must be exact."""
    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.ReLU())
    return model


def _perturbed(head: str) -> nn.Module:
    """A model with uneven per-channel weight scales and BN statistics (what CLE exists for)."""
    torch.manual_seed(0)
    model = create_model(head, **TINY)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.exp(torch.randn(m.out_channels, 1, 1, 1)))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("head", ["sep_aspp", "aspp", "lraspp", "sep_se_aspp"])
def test_cle_preserves_the_function(head):
    model = _relu_only(_perturbed(head))
    report = EqualizeReport()
    eq = equalize(model, report)
    assert report.pairs > 10 and report.branch_points == 1 and report.relu6_replaced == 0
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = model(x), eq(x)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_cle_replaces_relu6_in_equalized_pairs_only():
    report = EqualizeReport()
    eq = equalize(_perturbed("sep_aspp"), report)
    left = sum(isinstance(m, nn.ReLU6) for m in eq.modules())
    assert report.relu6_replaced > 0 and left == 1  # the stem conv's ReLU6 feeds no equalized pair


def test_cle_narrows_depthwise_ranges():
    model = _perturbed("sep_aspp")
    folded = copy.deepcopy(model)
    fold_batchnorm(folded)
    eq = equalize(model)

    def spread(m: nn.Module) -> list[float]:
        # Per depthwise conv: largest over smallest per-channel weight range (1 is perfectly even).
        return [float(r.max() / r.min()) for c in m.modules()
                if isinstance(c, nn.Conv2d) and c.groups > 1 for r in [_out_range(c)]]

    before, after = spread(folded), spread(eq)
    assert len(before) == len(after) > 10
    assert sum(after) < 0.5 * sum(before)
    # Along an equalized pair both sides end with the same per-channel range (after the sweeps settle).
    dw, pw = eq.head.branches[1][0][0], eq.head.branches[1][1][0]
    torch.testing.assert_close(_out_range(dw), _in_range(pw), rtol=1e-3, atol=1e-6)
