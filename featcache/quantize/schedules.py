"""The quantizer's annealing schedules as pure functions of training progress (a resumed run recomputes them).

``t`` is the fraction of training done, in [0, 1] (values outside are clamped). Learning-rate schedules
live with the training loop (:mod:`featcache.training.schedule`).
"""

from __future__ import annotations

import math


def _clamp_progress(t: float) -> float:
    return min(max(float(t), 0.0), 1.0)


def gumbel_scale(t: float, start: float, end: float) -> float:
    """Gumbel noise scale: log-space interpolation with cosine easing, ``start`` at t=0 and ``end`` at t=1."""
    if start <= 0 or end <= 0:
        raise ValueError(f"gumbel scales must be positive for a log-space schedule, got {start} and {end}")
    eased = (1.0 - math.cos(math.pi * _clamp_progress(t))) / 2.0
    return math.exp(math.log(start) + (math.log(end) - math.log(start)) * eased)


def residual_alpha(t: float, anneal_fraction: float, end: float = 0.0) -> float:
    """Weight of the unquantized z in the decoder input: cosine from 1 at t=0 to ``end`` at ``anneal_fraction``,
    then ``end``."""
    if anneal_fraction <= 0:
        return end
    phase = min(_clamp_progress(t) / anneal_fraction, 1.0)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * phase))
