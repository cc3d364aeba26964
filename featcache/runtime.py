"""Device selection, seeding and mixed precision shared by every stage that runs a model."""

from __future__ import annotations

import random
from contextlib import nullcontext
from typing import ContextManager

import numpy as np
import torch

from featcache.errors import FeatcacheError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a one-line error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatcacheError(f"--device {device}: no CUDA device is available here; use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise FeatcacheError(f"--device {device!r}: expected auto, cpu or cuda")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) so a run with the same seed repeats on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


#: Second SeedSequence entry of the model-noise stream, so it never replays the stream that initialised the weights.
NOISE_STREAM = 0x6E6F697365  # "noise"


def noise_generator(seed: int, device: torch.device) -> torch.Generator:
    """A run's own generator of model noise (slot noise, diffusion timesteps and noise) on ``device``.

    Drawing the noise from it instead of the global generator makes the noise a function of the run's seed
    and step alone: resumable from the generator's saved state, and identical when seeds train fused.
    """
    entropy = np.random.SeedSequence([seed, NOISE_STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(entropy))


def autocast(device: torch.device, enabled: bool = True) -> ContextManager[object]:
    """bf16 autocast on CUDA (no loss scaling needed); full precision on CPU."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
