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
    Plain (``simvq=False``): a learnable (K, D) parameter, for the ablation. ``bias`` adds a bias to W (the
    official VVO code's projection has one).
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        template_dim: int = 256,
        simvq: bool = True,
        seed: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.simvq = simvq
        if simvq:
            generator = torch.Generator().manual_seed(seed)
            templates = torch.randn(codebook_size, template_dim, generator=generator)  # (K, c0)
            self.register_buffer("templates", templates)
            self.projection = nn.Linear(template_dim, code_dim, bias=bias)
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


def chi_moments(degrees: int) -> tuple[float, float]:
    """Mean and standard deviation of the chi distribution with ``degrees`` degrees of freedom.

    The norm of a ``degrees``-dimensional standard normal vector follows it; VVO standardises code distances
    with these two numbers so that the Gumbel scale means the same for every code dimension.
    """
    mean = math.sqrt(2.0) * math.exp(math.lgamma((degrees + 1) / 2) - math.lgamma(degrees / 2))
    return mean, math.sqrt(degrees - mean**2)


def code_similarities(vectors: torch.Tensor, codes: torch.Tensor, kind: str = "squared_distance") -> torch.Tensor:
    """Similarities (N, K) float32 of vectors (N, D) to codes (K, D); larger = closer.

    ``squared_distance``: -|v - c|^2. ``standardised_distance``: (mu - |v - c|) / sigma, with mu and sigma from
    :func:`chi_moments` for D degrees of freedom. Both order the codes the same way.
    """
    squared = squared_distances(vectors, codes)  # (N, K)
    if kind == "squared_distance":
        return -squared
    if kind == "standardised_distance":
        mean, std = chi_moments(codes.shape[1])
        return (mean - squared.clamp_min(0.0).sqrt()) / std
    raise ValueError(f"unknown code similarity {kind!r}; expected squared_distance or standardised_distance")


@torch.no_grad()
def nearest_codes(
    vectors: torch.Tensor,
    codes: torch.Tensor,
    gumbel_noise_scale: float = 0.0,
    chunk_rows: int = 16384,
    similarity: str = "squared_distance",
    gumbel_scaling: str = "noise",
    gumbel_noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Index (N,) int64 of the best code for each of the vectors (N, D).

    Without noise (``gumbel_noise_scale == 0``) the nearest code by L2. With noise, the argmax of
    ``similarity + scale * G`` (``gumbel_scaling="noise"``) or ``scale * similarity + G`` (``"similarities"``,
    the scale acting as an inverse temperature), G ~ Gumbel(0, 1): taken from ``gumbel_noise`` (N, K) when
    given (reproducible comparisons), else drawn from ``generator`` (default: torch's global RNG, so a seeded
    run reproduces). The search is done in row chunks so the (N, K) matrix never has to fit in memory at
    once; it carries no gradient (the argmax has none), codes receive gradients through the lookup
    ``codes[indices]`` instead.
    """
    if gumbel_scaling not in ("noise", "similarities"):
        raise ValueError(f"unknown gumbel_scaling {gumbel_scaling!r}; expected noise or similarities")
    if gumbel_noise is not None and gumbel_noise.shape != (vectors.shape[0], codes.shape[0]):
        raise ValueError(
            f"gumbel_noise must be (N, K) = {(vectors.shape[0], codes.shape[0])}, got {tuple(gumbel_noise.shape)}"
        )
    vectors = vectors.detach()
    codes = codes.detach()
    indices = []
    for start in range(0, vectors.shape[0], chunk_rows):
        chunk = vectors[start : start + chunk_rows]
        if gumbel_noise_scale <= 0:
            indices.append((-squared_distances(chunk, codes)).argmax(dim=1))
            continue
        similarities = code_similarities(chunk, codes, similarity)  # (n, K) float32
        if gumbel_noise is not None:
            gumbel = gumbel_noise[start : start + chunk_rows].to(similarities.device, torch.float32)
        else:
            # -log(E) with E ~ Exp(1) is Gumbel(0, 1).
            exponential = torch.empty_like(similarities).exponential_(generator=generator)
            gumbel = -exponential.clamp_min_(torch.finfo(torch.float32).tiny).log()
        if gumbel_scaling == "noise":
            perturbed = similarities + gumbel_noise_scale * gumbel
        else:
            perturbed = gumbel_noise_scale * similarities + gumbel
        indices.append(perturbed.argmax(dim=1))
    if not indices:
        return torch.empty(0, dtype=torch.int64, device=vectors.device)
    return torch.cat(indices)
