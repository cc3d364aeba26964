"""VVO-Dfz decoder: a conditional diffusion model on the quantized code map, conditioned on slots.

Training is DDPM with epsilon-prediction: noise the (B, D, h, w) code map at a random timestep and let a
small UNet, whose spatial tokens cross-attend to the slots, predict the noise. The only way the UNet can
beat the unconditional optimum is by reading the slots, which is what drives the aggregator.
The noise schedule is Stable Diffusion's "scaled linear" one (linear in sqrt(beta)).

Two UNets (``decoder.dfz.unet``): featcache's small one (``ConditionalUNet``) and ``sd`` (``SDUNet``), the
computation of Stable Diffusion's conditional UNet that the official VVO-Dfz uses, so official weights load
through :mod:`featcache.interop.vvo_dfz`.
"""

from __future__ import annotations

import math
from typing import Literal

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
    # -log(P) * i / half in this order: the float32 rounding of Stable Diffusion's embedding.
    exponents = -math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half
    frequencies = torch.exp(exponents)  # (half,)
    angles = timesteps.to(torch.float32)[:, None] * frequencies[None, :]  # (B, half)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class ResBlock(nn.Module):
    """Two GroupNorm-SiLU-Conv3x3 layers with the timestep embedding added in between, plus a skip.

    ``groups`` None picks at most 8 groups per norm (featcache's UNet); dropout sits before the second conv.
    """

    def __init__(
        self, in_channels: int, out_channels: int, embedding_dim: int, groups: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm_in = nn.GroupNorm(groups or _norm_groups(in_channels), in_channels)
        self.conv_in = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_projection = nn.Linear(embedding_dim, out_channels)
        self.norm_out = nn.GroupNorm(groups or _norm_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv_out = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.skip = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        hidden = self.conv_in(F.silu(self.norm_in(x)))
        hidden = hidden + self.time_projection(F.silu(time_embedding))[:, :, None, None]
        hidden = self.conv_out(self.dropout(F.silu(self.norm_out(hidden))))
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
            self.down_blocks.append(ResBlock(current, channels, embedding_dim, dropout=config.dropout))
            self.down_attention.append(SlotCrossAttention(channels, slot_dim, config.heads))
            is_last = level == self.levels - 1
            self.downsamples.append(
                nn.Identity() if is_last else nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
            )
            current = channels

        self.middle_block = ResBlock(current, current, embedding_dim, dropout=config.dropout)
        self.middle_attention = SlotCrossAttention(current, slot_dim, config.heads)

        # Up path in reverse level order: index 0 is the deepest level.
        self.up_blocks = nn.ModuleList()
        self.up_attention = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(self.levels)):
            channels = level_channels[level]
            self.up_blocks.append(ResBlock(current + channels, channels, embedding_dim, dropout=config.dropout))
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


class Attention(nn.Module):
    """Multi-head attention of tokens (B, N, dim) over a context (B, M, context_dim); bias only on the output."""

    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(context_dim, dim, bias=False)
        self.value = nn.Linear(context_dim, dim, bias=False)
        self.output = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, dim) -> (B, heads, L, dim / heads)
            return x.view(batch, x.shape[1], self.heads, dim // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.query(tokens)), split(self.key(context)), split(self.value(context))
        )  # (B, heads, N, dim / heads)
        return self.output(attended.transpose(1, 2).reshape(batch, length, dim))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm layer on spatial tokens: self-attention, cross-attention to the slots, GEGLU feed-forward."""

    def __init__(self, dim: int, slot_dim: int, heads: int) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attention = Attention(dim, slot_dim, heads)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 8 * dim)  # value and gate halves, 4 * dim each
        self.ff_out = nn.Linear(4 * dim, dim)

    def forward(self, tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        normed = self.norm_self(tokens)
        tokens = tokens + self.self_attention(normed, normed)
        tokens = tokens + self.cross_attention(self.norm_cross(tokens), slots)
        value, gate = self.ff_in(self.norm_ff(tokens)).chunk(2, dim=-1)
        return tokens + self.ff_out(value * F.gelu(gate))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 conv in, transformer layers over the h*w tokens, 1x1 conv out, residual on the map."""

    def __init__(self, channels: int, slot_dim: int, heads: int, groups: int, layers: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.layers = nn.ModuleList(TransformerLayer(channels, slot_dim, heads) for _ in range(layers))
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, h*w, C)
        for layer in self.layers:
            tokens = layer(tokens, slots)
        return x + self.proj_out(tokens.transpose(1, 2).reshape(batch, channels, height, width))


class SDStage(nn.Module):
    """One level of the ``sd`` UNet: ResBlocks reading ``inputs`` channels, each followed by a spatial transformer
    when ``attends``, then an optional 3x3 resampling conv (stride 2 going down; after a nearest upsampling going up).
    """

    def __init__(
        self,
        config: DiffusionDecoderConfig,
        inputs: list[int],
        channels: int,
        embedding_dim: int,
        slot_dim: int,
        attends: bool,
        resample: Literal["down", "up"] | None,
    ) -> None:
        super().__init__()
        groups = config.sd_norm_groups
        self.resnets = nn.ModuleList(
            ResBlock(width, channels, embedding_dim, groups, config.dropout) for width in inputs
        )
        self.transformers = nn.ModuleList(
            SpatialTransformer(channels, slot_dim, config.heads, groups, config.sd_transformer_layers)
            for _ in (inputs if attends else [])
        )
        stride = 2 if resample == "down" else 1
        self.resample = None if resample is None else nn.Conv2d(channels, channels, 3, stride=stride, padding=1)

    def layer(
        self, index: int, hidden: torch.Tensor, time_embedding: torch.Tensor, slots: torch.Tensor
    ) -> torch.Tensor:
        """ResBlock ``index`` and its transformer, if the level has them."""
        hidden = self.resnets[index](hidden, time_embedding)
        return self.transformers[index](hidden, slots) if len(self.transformers) else hidden


class SDUNet(nn.Module):
    """Stable Diffusion's conditional UNet, the backbone of the official VVO-Dfz; (x_t, t, slots) -> noise.

    Down level ``i`` (width ``sd_channels[i]``): ``sd_layers`` ResBlocks (+ transformers) and, except at the
    last level, a stride-2 conv; the input conv's output and every one of these outputs is kept as a skip.
    Middle: ResBlock, transformer, ResBlock. Up levels, deepest first: ``sd_layers + 1`` ResBlocks, each on the
    concatenation with the latest unread skip, and, except at the last, a nearest upsampling to the next skip's
    size (x2 when the sides divide) and a conv. Time: sinusoid of width ``sd_channels[0]``, MLP to 4x that.
    """

    def __init__(self, config: DiffusionDecoderConfig, slot_dim: int, code_dim: int) -> None:
        super().__init__()
        widths = config.sd_channels
        base, last = widths[0], len(widths) - 1
        self.frequency_dim = base
        embedding_dim = 4 * base
        self.time_mlp = nn.Sequential(
            nn.Linear(base, embedding_dim), nn.SiLU(), nn.Linear(embedding_dim, embedding_dim)
        )
        self.input_conv = nn.Conv2d(code_dim, base, kernel_size=3, padding=1)

        skips = [base]  # channels of the skips, in the order the down path makes them
        current = base
        self.down_stages = nn.ModuleList()
        for level, channels in enumerate(widths):
            inputs = [current] + [channels] * (config.sd_layers - 1)
            resample = "down" if level < last else None
            self.down_stages.append(
                SDStage(config, inputs, channels, embedding_dim, slot_dim, config.sd_cross_attention[level], resample)
            )
            skips += [channels] * (config.sd_layers + (level < last))
            current = channels

        groups = config.sd_norm_groups
        self.middle_in = ResBlock(current, current, embedding_dim, groups, config.dropout)
        self.middle_attention = SpatialTransformer(
            current, slot_dim, config.heads, groups, config.sd_transformer_layers
        )
        self.middle_out = ResBlock(current, current, embedding_dim, groups, config.dropout)

        self.up_stages = nn.ModuleList()
        for level in reversed(range(len(widths))):
            inputs = []
            for _ in range(config.sd_layers + 1):
                inputs.append(current + skips.pop())
                current = widths[level]
            resample = "up" if level > 0 else None
            self.up_stages.append(
                SDStage(config, inputs, current, embedding_dim, slot_dim, config.sd_cross_attention[level], resample)
            )

        self.output_norm = nn.GroupNorm(groups, base)
        self.output_conv = nn.Conv2d(base, code_dim, kernel_size=3, padding=1)

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        time_embedding = self.time_mlp(timestep_embedding(timesteps, self.frequency_dim).to(x_t.dtype))
        hidden = self.input_conv(x_t)
        skips = [hidden]
        for stage in self.down_stages:
            for index in range(len(stage.resnets)):
                hidden = stage.layer(index, hidden, time_embedding, slots)
                skips.append(hidden)
            if stage.resample is not None:
                hidden = stage.resample(hidden)
                skips.append(hidden)
        hidden = self.middle_in(hidden, time_embedding)
        hidden = self.middle_out(self.middle_attention(hidden, slots), time_embedding)
        for stage in self.up_stages:
            for index in range(len(stage.resnets)):
                hidden = torch.cat([hidden, skips.pop()], dim=1)  # (B, C + C_skip, h_l, w_l)
                hidden = stage.layer(index, hidden, time_embedding, slots)
            if stage.resample is not None:
                hidden = stage.resample(F.interpolate(hidden, size=skips[-1].shape[-2:], mode="nearest"))
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
        if config.unet == "featcache" and any(side % factor != 0 for side in grid):
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

        self.unet: nn.Module = (
            SDUNet(config, slot_dim, code_dim) if config.unet == "sd" else ConditionalUNet(config, slot_dim, code_dim)
        )

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
        # (B, h, w, D) -> (B, D, h, w), made contiguous: the permuted view is channels-last, a layout the convs would
        # carry through the UNet, copying every conv weight into it on each call (a fifth of a CPU training step).
        x0 = codes.permute(0, 3, 1, 2).to(self.sqrt_alphas_cumprod.dtype).contiguous()
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
