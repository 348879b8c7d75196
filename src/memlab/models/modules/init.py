"""Initialisations shared by the mixers."""

from __future__ import annotations

import math

import torch


def inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    """softplus⁻¹(x) = x + log(1 − e^−x), for x > 0: the bias that makes softplus give x."""
    return x + torch.log(-torch.expm1(-x))


def log_uniform_steps(n: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """n step sizes log-uniform in [dt_min, dt_max], at least ``floor``: memories of about
    1/dt_max to 1/dt_min tokens (Mamba's dt initialisation)."""
    log_dt = torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    return log_dt.exp().clamp_min(floor)
