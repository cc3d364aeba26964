"""The quantizer pre-training model: a registered quantizer (VVO or MSF) + reconstruction decoder, with the loss weighting.

MSF (``quantizer.kind: msf``) is trained as the official ``VQVAEZMultiScale``: the one decoder reconstructs every
pyramid level from that level's decoder input, against the target brought to the level's size (images: bicubic
resize to the decoder's output size, as the official per-level ``Resize(interp="bicubic")``; features: the
quantizer's own pyramid op), and the per-level reconstruction and quantizer losses are summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from featcache.errors import ConfigError
from featcache.quantize.config import QuantizerConfig, VQDecoderConfig
from featcache.quantize.decoder import FeatureDecoder, PixelDecoder, VVOPixelDecoder
from featcache.quantize.msf import MSFQuantizer, MSFQuantizerOutput, feature_pyramid
from featcache.quantize.quantizer import QuantizerOutput
from featcache.quantize.registry import build_quantizer, decoder_input_dim


@dataclass
class VQOutput:
    """One pre-training step's forward pass."""

    #: Decoder output: (B, 3, S, S) normalised pixels, or (B, h, w, C) VFM features.
    reconstruction: torch.Tensor
    #: Weighted loss terms that are switched on (weight > 0) and their sum ``total``.
    losses: dict[str, torch.Tensor]
    #: Selected code per position (B, h, w) int64; MSF: level 0's (B, 2, h, w) [shared, specified].
    indices: torch.Tensor
    #: The quantizer pass (z, q, unweighted quantizer losses, Gumbel scale and alpha used).
    quantizer: QuantizerOutput | MSFQuantizerOutput
    #: MSF: the unweighted reconstruction loss of each level (their sum is ``losses["reconstruction"]``).
    reconstruction_per_scale: list[torch.Tensor] | None = None

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
        self.quantizer = build_quantizer(quantizer_config, feature_channels)
        self.multi_scale = isinstance(self.quantizer, MSFQuantizer)
        code_dim = decoder_input_dim(quantizer_config)  # what the decoder reads
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
                code_dim, channels=decoder_config.channels, body_channels=decoder_config.body_channels
            )
        elif decoder_config.target == "pixels":
            if self.grid[0] != self.grid[1]:
                raise ConfigError(f"decoder.target 'pixels' needs a square feature grid, got {self.grid}")
            self.decoder = PixelDecoder(
                code_dim,
                self.grid[0],
                channels=decoder_config.channels,
                image_size=decoder_config.image_size,
                layers_per_stage=decoder_config.layers_per_stage,
            )
        else:
            self.decoder = FeatureDecoder(code_dim, feature_channels, channels=decoder_config.channels)

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
        noise = self.training if training_noise is None else training_noise
        if self.multi_scale:
            if gumbel_noise is not None:
                raise ValueError("explicit gumbel_noise is for the VVO quantizer; MSF draws its noise from generator")
            quantizer_output = self.quantizer(features, progress, training_noise=noise, generator=generator)
        else:
            quantizer_output = self.quantizer(features, progress, training_noise=noise, gumbel_noise=gumbel_noise, generator=generator)
        if self.decoder is None:
            raise ConfigError("this VQ model has no decoder (decoder.architecture: none): it can tokenize, not train")
        per_scale = None
        if isinstance(quantizer_output, MSFQuantizerOutput):
            reconstructions = [self.decoder(level) for level in quantizer_output.decoder_input]
            per_scale = [
                F.mse_loss(output.float(), target.float())
                for output, target in zip(reconstructions, self.level_targets(targets, reconstructions))
            ]
            reconstruction, reconstruction_loss = reconstructions[0], torch.stack(per_scale).sum()
        else:
            reconstruction = self.decoder(quantizer_output.decoder_input)
            if reconstruction.shape != targets.shape:
                raise ValueError(
                    f"targets {tuple(targets.shape)} do not match the decoder output {tuple(reconstruction.shape)}"
                )
            reconstruction_loss = F.mse_loss(reconstruction.float(), targets.float())
        unweighted = {"reconstruction": reconstruction_loss, **quantizer_output.losses}
        losses = {name: weight * unweighted[name] for name, weight in self.loss_weights().items() if weight > 0}
        losses["total"] = torch.stack(list(losses.values())).sum()
        return VQOutput(
            reconstruction=reconstruction,
            losses=losses,
            indices=quantizer_output.indices[0] if isinstance(quantizer_output, MSFQuantizerOutput) else quantizer_output.indices,
            quantizer=quantizer_output,
            reconstruction_per_scale=per_scale,
        )

    def level_targets(self, targets: torch.Tensor, reconstructions: list[torch.Tensor]) -> list[torch.Tensor]:
        """MSF: ``targets`` brought to every level's decoder output: images (B, 3, S, S) bicubic-resized (antialiased),
        features (B, h, w, C) through the quantizer's pyramid op."""
        if targets.ndim == 4 and targets.shape[1] == 3 and self.decoder_config.target == "pixels":
            if targets.shape != reconstructions[0].shape:
                raise ValueError(f"targets {tuple(targets.shape)} do not match the decoder output {tuple(reconstructions[0].shape)}")
            return [
                targets if output.shape == targets.shape
                else F.interpolate(targets.float(), size=output.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
                for output in reconstructions
            ]
        config = self.quantizer_config
        maps = targets.float().permute(0, 3, 1, 2)  # (B, C, h, w)
        levels = feature_pyramid(maps, len(reconstructions), config.pyramid_downsample)  # type: ignore[attr-defined]
        out = [level.permute(0, 2, 3, 1) for level in levels]  # (B, h_i, w_i, C)
        if out[0].shape != reconstructions[0].shape:
            raise ValueError(f"targets {tuple(targets.shape)} do not match the decoder output {tuple(reconstructions[0].shape)}")
        return out

    def tokenize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise-free token indices (B, h, w) (MSF: level 0's (B, 2, h, w)) and squared errors (B, h, w)."""
        return self.quantizer.tokenize(features)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Decode token indices (B, h, w) (MSF: (B, 2, h, w)) through their codes (no residual): what tokens keep."""
        if self.decoder is None:
            raise ConfigError("this VQ model has no decoder (decoder.architecture: none): it cannot decode tokens")
        return self.decoder(self.quantizer.lookup(indices))
