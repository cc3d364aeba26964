"""DINOSAUR's spatial-broadcast MLP decoder (also VVO-Mlp).

Every slot is broadcast to all h*w positions, a learned positional embedding is added and a shared MLP
predicts, per slot and position, the target channels plus one alpha logit. Alphas are softmaxed over
slots: they are the decoder masks and the weights of the mixture that forms the reconstruction.

The anchors differ only in initialisation and activation (see ``MlpDecoderConfig``): VVO's
BroadcastMLPDecoder uses GELU and a truncated-normal position embedding of std 1; videosaur's MLPDecoder
ReLU and std ``slot_dim ** -0.5``; OCLF's PatchDecoder ReLU, std 0.02 and zero biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from featcache.config import saved_before
from featcache.decoders.base import DecoderOutput, DecoderTargets, SlotDecoder
from featcache.errors import ConfigError, FeatcacheError

#: Valid values of the string options of ``MlpDecoderConfig``.
CHOICES: dict[str, tuple[str, ...]] = {
    "activation": ("relu", "gelu"),
    "position_init": ("normal_0.02", "trunc_normal_1", "normal_inv_sqrt_dim"),
    "bias_init": ("torch", "zero"),
}


@dataclass(frozen=True)
class MlpDecoderConfig:
    """Width, depth, activation and initialisation of the broadcast MLP (VVO/DINOSAUR: 3 hidden layers of 2048).

    VVO's BroadcastMLPDecoder: ``activation: gelu, position_init: trunc_normal_1``; videosaur's MLPDecoder:
    ``position_init: normal_inv_sqrt_dim``; OCLF's PatchDecoder: ``bias_init: zero``.
    """

    hidden: int = 2048
    layers: int = 3
    #: Activation after each hidden Linear: ``relu`` (videosaur, OCLF) or ``gelu`` (VVO; exact, not tanh).
    activation: Literal["relu", "gelu"] = "gelu"
    #: Initial position embedding: ``normal_0.02`` N(0, 0.02^2) (OCLF); ``trunc_normal_1`` N(0, 1) truncated
    #: to [-2, 2] (VVO); ``normal_inv_sqrt_dim`` N(0, 1/slot_dim) (videosaur).
    position_init: Literal["normal_0.02", "trunc_normal_1", "normal_inv_sqrt_dim"] = "trunc_normal_1"
    #: Initial Linear biases: ``torch`` PyTorch's uniform default (VVO, videosaur) or ``zero`` (OCLF).
    bias_init: Literal["torch", "zero"] = "torch"

    def __post_init__(self) -> None:
        for name in ("hidden", "layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key 'decoder.mlp.{name}' must be at least 1, got {getattr(self, name)}")
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise ConfigError(
                    f"config key 'decoder.mlp.{name}' must be one of {', '.join(valid)}, got {getattr(self, name)!r}"
                )


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


def init_position_embedding(positions: int, slot_dim: int, init: str) -> torch.Tensor:
    """A (1, positions, slot_dim) position embedding drawn as ``init`` says (torch's global generator)."""
    if init == "trunc_normal_1":
        return nn.init.trunc_normal_(torch.empty(1, positions, slot_dim), std=1.0, a=-2.0, b=2.0)
    std = slot_dim**-0.5 if init == "normal_inv_sqrt_dim" else 0.02
    return torch.randn(1, positions, slot_dim) * std


def flat_target(targets: DecoderTargets, field_name: str, decoder: str) -> torch.Tensor:
    """The (B, h, w, C) target ``field_name`` flattened to (B, N, C); fails in one line when missing."""
    value = getattr(targets, field_name)
    if value is None:
        raise FeatcacheError(f"decoder {decoder} needs targets.{field_name}, got None")
    return value.flatten(1, 2)  # (B, h, w, C) -> (B, N, C)


class MlpDecoder(SlotDecoder):
    """Spatial-broadcast MLP; target ``features`` (DINOSAUR) or ``codes+features`` (VVO-Mlp, codes first)."""

    returns_masks = True

    def __init__(
        self,
        config: MlpDecoderConfig,
        slot_dim: int,
        grid: tuple[int, int],
        target: Literal["features", "codes+features"],
        feature_dim: int,
        code_dim: int = 0,
    ) -> None:
        super().__init__()
        if target not in ("features", "codes+features"):
            raise ConfigError(f"decoder mlp does not support target {target!r}; use features or codes+features")
        if target == "codes+features" and code_dim < 1:
            raise FeatcacheError("decoder mlp with target codes+features needs a codebook (code_dim is 0)")
        self.grid = grid
        self.target = target
        self.feature_dim = feature_dim
        self.code_dim = code_dim if target == "codes+features" else 0
        self.needs = ("codes", "features") if target == "codes+features" else ("features",)
        self.output_dim = self.code_dim + feature_dim
        positions = grid[0] * grid[1]
        position_embedding = init_position_embedding(positions, slot_dim, config.position_init)  # (1, N, D)
        self.position_embedding = nn.Parameter(position_embedding)
        layers: list[nn.Module] = []
        width = slot_dim
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), ACTIVATIONS[config.activation]()]
            width = config.hidden
        layers.append(nn.Linear(width, self.output_dim + 1))  # last channel: alpha logit
        self.mlp = nn.Sequential(*layers)
        if config.bias_init == "zero":
            for layer in self.mlp:
                if isinstance(layer, nn.Linear):
                    nn.init.zeros_(layer.bias)

    def per_slot(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slots (B, S, D) -> per-slot predictions (B, S, N, output_dim) and alpha logits (B, S, N)."""
        broadcast = slots.unsqueeze(2) + self.position_embedding.unsqueeze(1)  # (B, S, N, D)
        output = self.mlp(broadcast)  # (B, S, N, output_dim + 1)
        return output[..., :-1], output[..., -1]

    def forward(
        self, slots: torch.Tensor, targets: DecoderTargets, noise: dict[str, torch.Tensor] | None = None
    ) -> DecoderOutput:
        """Deterministic: ``noise`` is unused (see SlotDecoder)."""
        predictions, alpha_logits = self.per_slot(slots)
        alpha = alpha_logits.float().softmax(dim=1)  # (B, S, N), sums to 1 over slots
        reconstruction = (alpha.unsqueeze(-1) * predictions.float()).sum(dim=1)  # (B, N, output_dim)
        features = flat_target(targets, "features", "mlp").float()
        feature_loss = F.mse_loss(reconstruction[..., self.code_dim :], features)
        losses = {"mse_features": feature_loss.detach()}
        loss = feature_loss
        if self.code_dim:
            codes = flat_target(targets, "codes", "mlp").float().detach()
            code_loss = F.mse_loss(reconstruction[..., : self.code_dim], codes)
            losses["mse_codes"] = code_loss.detach()
            loss = loss + code_loss
        batch_size, num_slots = alpha.shape[:2]
        height, width = self.grid
        return DecoderOutput(
            loss=loss,
            losses=losses,
            masks=alpha.reshape(batch_size, num_slots, height, width),
            reconstruction=reconstruction.reshape(batch_size, height, width, self.output_dim),
        )


#: Before issue 12: ReLU and a position embedding of std 0.02.
saved_before(MlpDecoderConfig, {"activation": "relu", "position_init": "normal_0.02", "bias_init": "torch"})
