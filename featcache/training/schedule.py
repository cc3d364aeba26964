"""Learning-rate schedules of the training loop, as pure functions of the step (a resumed run recomputes them).

``cosine`` is featcache's warm-up + cosine; ``vvo-cosine``, ``constant`` and ``exponential`` equal the anchors'
schedule code (VVO's CbLinearCosine, videosaur's constant, OCLF's warm-up + exponential decay).
"""

from __future__ import annotations

import math


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
    return warmup_cosine_lr_steps(step, total_steps, base_lr, int(warmup_fraction * total_steps), final_ratio)


def warmup_cosine_lr_steps(step: int, total_steps: int, base_lr: float, warmup_steps: int, final_ratio: float = 1e-3) -> float:
    """:func:`warmup_cosine_lr` with the warm-up given in steps (``0 <= warmup_steps < total_steps``)."""
    if step < warmup_steps:
        return base_lr * (max(step, 0) + 1) / warmup_steps
    final_lr = base_lr * final_ratio
    cosine_steps = total_steps - 1 - warmup_steps
    phase = 1.0 if cosine_steps <= 0 else min((step - warmup_steps) / cosine_steps, 1.0)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * phase))


#: Learning-rate schedules of the training loop (``train.lr_schedule`` of the training configs).
LR_SCHEDULES = ("cosine", "vvo-cosine", "constant", "exponential")


def _anchor_warmup(step: int, warmup_steps: int) -> float:
    """Warm-up factor of OCLF, videosaur and VVO: ``step / warmup_steps`` capped at 1, so step 0 runs at lr 0."""
    return 1.0 if warmup_steps <= 0 else min(max(step, 0) / warmup_steps, 1.0)


def vvo_linear_cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int, final_ratio: float = 1e-3) -> float:
    """VVO's learning rate (its ``CbLinearCosine`` with ``vstart`` 0): at step ``s`` (0-based),

    ``base_lr * s / warmup_steps`` for ``s <= warmup_steps`` (lr 0 at the first step, ``base_lr`` at step
    ``warmup_steps``), then ``final + (base_lr - final) * (1 + cos(pi * (s - warmup_steps) / (total_steps - warmup_steps))) / 2``,
    which would reach ``final = base_lr * final_ratio`` at step ``total_steps``, one past the last step.
    Differs from :func:`warmup_cosine_lr` by one step in both phases; steps past the end stay at ``final``.
    """
    final_lr = base_lr * final_ratio
    if step <= warmup_steps:
        return base_lr * _anchor_warmup(step, warmup_steps)
    cosine_steps = total_steps - warmup_steps
    phase = 1.0 if cosine_steps <= 0 else min((step - warmup_steps) / cosine_steps, 1.0)
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * phase))


def warmup_constant_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """``base_lr * min(1, step / warmup_steps)``: linear warm-up from 0 (videosaur's ``linear_warmup``), then constant."""
    return base_lr * _anchor_warmup(step, warmup_steps)


def warmup_exponential_lr(step: int, base_lr: float, warmup_steps: int, half_life: int) -> float:
    """OCLF's ``exponential_decay_after_optional_warmup`` with decay rate 0.5: linear warm-up from 0 over
    ``warmup_steps``, then ``base_lr * 0.5 ** ((step - warmup_steps) / half_life)`` (no floor)."""
    if step < warmup_steps:
        return base_lr * _anchor_warmup(step, warmup_steps)
    return base_lr * 0.5 ** ((step - warmup_steps) / half_life)


def scheduled_lr(
    schedule: str,
    step: int,
    total_steps: int,
    base_lr: float,
    warmup_steps: int,
    final_ratio: float = 1e-3,
    half_life: int = 100000,
) -> float:
    """Learning rate at optimiser step ``step`` (0-based) of ``total_steps`` under ``schedule`` (one of LR_SCHEDULES)."""
    if schedule == "cosine":
        return warmup_cosine_lr_steps(step, total_steps, base_lr, warmup_steps, final_ratio)
    if schedule == "vvo-cosine":
        return vvo_linear_cosine_lr(step, total_steps, base_lr, warmup_steps, final_ratio)
    if schedule == "constant":
        return warmup_constant_lr(step, base_lr, warmup_steps)
    if schedule == "exponential":
        return warmup_exponential_lr(step, base_lr, warmup_steps, half_life)
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; known: {', '.join(LR_SCHEDULES)}")
