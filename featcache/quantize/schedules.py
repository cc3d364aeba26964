"""Schedules as pure functions of training progress, so a resumed run recomputes them exactly.

``t`` is the fraction of training done, in [0, 1] (values outside are clamped).
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


def residual_alpha(t: float, anneal_fraction: float) -> float:
    """Weight of the unquantized z in the decoder input: cosine from 1 at t=0 to 0 at ``anneal_fraction``, then 0."""
    if anneal_fraction <= 0:
        return 0.0
    phase = min(_clamp_progress(t) / anneal_fraction, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * phase))


def warmup_cosine_lr(
    step: int,
    total_steps: int,
    base_lr: float,
    warmup_fraction: float = 0.05,
    final_ratio: float = 1e-3,
) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warm-up ``base_lr * (step + 1) / warmup_steps`` over the first ``warmup_fraction`` of the steps
    (so no step is wasted at lr 0), then cosine from ``base_lr`` at step ``warmup_steps`` down to exactly
    ``base_lr * final_ratio`` at the last step ``total_steps - 1``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}")
    warmup_steps = int(warmup_fraction * total_steps)
    if step < warmup_steps:
        return base_lr * (max(step, 0) + 1) / warmup_steps
    final_lr = base_lr * final_ratio
    cosine_steps = total_steps - 1 - warmup_steps
    phase = 1.0 if cosine_steps <= 0 else min((step - warmup_steps) / cosine_steps, 1.0)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * phase))
