"""Activation observers by name: how a calibration pass turns activations into an int8 range.

    minmax      running min / max over every calibration batch (torchao MinMaxObserver)
    ema         exponential moving average of per-batch min / max (MovingAverageMinMaxObserver)
    percentile  mean over batches of the per-batch low / high percentiles (PercentileObserver)
    mse         histogram-based search for the range with the least L2 quantization error
                (torchao HistogramObserver's non-linear parameter search)
"""

from __future__ import annotations

import torch
from torchao.quantization.pt2e import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

from ..config import OBSERVERS
from ..errors import choices_error

EPS = 2**-12  # smallest scale, as the XNNPACK and LiteRT quantizers use
MAX_SAMPLES = 1 << 20  # torch.quantile's input limit is 16M elements; a strided subset is plenty


class PercentileObserver(MinMaxObserver):
    """Range = running mean of each batch's `percentile` / `100 - percentile` values (outliers clipped)."""

    def __init__(self, *args, percentile: float = 99.99, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile {percentile!r} must be in (50, 100]")
        self.percentile = percentile
        self.register_buffer("batches", torch.tensor(0, dtype=torch.int64))

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().reshape(-1).to(self.min_val.dtype)
        if x.numel() > MAX_SAMPLES:
            x = x[:: x.numel() // MAX_SAMPLES + 1]
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0], dtype=x.dtype, device=x.device)
        lo, hi = torch.quantile(x, q)
        n = self.batches.item()
        if n == 0:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            self.min_val.copy_((self.min_val * n + lo) / (n + 1))
            self.max_val.copy_((self.max_val * n + hi) / (n + 1))
        self.batches += 1
        return x_orig

    def reset_min_max_vals(self) -> None:
        super().reset_min_max_vals()
        self.batches.zero_()


def observer_ctr(name: str, *, percentile: float = 99.99):
    """The observer constructor (with its arguments bound) for an activation observer name."""
    if name == "minmax":
        return MinMaxObserver.with_args(eps=EPS)
    if name == "ema":
        return MovingAverageMinMaxObserver.with_args(averaging_constant=0.01, eps=EPS)
    if name == "percentile":
        return PercentileObserver.with_args(percentile=percentile, eps=EPS)
    if name == "mse":
        return HistogramObserver.with_args(eps=EPS)
    raise choices_error("observer", name, OBSERVERS)
