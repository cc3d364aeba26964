"""The codebook (SimVQ or plain) and nearest-code search by squared L2 distance, with optional Gumbel noise."""

from __future__ import annotations

import math

import torch
from torch import nn


class SimVQCodebook(nn.Module):
    """K codes of dimension D.

    SimVQ (``simvq=True``): codes = W(T0) with frozen random templates T0 (K x c0, N(0, 1), drawn from a
    generator seeded by ``seed`` so every run and machine gets the same templates) and a learnable linear
    projection W (c0 -> D, no bias). Training W moves all codes together, which keeps them in use.
    Plain (``simvq=False``): a learnable (K, D) parameter, for the ablation.
    """

    def __init__(
        self, codebook_size: int, code_dim: int, template_dim: int = 256, simvq: bool = True, seed: int = 0
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.simvq = simvq
        if simvq:
            generator = torch.Generator().manual_seed(seed)
            templates = torch.randn(codebook_size, template_dim, generator=generator)  # (K, c0)
            self.register_buffer("templates", templates)
            self.projection = nn.Linear(template_dim, code_dim, bias=False)
        else:
            # Same expected code scale as SimVQ's default init: N(0,1) templates times a
            # U(-1/sqrt(c0), 1/sqrt(c0)) projection gives entries of variance 1/3.
            self.embedding = nn.Parameter(torch.randn(codebook_size, code_dim) / math.sqrt(3.0))

    def codes(self) -> torch.Tensor:
        """The current codebook (K, D)."""
        if self.simvq:
            return self.projection(self.templates)  # (K, c0) -> (K, D)
        return self.embedding


def squared_distances(vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances (N, K) between vectors (N, D) and codes (K, D), ``|v|^2 - 2 v.c + |c|^2`` in float32."""
    with torch.autocast(device_type=vectors.device.type, enabled=False):
        vectors = vectors.float()
        codes = codes.float()
        return (
            vectors.pow(2).sum(dim=1, keepdim=True)  # (N, 1)
            - 2.0 * vectors @ codes.t()  # (N, K)
            + codes.pow(2).sum(dim=1)  # (K,)
        )


@torch.no_grad()
def nearest_codes(
    vectors: torch.Tensor,
    codes: torch.Tensor,
    gumbel_noise_scale: float = 0.0,
    chunk_rows: int = 16384,
) -> torch.Tensor:
    """Index (N,) int64 of the nearest code for each of the vectors (N, D).

    The argmax is over similarities = -squared distance; with ``gumbel_noise_scale > 0`` it is over
    similarities + scale * Gumbel(0, 1) (noise from torch's RNG, so a seeded run reproduces). The search is
    done in row chunks so the (N, K) distance matrix never has to fit in memory at once; it carries no
    gradient (the argmax has none), codes receive gradients through the lookup ``codes[indices]`` instead.
    """
    vectors = vectors.detach()
    codes = codes.detach()
    indices = []
    for start in range(0, vectors.shape[0], chunk_rows):
        similarities = -squared_distances(vectors[start : start + chunk_rows], codes)  # (n, K) float32
        if gumbel_noise_scale > 0:
            # -log(E) with E ~ Exp(1) is Gumbel(0, 1).
            exponential = torch.empty_like(similarities).exponential_().clamp_min_(torch.finfo(torch.float32).tiny)
            gumbel = -exponential.log()
            similarities = similarities + gumbel_noise_scale * gumbel
        indices.append(similarities.argmax(dim=1))
    if not indices:
        return torch.empty(0, dtype=torch.int64, device=vectors.device)
    return torch.cat(indices)
