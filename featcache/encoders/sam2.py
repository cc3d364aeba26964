"""SAM2's image encoder (timm Hiera trunk + SAM2-style FPN neck) as a frozen encoder of its stride-16 level.

timm's hub copies of the SAM2 trunks hold no neck, so ``--weights hub`` downloads the official SAM2
release instead (trunk and neck together); a trunk-only checkpoint is refused rather than pairing real
trunk weights with a random neck.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models.hieradet_sam2 import HieraDet
from timm.models.hieradet_sam2 import checkpoint_filter_fn as hiera_checkpoint_filter_fn
from torch import nn

from featcache.encoders.base import EncoderSpec, FrozenEncoder, WeightInfo
from featcache.encoders.checks import check_images
from featcache.encoders.weights import (
    checkpoint_path,
    convert_checkpoint,
    from_hub,
    load_strict,
    read_checkpoint,
    state_dict_sha256,
    strip_prefix,
    weights_source,
)
from featcache.errors import WeightsError
from featcache.provenance import file_sha256

#: Stride of the trunk's coarsest level: input sizes must be multiples of it so that the upsampled
#: stride-32 map lines up with the stride-16 map (and the windowed position embedding tiles evenly).
COARSEST_STRIDE = 32

#: Official SAM2 releases on the Hugging Face hub (repository, file) per timm trunk.
OFFICIAL_CHECKPOINTS = {"sam2_hiera_tiny": ("facebook/sam2-hiera-tiny", "sam2_hiera_tiny.pt")}

#: Prefixes under which checkpoints keep the image encoder (official SAM2: ``image_encoder.``).
_IMAGE_ENCODER_PREFIXES = ("image_encoder.", "module.")


class FpnNeck(nn.Module):
    """SAM2's FpnNeck for one output level: 1x1 lateral convs plus nearest top-down fusion.

    ``convs`` follow SAM2's order, coarsest level first (``convs[0]`` acts on the stride-32 map), so official
    ``image_encoder.neck.convs.<i>.conv.*`` weights load unchanged. Top-down fusion happens only on
    ``top_down_levels`` (SAM2's ``fpn_top_down_levels=[2, 3]``); levels are indexed finest first.
    """

    def __init__(
        self,
        level_channels: Sequence[int],
        dim: int = 256,
        top_down_levels: Sequence[int] = (2, 3),
        output_level: int = 2,
    ) -> None:
        super().__init__()
        self.top_down_levels = tuple(top_down_levels)
        self.output_level = output_level
        self.convs = nn.ModuleList(
            nn.Sequential(OrderedDict(conv=nn.Conv2d(channels, dim, kernel_size=1))) for channels in reversed(level_channels)
        )

    def forward(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Trunk levels, finest first, each (B, C_l, H_l, W_l) -> the output level (B, dim, H_out, W_out)."""
        last = len(self.convs) - 1
        fused: torch.Tensor | None = None
        for level in range(last, self.output_level - 1, -1):  # coarsest to the output level
            lateral = self.convs[last - level](levels[level])
            if fused is not None and level in self.top_down_levels:
                # SAM2 upsamples in float32 (also under autocast) and sums with the lateral map
                top_down = F.interpolate(fused.float(), scale_factor=2.0, mode="nearest")
                fused = lateral + top_down
            else:
                fused = lateral
        assert fused is not None
        return fused


class Sam2Encoder(FrozenEncoder):
    """timm Hiera trunk -> FPN neck -> stride-16 map (B, h, w, 256)."""

    def __init__(self, spec: EncoderSpec, resolution: int, trunk: HieraDet) -> None:
        super().__init__()
        self.spec = spec
        self.resolution = resolution
        trunk.head = nn.Identity()  # the classifier head (and its norm) is unused and absent from SAM2 releases
        self.trunk = trunk
        level_channels = [info["num_chs"] for info in trunk.feature_info]  # finest first: 96/192/384/768 for tiny
        self.neck = FpnNeck(level_channels, dim=spec.channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, R, R) -> stride-16 FPN features (B, R/16, R/16, 256), float32."""
        check_images(images, self.resolution, self.spec.name)
        # strides 4, 8, 16, 32: (B, C_l, R / s_l, R / s_l)
        levels = self.trunk.forward_intermediates(images, intermediates_only=True, output_fmt="NCHW")
        features = self.neck(levels)  # (B, 256, R/16, R/16)
        return features.permute(0, 2, 3, 1).float()  # (B, R/16, R/16, 256)


def build_sam2_encoder(spec: EncoderSpec, resolution: int, weights: str, seed: int) -> Sam2Encoder:
    """Create trunk + neck with hub (official SAM2 release), file or random weights."""
    source = weights_source(weights)
    if source == "random":
        with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG stream
            torch.manual_seed(seed)
            encoder = _build(spec, resolution)
        encoder.weights = WeightInfo("random", f"seed={seed}", state_dict_sha256(encoder))
        return encoder
    if source == "hub":
        repository, filename = OFFICIAL_CHECKPOINTS[spec.timm_name]
        path = Path(from_hub(f"{spec.timm_name} ({repository}/{filename})", lambda: _download(repository, filename)))
        location = f"hf://{repository}/{filename}"
        notes = {"timm_trunk": f"{spec.timm_name}.{spec.hub_tag}"}
    else:
        path = checkpoint_path(weights)
        location, notes = str(path), {}
    state_dict = read_checkpoint(path)  # read (and fail) before building the model
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        encoder = _build(spec, resolution, weight_init="skip", fix_init=False)
    load_sam2_state_dict(encoder, state_dict, path)
    encoder.weights = WeightInfo(source, location, state_dict_sha256(encoder), file_sha256=file_sha256(path), notes=notes)
    return encoder


def _build(spec: EncoderSpec, resolution: int, **trunk_args: object) -> Sam2Encoder:
    """Trunk and neck on the current default device, initialised as timm / torch do unless told to skip."""
    return Sam2Encoder(spec, resolution, timm.create_model(spec.timm_name, pretrained=False, num_classes=0, **trunk_args))


def _download(repository: str, filename: str) -> str:
    """Fetch one file from the Hugging Face hub (or its local cache); returns the local path."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repository, filename)


def load_sam2_state_dict(encoder: Sam2Encoder, raw_state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load an official SAM2 checkpoint (``{"model": {"image_encoder.trunk.*", "image_encoder.neck.*"}}``)
    or a featcache ``Sam2Encoder`` state dict (``trunk.*``, ``neck.*``), read from ``path``, into ``encoder``.

    Trunk keys go through timm's Hiera filter (``mlp.layers.0/1`` -> ``mlp.fc1/fc2``); the rest of the SAM2
    model (mask decoder, memory modules) is ignored.
    """
    spec = encoder.spec
    state_dict = strip_prefix(raw_state_dict, _IMAGE_ENCODER_PREFIXES)
    trunk = {key[len("trunk."):]: value for key, value in state_dict.items() if key.startswith("trunk.")}
    neck = {key: value for key, value in state_dict.items() if key.startswith("neck.")}
    others = {key: value for key, value in state_dict.items() if not key.startswith(("trunk.", "neck."))}
    if not neck and "pos_embed_window" in others:  # a timm Hiera state dict: real trunk, no neck
        raise WeightsError(
            f"checkpoint {path} holds a bare Hiera trunk without the FPN neck; {spec.name} needs an official SAM2 "
            "checkpoint (image_encoder.trunk.* and image_encoder.neck.* keys, e.g. sam2_hiera_tiny.pt)"
        )
    trunk = convert_checkpoint(lambda raw: hiera_checkpoint_filter_fn(raw, encoder.trunk), trunk, path, spec.name)
    trunk = {key: value for key, value in trunk.items() if not key.startswith("head.")}  # unused classifier head
    combined = {f"trunk.{key}": value for key, value in trunk.items()} | neck | others
    load_strict(encoder, combined, path, f"{spec.name} ({spec.timm_name} + FPN neck)")
