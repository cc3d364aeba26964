"""What a decoder reads for stored token indices: one codebook (VVO) or MSF's fused shared + specified codes.

A token set records which quantizer made it (``quantizer`` attribute; absent = VVO). :class:`CodeLookup` holds
the frozen arrays (as buffers, saved with an OCL model's weights) and maps indices to the decoder input, the
same vectors the quantizer outputs at level 0 without the residual: VVO ``codebook[index]``; MSF the
``combine`` of ``shared[index_0]`` and ``specified[index_1]`` (average, or the concatenation of halves),
projected by ``Linear(D -> E)`` when the quantizer had the pseudo-inverse projection.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import FeatcacheError, StoreError
from featcache.store.tokens import token_set_quantizer


class CodeLookup(nn.Module):
    """Frozen code vectors of a token set: indices (B, h, w) (VVO) or (B, G, h, w) (MSF) -> (B, h, w, E) float32."""

    def __init__(
        self,
        codebook: torch.Tensor,
        specified: torch.Tensor | None = None,
        combine: str = "average",
        projection_weight: torch.Tensor | None = None,
        projection_bias: torch.Tensor | None = None,
        multi_scale: bool = False,
    ) -> None:
        super().__init__()
        if codebook.ndim != 2 or (specified is not None and specified.shape[1] != codebook.shape[1]):
            raise FeatcacheError(f"codebooks must be (K, d) of one width, got {tuple(codebook.shape)} and "
                                 f"{None if specified is None else tuple(specified.shape)}")
        if combine not in ("average", "halves"):
            raise FeatcacheError(f"code combination must be average or halves, got {combine!r}")
        self.multi_scale = multi_scale or specified is not None
        self.combine = combine
        self.register_buffer("codebook", codebook.detach().clone().float())  # (K, d) shared / the only codebook
        self.register_buffer("specified", None if specified is None else specified.detach().clone().float())  # (K0, d)
        self.register_buffer("projection_weight", None if projection_weight is None else projection_weight.detach().clone().float())
        self.register_buffer("projection_bias", None if projection_bias is None else projection_bias.detach().clone().float())

    @property
    def group_sizes(self) -> list[int]:
        """Codes per index channel: [K] (VVO, MSF without specified codebooks) or [K_shared, K_specified]."""
        sizes = [int(self.codebook.shape[0])]
        return sizes + [int(self.specified.shape[0])] if self.specified is not None else sizes

    @property
    def code_dim(self) -> int:
        """Width E of the looked-up vectors."""
        if self.projection_weight is not None:
            return int(self.projection_weight.shape[0])
        width = int(self.codebook.shape[1])
        return 2 * width if self.specified is not None and self.combine == "halves" else width

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w) int or, MSF, (B, G, h, w) -> codes (B, h, w, E) float32."""
        tokens = tokens.long()
        if not self.multi_scale:
            return self.codebook[tokens]  # (B, h, w, D)
        codes = self.codebook[tokens[:, 0]]  # (B, h, w, d)
        if self.specified is not None:
            own = self.specified[tokens[:, 1]]  # (B, h, w, d)
            codes = torch.cat([codes, own], -1) if self.combine == "halves" else (codes + own) / 2
        if self.projection_weight is not None:
            codes = F.linear(codes, self.projection_weight, self.projection_bias)  # (B, h, w, E)
        return codes

    @classmethod
    def from_token_set(cls, store: Any, name: str) -> CodeLookup:
        """The lookup of token set ``name`` of a :class:`featcache.store.FeatureStore`."""
        attributes = store.token_attributes(name)
        codebook = torch.from_numpy(np.asarray(store.codebook(name)))
        kind = token_set_quantizer(attributes)
        if kind == "vvo":
            return cls(codebook)
        if kind != "msf":
            raise StoreError(f"token set {name!r} of {store.path}: unknown quantizer {kind!r}; expected vvo or msf")
        arrays = {key: torch.from_numpy(np.asarray(value)) for key, value in store.token_arrays(name).items()}
        return cls(
            codebook,
            arrays.get("codebook_specified"),
            combine=str(attributes.get("combine", "average")),
            projection_weight=arrays.get("projection_weight"),
            projection_bias=arrays.get("projection_bias"),
            multi_scale=True,
        )


__all__ = ["CodeLookup", "token_set_quantizer"]
