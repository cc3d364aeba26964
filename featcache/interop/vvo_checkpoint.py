"""Official VVO checkpoints (Genera1Z/VQ-VFM-OCL) read into featcache model configs and state dicts.

The official trainer saves ``ModelWrap.state_dict()`` with ``torch.save``: a flat dict of tensors whose keys start
with ``m.`` and then the model's parts, ``encode_backbone`` (the VFM, which featcache replaces by its store),
``encode_project``, ``initializ``, ``aggregat``, ``mediat`` (the VQ model) and ``decode``. A VQ pre-training
checkpoint has ``mediat`` only (with its image decoder); an OCL checkpoint (VVO-Tfd, -Mlp, -Dfz) has every part
but no ``mediat.decode``; VVO's DINOSAUR baseline has no ``mediat``.

The sizes come from the weight shapes; what the weights cannot tell (attention heads, slot-attention iterations,
the straight-through step, diffusion settings) takes the official image configs' values, which the caller can
override. Each part goes through its mapping in this package, whose parity tests pin it to the official module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from featcache.config import deep_update, merge
from featcache.errors import FeatcacheError
from featcache.interop.vvo_dfz import VVO_DFZ_OPTIONS, map_vvo_dfz
from featcache.interop.vvo_mlp_decoder import VVO_MLP_OPTIONS, map_mlp_decoder
from featcache.interop.vvo_slots import map_projection, map_slot_attention, projection_kind, vvo_aggregator_options
from featcache.interop.vvo_tfd import VVO_TFD_OPTIONS, map_vvo_tfd
from featcache.interop.vvo_vq import map_decoder, map_quantizer, official_decoder_config, official_quantizer_config
from featcache.ocl.config import OCLModelConfig
from featcache.ocl.model import OCLModel
from featcache.quantize.config import QuantizerConfig, VQDecoderConfig

CheckpointKind = Literal["vq", "tfd", "mlp", "dinosaur", "dfz"]

#: What the official image configs (config-vqdino/vqdino_*_r-coco.py) use where the weights cannot tell:
#: Slot Attention iterations and trunc_bp "bi-level", FFN dropout 0.01, projection dropout 0.01 (Tfd/Dfz),
#: 4 decoder heads (Tfd). Dfz's settings are in ``VVO_DFZ_OPTIONS``.
OFFICIAL_ITERATIONS = 3
OFFICIAL_TFD_HEADS = 4
OFFICIAL_DROPOUT = 0.01


@dataclass(frozen=True)
class VVOCheckpoint:
    """An official checkpoint: its file, what model it holds, and its tensors without the ``m.`` prefix."""

    path: Path
    kind: CheckpointKind
    state: dict[str, torch.Tensor]

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix.`` with the prefix removed (keys relative to that official module)."""
        head = prefix + "."
        return {key[len(head) :]: value for key, value in self.state.items() if key.startswith(head)}


def detect_kind(state: dict[str, torch.Tensor], path: Path) -> CheckpointKind:
    """Which official model a state dict (without ``m.``) holds; fails naming its top-level parts."""
    parts = sorted({key.split(".", 1)[0] for key in state})
    has = set(parts)
    if "aggregat" not in has:
        if "mediat" in has:
            return "vq"
    elif "bos" in {key.split(".")[1] for key in state if key.startswith("decode.")}:
        return "tfd" if "mediat" in has else _unsupported(path, parts, "SLATE/STEVE (a dVAE on pixels)")
    elif "decode.backbone.conv_in.weight" in state:
        return "dfz" if "mediat" in has else _unsupported(path, parts, "SlotDiffusion (a VQ-VAE on pixels)")
    elif "decode.posit_embed.pe" in state:
        return "mlp" if "mediat" in has else "dinosaur"
    return _unsupported(path, parts, "an unknown model")


def _unsupported(path: Path, parts: list[str], what: str) -> CheckpointKind:
    raise FeatcacheError(
        f"{path}: not a VVO checkpoint featcache can import ({what}; parts {', '.join(parts)}); "
        "expected VQ pre-training, VVO-Tfd, VVO-Mlp, VVO-Dfz or VVO's DINOSAUR"
    )


def read_vvo_checkpoint(path: str | Path) -> VVOCheckpoint:
    """Load an official ``.pth`` (tensors only, ``weights_only``) and tell what it holds."""
    path = Path(path)
    if not path.is_file():
        raise FeatcacheError(f"VVO checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for files that are not checkpoints
        raise FeatcacheError(f"{path}: cannot read as a torch checkpoint of tensors ({type(error).__name__}: {error})") from error
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise FeatcacheError(f"{path}: expected a state dict (keys -> tensors) saved by the official ModelWrap.save")
    state = {key[2:] if key.startswith("m.") else key: value for key, value in loaded.items()}
    return VVOCheckpoint(path=path, kind=detect_kind(state, path), state=state)


def _square_grid(positions: int, what: str) -> tuple[int, int]:
    side = math.isqrt(positions)
    if side * side != positions:
        raise FeatcacheError(f"{what} has {positions} positions, not a square grid; pass the grid explicitly")
    return side, side


def checkpoint_grid(checkpoint: VVOCheckpoint, default: tuple[int, int]) -> tuple[int, int]:
    """The patch grid: the decoder's position embedding for Tfd/Mlp; ``default`` where the weights hold none."""
    position = checkpoint.state.get("decode.posit_embed.pe")
    if position is None:
        return default
    return _square_grid(int(position.shape[1]), "the decoder's position embedding")


def feature_channels(checkpoint: VVOCheckpoint) -> int:
    """Channels C of the VFM features the checkpoint reads."""
    if checkpoint.kind == "vq":
        return int(checkpoint.state["mediat.encode.0.0.weight"].shape[1])
    project = checkpoint.part("encode_project")
    first = min(int(key.split(".")[0]) for key in project)
    return int(project[f"{first}.weight"].shape[-1])


def quantizer_parts(checkpoint: VVOCheckpoint, grid: tuple[int, int]) -> tuple[QuantizerConfig, VQDecoderConfig, dict[str, torch.Tensor], torch.Tensor]:
    """(quantizer config, VQ decoder config, VQModel state dict, projected codebook (K, D)) of ``mediat``.

    OCL checkpoints carry no VQ decoder: the VQ model then has none (it tokenizes, it does not train).
    """
    mediat = checkpoint.part("mediat")
    if not mediat:
        raise FeatcacheError(f"{checkpoint.path} holds no quantizer (mediat): VVO's DINOSAUR reads features only")
    quantizer_state, codebook = map_quantizer(mediat)
    state = {f"quantizer.{key}": value for key, value in quantizer_state.items()}
    if any(key.startswith("decode.") for key in mediat):
        if grid[0] != grid[1]:
            raise FeatcacheError(f"the official VQ decoder needs a square grid, got {grid}")
        decoder_config = official_decoder_config(mediat, grid[0])
        state |= {f"decoder.{key}": value for key, value in map_decoder(mediat).items()}
    else:
        decoder_config = VQDecoderConfig(architecture="none")
    return official_quantizer_config(mediat), decoder_config, state, codebook


def ocl_model_options(checkpoint: VVOCheckpoint) -> dict[str, Any]:
    """The ``model`` config (nested plain dict) that reproduces the checkpoint's projection, aggregator and decoder."""
    initializer, aggregator = checkpoint.part("initializ"), checkpoint.part("aggregat")
    _, num_slots, slot_dim = initializer["mean"].shape  # NormalSeparat, as every official VVO config
    ffn_first = min(int(key.split(".")[1]) for key in aggregator if key.startswith("ffn."))
    aggregator_options = vvo_aggregator_options(
        {
            "num_iter": OFFICIAL_ITERATIONS,
            "embed_dim": int(slot_dim),
            "ffn_dim": int(aggregator[f"ffn.{ffn_first}.weight"].shape[0]),
            "dropout": OFFICIAL_DROPOUT,
            "trunc_bp": "bi-level",
        }
    )
    project = checkpoint.part("encode_project")
    kind = projection_kind(project)
    first = min(int(key.split(".")[0]) for key in project)
    return {
        "aggregator": {"name": "bo_qsa", "num_slots": int(num_slots), **aggregator_options},
        "decoder": decoder_options(checkpoint),
        "projection": kind,
        "projection_hidden": int(project[f"{first + (1 if kind == 'layernorm_mlp' else 0)}.weight"].shape[0]),
        "projection_dropout": 0.0 if kind == "layernorm_mlp" else OFFICIAL_DROPOUT,
        "projection_activation": "gelu",
        "projection_bias_init": "zero",
        "mask_source": "decoder" if checkpoint.kind in ("mlp", "dinosaur") else "attention",
    }


def ocl_model_config(checkpoint: VVOCheckpoint, overrides: dict[str, Any] | None = None) -> OCLModelConfig:
    """``ocl_model_options`` as a validated config, with ``overrides`` (nested) for what the weights cannot tell."""
    return merge(OCLModelConfig(), deep_update(ocl_model_options(checkpoint), overrides or {}))


def decoder_options(checkpoint: VVOCheckpoint) -> dict[str, Any]:
    """``model.decoder`` for the checkpoint's decoder: sizes from its weights, behaviour from the official options."""
    decode = checkpoint.part("decode")
    if checkpoint.kind == "tfd":
        layers = {int(key.split(".")[2]) for key in decode if key.startswith("backbone.layers.")}
        tfd = {
            "layers": len(layers),
            "dim": int(decode["bos"].shape[-1]),
            "heads": OFFICIAL_TFD_HEADS,
            "feedforward": int(decode["backbone.layers.0.linear1.weight"].shape[0]),
            **VVO_TFD_OPTIONS,
        }
        return {"name": "tfd", "target": "tokens", "tfd": tfd}
    if checkpoint.kind in ("mlp", "dinosaur"):
        linears = sorted(int(key.split(".")[1]) for key in decode if key.startswith("backbone.") and key.endswith(".weight"))
        mlp = {"hidden": int(decode[f"backbone.{linears[0]}.weight"].shape[0]), "layers": len(linears) - 1, **VVO_MLP_OPTIONS}
        return {"name": "mlp", "target": "codes+features" if checkpoint.kind == "mlp" else "features", "mlp": mlp}
    blocks = sorted({int(key.split(".")[2]) for key in decode if key.startswith("backbone.down_blocks.")})
    transformer_layers = {
        int(key.split(".")[5]) for key in decode if key.startswith("backbone.mid_block.attentions.0.transformer_blocks.")
    }
    dfz = {
        **VVO_DFZ_OPTIONS,
        "sd_channels": [int(decode[f"backbone.down_blocks.{b}.resnets.0.conv1.weight"].shape[0]) for b in blocks],
        "sd_cross_attention": [any(key.startswith(f"backbone.down_blocks.{b}.attentions.") for key in decode) for b in blocks],
        "sd_layers": len({int(key.split(".")[4]) for key in decode if key.startswith("backbone.down_blocks.0.resnets.")}),
        "sd_transformer_layers": len(transformer_layers),
    }
    return {"name": "dfz", "target": "codes", "dfz": dfz}


def ocl_state_dict(checkpoint: VVOCheckpoint, model: OCLModel) -> dict[str, torch.Tensor]:
    """The checkpoint's projection, aggregator and decoder weights as ``model``'s state dict (strict)."""
    state = {f"projection.{k}": v for k, v in map_projection(checkpoint.part("encode_project")).items()}
    aggregator = map_slot_attention(checkpoint.part("aggregat"), checkpoint.part("initializ"))
    state |= {f"aggregator.{k}": v for k, v in aggregator.items()}
    decode = checkpoint.part("decode")
    if checkpoint.kind == "tfd":
        decoder = map_vvo_tfd(decode)
    elif checkpoint.kind in ("mlp", "dinosaur"):
        decoder = map_mlp_decoder(decode)
    else:
        decoder = map_vvo_dfz(decode, model.decoder)  # type: ignore[arg-type]
    state |= {f"decoder.{k}": v for k, v in decoder.items()}
    if model.codebook is not None:
        state["codebook"] = model.codebook
    return {key: value.detach().float().clone() if value.is_floating_point() else value.clone() for key, value in state.items()}
