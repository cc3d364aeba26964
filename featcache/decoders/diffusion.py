"""VVO-Dfz decoder: a conditional diffusion model on the quantized code map, conditioned on slots.

Training is DDPM with epsilon-prediction: noise the (B, D, h, w) code map at a random timestep and let a
small UNet, whose spatial tokens cross-attend to the slots, predict the noise. The only way the UNet can
beat the unconditional optimum is by reading the slots, which is what drives the aggregator.
The noise schedule is Stable Diffusion's "scaled linear" one (linear in sqrt(beta)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from featcache.decoders.base import DecoderOutput, DecoderTargets, SlotDecoder
from featcache.decoders.diffusion_config import DiffusionDecoderConfig
from featcache.errors import ConfigError


def _norm_groups(channels: int) -> int:
    """GroupNorm group count that always divides ``channels`` (at most 8 groups)."""
    return math.gcd(8, channels)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim); ``dim`` must be even."""
    half = dim // 2
    exponents = torch.arange(half, device=timesteps.device, dtype=torch.float32) / half
    frequencies = torch.exp(-math.log(max_period) * exponents)  # (half,)
    angles = timesteps.to(torch.float32)[:, None] * frequencies[None, :]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(nn.Module):
    """Two GroupNorm-SiLU-Conv3x3 layers with the timestep embedding added in between, plus a skip."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.norm_in = nn.GroupNorm(_norm_groups(in_channels), in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_projection = nn.Linear(embedding_dim, out_channels)
        self.norm_out = nn.GroupNorm(_norm_groups(out_channels), out_channels)
        self.conv_out = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(F.silu(self.norm_in(x)))
        hidden = hidden + self.time_projection(F.silu(time_embedding))[:, :, None, None]
        hidden = self.conv_out(F.silu(self.norm_out(hidden)))
        return self.skip(x) + hidden


class SlotCrossAttention(nn.Module):
    """Spatial positions (queries) attend to the slots (keys/values projected to the channel width); residual."""

    def __init__(self, channels: int, slot_dim: int, heads: int) -> None:
        super().__init__()
        if channels % heads != 0:
            raise ConfigError(f"decoder.heads={heads} must divide the UNet channel width {channels}")
        self.heads = heads
        self.norm = nn.GroupNorm(_norm_groups(channels), channels)
        self.slot_norm = nn.LayerNorm(slot_dim)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(slot_dim, channels)
        self.value = nn.Linear(slot_dim, channels)
        self.output = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        head_dim = channels // self.heads
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        slots = self.slot_norm(slots)  # (B, S, slot_dim)
        # (B, N, C) -> (B, heads, N, head_dim)
        queries = self.query(tokens).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        keys = self.key(slots).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        values = self.value(slots).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        attended = F.scaled_dot_product_attention(queries, keys, values)  # (B, heads, h*w, head_dim)
        attended = attended.transpose(1, 2).reshape(batch, height * width, channels)  # (B, h*w, C)
        attended = self.output(attended).transpose(1, 2).reshape(batch, channels, height, width)
        return x + attended


class ConditionalUNet(nn.Module):
    """Small UNet predicting noise from (x_t (B, D, h, w), t (B,), slots (B, S, slot_dim)).

    Level ``i`` works at ``unet_channels * 2**i`` channels and resolution ``side / 2**i``; every level has a
    ResBlock followed by cross-attention to the slots, the decoder path mirrors it with skip connections.
    """

    def __init__(self, config: DiffusionDecoderConfig, slot_dim: int, code_dim: int) -> None:
        super().__init__()
        if config.unet_levels < 1:
            raise ConfigError(f"decoder.unet_levels must be >= 1, got {config.unet_levels}")
        if config.unet_channels < 1:
            raise ConfigError(f"decoder.unet_channels must be >= 1, got {config.unet_channels}")
        base = config.unet_channels
        level_channels = [base * 2**level for level in range(config.unet_levels)]
        self.levels = config.unet_levels
        self.frequency_dim = 2 * ((base + 1) // 2)  # sinusoid needs an even width
        embedding_dim = 4 * base
        self.time_mlp = nn.Sequential(
            nn.Linear(self.frequency_dim, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim)
        )
        self.input_conv = nn.Conv2d(code_dim, base, kernel_size=3, padding=1)

        self.down_blocks = nn.ModuleList()
        self.down_attention = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        current = base
        for level, channels in enumerate(level_channels):
            self.down_blocks.append(ResBlock(current, channels, embedding_dim))
            self.down_attention.append(SlotCrossAttention(channels, slot_dim, config.heads))
            is_last = level == self.levels - 1
            self.downsamples.append(
                nn.Identity() if is_last else nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
            )
            current = channels

        self.middle_block = ResBlock(current, current, embedding_dim)
        self.middle_attention = SlotCrossAttention(current, slot_dim, config.heads)

        # Up path in reverse level order: index 0 is the deepest level.
        self.up_blocks = nn.ModuleList()
        self.up_attention = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(self.levels)):
            channels = level_channels[level]
            self.up_blocks.append(ResBlock(current + channels, channels, embedding_dim))
            self.up_attention.append(SlotCrossAttention(channels, slot_dim, config.heads))
            if level > 0:
                self.upsamples.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(channels, level_channels[level - 1], kernel_size=3, padding=1),
                    )
                )
                current = level_channels[level - 1]
            else:
                self.upsamples.append(nn.Identity())
                current = channels

        self.output_norm = nn.GroupNorm(_norm_groups(base), base)
        self.output_conv = nn.Conv2d(base, code_dim, kernel_size=3, padding=1)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        time_embedding = self.time_mlp(timestep_embedding(timesteps, self.frequency_dim).to(x_t.dtype))
        hidden = self.input_conv(x_t)
        skips: list[torch.Tensor] = []
        for block, attention, downsample in zip(self.down_blocks, self.down_attention, self.downsamples):
            hidden = attention(block(hidden, time_embedding), slots)
            skips.append(hidden)
            hidden = downsample(hidden)
        hidden = self.middle_attention(self.middle_block(hidden, time_embedding), slots)
        for block, attention, upsample in zip(self.up_blocks, self.up_attention, self.upsamples):
            hidden = torch.cat([hidden, skips.pop()], dim=1)  # (B, C_current + C_level, h_l, w_l)
            hidden = attention(block(hidden, time_embedding), slots)
            hidden = upsample(hidden)
        return self.output_conv(F.silu(self.output_norm(hidden)))


class DiffusionDecoder(SlotDecoder):
    """VVO-Dfz: DDPM (epsilon-prediction) on the quantized code map (B, h, w, D), conditioned on slots."""

    needs = ("codes",)

    def __init__(self, config: DiffusionDecoderConfig, slot_dim: int, code_dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        if config.timesteps < 1:
            raise ConfigError(f"decoder.timesteps must be >= 1, got {config.timesteps}")
        if not 0.0 < config.beta_start <= config.beta_end < 1.0:
            raise ConfigError(
                f"decoder betas must satisfy 0 < beta_start <= beta_end < 1, got {config.beta_start}, {config.beta_end}"
            )
        factor = 2 ** (config.unet_levels - 1)
        if any(side % factor != 0 for side in grid):
            raise ConfigError(
                f"diffusion decoder grid {tuple(grid)} must have sides divisible by {factor} "
                f"(2**(unet_levels-1) with unet_levels={config.unet_levels})"
            )
        self.config = config
        self.code_dim = code_dim
        self.grid = (int(grid[0]), int(grid[1]))
        self.timesteps = config.timesteps

        # Scaled-linear schedule (Stable Diffusion): linear in sqrt(beta); computed in float64, stored as float32.
        betas = (
            torch.linspace(config.beta_start**0.5, config.beta_end**0.5, config.timesteps, dtype=torch.float64) ** 2
        )
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.register_buffer("betas", betas.to(torch.float32))
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float32))
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt().to(torch.float32))
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt().to(torch.float32))

        self.unet = ConditionalUNet(config, slot_dim, code_dim)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0 (B, D, h, w), t (B,)."""
        signal_scale = self.sqrt_alphas_cumprod[timesteps].to(x0.dtype)[:, None, None, None]
        noise_scale = self.sqrt_one_minus_alphas_cumprod[timesteps].to(x0.dtype)[:, None, None, None]
        return signal_scale * x0 + noise_scale * noise

    def draw_noise(self, batch_size: int, generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """One training step's random numbers: a timestep per sample (B,) and Gaussian noise (B, D, h, w)."""
        timesteps = torch.randint(0, self.timesteps, (batch_size,), generator=generator, device=device)
        noise = torch.randn((batch_size, self.code_dim, *self.grid), generator=generator, device=device)
        return {"timesteps": timesteps, "noise": noise}

    def forward(
        self, slots: torch.Tensor, targets: DecoderTargets, noise: dict[str, torch.Tensor] | None = None
    ) -> DecoderOutput:
        """Denoising loss at one random timestep per sample: ``noise`` from ``draw_noise``, or torch's global RNG."""
        codes = targets.codes
        if codes is None:
            raise ValueError("DiffusionDecoder needs targets.codes (B, h, w, D)")
        if codes.shape[-1] != self.code_dim or tuple(codes.shape[1:3]) != self.grid:
            raise ValueError(
                f"DiffusionDecoder expects codes (B, {self.grid[0]}, {self.grid[1]}, {self.code_dim}), "
                f"got {tuple(codes.shape)}"
            )
        x0 = codes.permute(0, 3, 1, 2).to(self.sqrt_alphas_cumprod.dtype)  # (B, h, w, D) -> (B, D, h, w)
        drawn = self.draw_noise(x0.shape[0], None, x0.device) if noise is None else noise
        timesteps, epsilon = drawn["timesteps"], drawn["noise"].to(x0.dtype)
        if tuple(epsilon.shape) != tuple(x0.shape) or tuple(timesteps.shape) != (x0.shape[0],):
            raise ValueError(
                f"DiffusionDecoder noise must be timesteps ({x0.shape[0]},) and noise {tuple(x0.shape)}, "
                f"got {tuple(timesteps.shape)} and {tuple(epsilon.shape)}"
            )
        x_t = self.add_noise(x0, epsilon, timesteps)
        predicted_noise = self.unet(x_t, timesteps, slots)
        loss = F.mse_loss(predicted_noise.float(), epsilon.float())
        return DecoderOutput(loss=loss, losses={"diffusion": loss}, masks=None, reconstruction=None)

    def sampling_timesteps(self, steps: int | None, device: torch.device) -> torch.Tensor:
        """Descending timesteps used by ``sample``: all T, or ``steps`` evenly spaced from T-1 down to 0."""
        if steps is None:
            steps = self.timesteps
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"sample steps must be in [1, {self.timesteps}], got {steps}")
        return torch.linspace(self.timesteps - 1, 0, steps, device=device).round().long()

    @torch.no_grad()
    def sample(
        self, slots: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decode slots (B, S, slot_dim) into a code map (B, h, w, D) by ancestral DDPM sampling.

        With ``steps`` < T the chain is respaced (Nichol & Dhariwal 2021): between consecutive kept timesteps
        t > s the step uses beta' = 1 - abar_t / abar_s, so it is still stochastic DDPM, not DDIM. The mean is
        (x_t - beta' / sqrt(1 - abar_t) eps) / sqrt(1 - beta') and the variance is the posterior one,
        beta' (1 - abar_s) / (1 - abar_t); the last step adds no noise. ``generator`` (on the slots' device)
        drives all noise; without it torch's global RNG does.
        """
        batch = slots.shape[0]
        device = slots.device
        dtype = self.alphas_cumprod.dtype
        timesteps = self.sampling_timesteps(steps, device)
        abar = self.alphas_cumprod[timesteps]  # (n,)
        abar_previous = torch.cat([abar[1:], torch.ones(1, device=device, dtype=dtype)])  # (n,), 1 after the last
        step_betas = 1.0 - abar / abar_previous
        noise_coefficients = step_betas / (1.0 - abar).sqrt()
        mean_scales = (1.0 - step_betas).rsqrt()
        posterior_stds = (step_betas * (1.0 - abar_previous) / (1.0 - abar)).sqrt()

        shape = (batch, self.code_dim, self.grid[0], self.grid[1])
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        last = timesteps.shape[0] - 1
        for index in range(timesteps.shape[0]):
            step = timesteps[index].expand(batch)  # (B,)
            predicted_noise = self.unet(x, step, slots).to(dtype)
            x = mean_scales[index] * (x - noise_coefficients[index] * predicted_noise)
            if index < last:
                x = x + posterior_stds[index] * torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return x.permute(0, 2, 3, 1)  # (B, D, h, w) -> (B, h, w, D)
