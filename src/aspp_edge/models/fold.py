"""Conv -> BatchNorm folding on the float model: the same function in fewer graph nodes. Used by
cross-layer equalization (which scales conv weights and needs BN gone first) and by the float
exports (every backend would fuse the pair anyway, and lowering a third of the nodes is faster)."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> int:
    """Fold conv -> BN pairs inside every nn.Sequential, in place; returns how many were folded."""
    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i].eval(), seq[i + 1].eval())
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded
