"""Codebook usage statistics for training logs: cheap, pure and checkable by hand."""

from __future__ import annotations

import math

import torch


def code_usage_statistics(indices: torch.Tensor, codebook_size: int) -> dict[str, int | float]:
    """Usage of the K codes by token ``indices`` (any shape).

    ``used_codes``: codes hit at least once; ``perplexity``: exp of the entropy of the usage distribution
    (K when usage is uniform, 1 when one code takes all); ``usage_cv``: population std / mean of the
    per-code counts over all K codes (0 when uniform; unused codes count as 0).
    """
    flat = indices.detach().reshape(-1).long()
    if flat.numel() == 0:
        raise ValueError("code usage needs at least one index")
    if int(flat.min()) < 0 or int(flat.max()) >= codebook_size:
        raise ValueError(f"indices must lie in [0, {codebook_size}), got [{int(flat.min())}, {int(flat.max())}]")
    return usage_statistics_from_counts(torch.bincount(flat, minlength=codebook_size))


def usage_statistics_from_counts(counts: torch.Tensor) -> dict[str, int | float]:
    """The same statistics from per-code counts (K,), e.g. accumulated over a logging window."""
    counts = counts.detach().double()
    if float(counts.sum()) <= 0:
        raise ValueError("code usage needs at least one counted index")
    probabilities = counts / counts.sum()
    nonzero = probabilities[probabilities > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    return {
        "used_codes": int((counts > 0).sum()),
        "perplexity": math.exp(entropy),
        "usage_cv": float(counts.std(unbiased=False) / counts.mean()),
    }
