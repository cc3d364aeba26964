"""The quantizer pre-training model: VectorQuantizer + reconstruction decoder, with the loss weighting."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import ConfigError
from featcache.quantize.config import QuantizerConfig, VQDecoderConfig
from featcache.quantize.decoder import FeatureDecoder, PixelDecoder, VVOPixelDecoder
from featcache.quantize.quantizer import QuantizerOutput, VectorQuantizer


@dataclass
class VQOutput:
    """One pre-training step's forward pass."""

    #: Decoder output: (B, 3, S, S) normalised pixels, or (B, h, w, C) VFM features.
    reconstruction: torch.Tensor
    #: Weighted loss terms that are switched on (weight > 0) and their sum ``total``.
    losses: dict[str, torch.Tensor]
    #: Selected code per position (B, h, w) int64.
    indices: torch.Tensor
    #: The quantizer pass (z, q, unweighted quantizer losses, Gumbel scale and alpha used).
    quantizer: QuantizerOutput

    def weighted_loss_terms(self) -> dict[str, float]:
        """The ``losses`` as Python floats for logging (one device sync for all of them)."""
        names = list(self.losses)
        values = torch.stack([self.losses[name].detach().float() for name in names]).tolist()
        return dict(zip(names, values))


class VQModel(nn.Module):
    """Quantizer + decoder, built from the two configs and the cached features' channels and grid (h, w)."""

    def __init__(
        self,
        quantizer_config: QuantizerConfig,
        decoder_config: VQDecoderConfig,
        feature_channels: int,
        grid: tuple[int, int],
    ) -> None:
        super().__init__()
        self.quantizer_config = quantizer_config
        self.decoder_config = decoder_config
        self.feature_channels = feature_channels
        self.grid = (int(grid[0]), int(grid[1]))
        self.quantizer = VectorQuantizer(quantizer_config, feature_channels)
        self.decoder: nn.Module | None
        if decoder_config.architecture == "none":
            self.decoder = None
        elif decoder_config.architecture == "vvo":
            if decoder_config.image_size != 8 * self.grid[0] or self.grid[0] != self.grid[1]:
                raise ConfigError(
                    f"decoder.architecture 'vvo' upsamples x8: decoder.image_size must be 8 x the square grid "
                    f"{self.grid}, got {decoder_config.image_size}"
                )
            self.decoder = VVOPixelDecoder(
                quantizer_config.code_dim, channels=decoder_config.channels, body_channels=decoder_config.body_channels
            )
        elif decoder_config.target == "pixels":
            if self.grid[0] != self.grid[1]:
                raise ConfigError(f"decoder.target 'pixels' needs a square feature grid, got {self.grid}")
            self.decoder = PixelDecoder(
                quantizer_config.code_dim,
                self.grid[0],
                channels=decoder_config.channels,
                image_size=decoder_config.image_size,
                layers_per_stage=decoder_config.layers_per_stage,
            )
        else:
            self.decoder = FeatureDecoder(quantizer_config.code_dim, feature_channels, channels=decoder_config.channels)

    def loss_weights(self) -> dict[str, float]:
        """Weight of every loss term: the one place the weighting is defined; a zero weight switches a term off."""
        return {
            "reconstruction": 1.0,
            "alignment": self.quantizer_config.alignment_weight,
            "commitment": self.quantizer_config.commitment_weight,
            "normalisation": self.quantizer_config.normalisation_weight,
        }

    def forward(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        progress: float,
        training_noise: bool | None = None,
        gumbel_noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> VQOutput:
        """Encode, quantize and reconstruct ``targets`` ((B, 3, S, S) in [-1, 1] or (B, h, w, C) features).

        ``progress`` in [0, 1] drives the Gumbel scale and the residual alpha; Gumbel noise is added when
        ``training_noise`` (default: ``self.training``) and the config enables it, taken from ``gumbel_noise``
        (B, h, w, K) when given, else drawn from ``generator`` (default: torch's global RNG).
        """
        if tuple(features.shape[1:3]) != self.grid:
            raise ValueError(f"features grid {tuple(features.shape[1:3])} differs from the model's grid {self.grid}")
        quantizer_output = self.quantizer(
            features,
            progress,
            training_noise=self.training if training_noise is None else training_noise,
            gumbel_noise=gumbel_noise,
            generator=generator,
        )
        if self.decoder is None:
            raise ConfigError("this VQ model has no decoder (decoder.architecture: none): it can tokenize, not train")
        reconstruction = self.decoder(quantizer_output.decoder_input)
        if reconstruction.shape != targets.shape:
            raise ValueError(
                f"targets {tuple(targets.shape)} do not match the decoder output {tuple(reconstruction.shape)}"
            )
        unweighted = {
            "reconstruction": F.mse_loss(reconstruction.float(), targets.float()),
            **quantizer_output.losses,
        }
        losses = {name: weight * unweighted[name] for name, weight in self.loss_weights().items() if weight > 0}
        losses["total"] = torch.stack(list(losses.values())).sum()
        return VQOutput(
            reconstruction=reconstruction,
            losses=losses,
            indices=quantizer_output.indices,
            quantizer=quantizer_output,
        )

    def tokenize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free token indices (B, h, w) and squared errors (B, h, w); see :meth:`VectorQuantizer.tokenize`."""
        return self.quantizer.tokenize(features)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode token indices (B, h, w) through their codes (no residual): for visualising what tokens keep."""
        if self.decoder is None:
            raise ConfigError("this VQ model has no decoder (decoder.architecture: none): it cannot decode tokens")
        return self.decoder(self.quantizer.lookup(indices))
