"""Forward + backward time of featcache's VVO modules against the official ones (Genera1Z/VQ-VFM-OCL), side by side.

Usage::

    python benchmarks/parity_speed.py --official /path/to/VQ-VFM-OCL [--device cpu|cuda] [--repeats N]
        [--warmup N] [--batch 32] [--module-batch dfz=8] [--modules slots,tfd,...] [--threads N]
        [--target-seconds S] [--json out.json]

The official modules are imported from ``--official`` at run time (its ``object_centric_bench`` package and its
``config-vqdino`` configs); nothing of it is copied here. Each official module is built from the official COCO config
(``vqdino_{tfd,mlp,dfz}_r-coco.py``; ``vqdino-coco-c256.py`` for the quantizer) with an identity backbone, so DINOv2
ViT-S/14 features of a 16 x 16 grid (384 channels) go in, as featcache reads them from its cache. featcache's module
gets the official options and the official weights through ``featcache.interop`` (the ``import-vvo`` mapping).

Per module the script first runs both sides once with the same randomness (slot noise, diffusion noise and timesteps,
Gumbel draws fixed; dropout off) and reports the largest difference of outputs, loss and every gradient, so the
timing compares the same computation. It then times one training step (forward, the official config's loss,
backward; dropout and noise as in training) of each side in one process, alternating which side goes first, and
keeps the best and the median of at least ``--repeats`` rounds after ``--warmup`` rounds (fast modules get more),
as wall time and as this process's CPU time (the steadier measure on a machine shared with other jobs).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # featcache from this checkout

from featcache.decoders import DecoderTargets  # noqa: E402
from featcache.interop.vvo_checkpoint import VVOCheckpoint, detect_kind, ocl_model_config, ocl_state_dict, quantizer_parts  # noqa: E402
from featcache.interop.vvo_dfz import vvo_dfz_key  # noqa: E402
from featcache.interop.vvo_mlp_decoder import map_mlp_decoder  # noqa: E402
from featcache.interop.vvo_slots import map_projection, map_slot_attention  # noqa: E402
from featcache.interop.vvo_tfd import map_vvo_tfd  # noqa: E402
from featcache.interop.vvo_vq import map_quantizer, official_quantizer_config, quantizer_key_map  # noqa: E402
from featcache.ocl import OCLModel  # noqa: E402
from featcache.quantize import VectorQuantizer  # noqa: E402
from featcache.quantize.schedules import gumbel_scale, residual_alpha  # noqa: E402

GRID = (16, 16)
FEATURE_DIM = 384
MODULES = ("slots", "tfd", "mlp", "dfz", "vq", "model")
#: Relative difference (max |diff| / max |reference|) under which both sides count as the same computation.
AGREE = 1e-4
#: Ratio band counted as the machine's noise.
NOISE = 0.10

console = Console(width=None if sys.stdout.isatty() else 160)


# ---------------------------------------------------------------------------------------------------------------
# Official side


def load_official(root: Path) -> SimpleNamespace:
    """The official package (from ``root``): its config reader and module builder, with every module registered."""
    if not (root / "object_centric_bench").is_dir():
        raise SystemExit(f"--official {root}: no object_centric_bench package there (a Genera1Z/VQ-VFM-OCL checkout?)")
    sys.path.insert(0, str(root))
    import object_centric_bench.model  # noqa: F401  registers the modules the configs name
    from object_centric_bench.utils import Config, build_from_config

    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    return SimpleNamespace(root=root, Config=Config, build=build_from_config, commit=commit or "unknown")


def official_model(official: SimpleNamespace, config_name: str, seed: int) -> tuple[nn.Module, Any]:
    """The official model of ``config-vqdino/{config_name}.py`` with an identity backbone (features in).

    The VQ pre-training config's image decoder (pretrained TAESD) becomes an identity: its input, the
    straight-through decoder input, is what the quantizer hands on.
    """
    config = official.Config.fromfile(official.root / "config-vqdino" / f"{config_name}.py")
    spec = copy.deepcopy(config.model)
    spec["encode_backbone"] = dict(type="Identity")
    if spec["mediat"].get("decode") is not None:
        spec["mediat"]["decode"] = dict(type="Identity")
    torch.manual_seed(seed)
    return official.build(spec), config


# ---------------------------------------------------------------------------------------------------------------
# featcache side


def in_memory_checkpoint(model: nn.Module) -> VVOCheckpoint:
    """The official model's state dict as ``import-vvo`` reads it from a checkpoint file."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    path = Path("<official model in memory>")
    return VVOCheckpoint(path=path, kind=detect_kind(state, path), state=state)


def featcache_model(official: nn.Module) -> tuple[OCLModel, VVOCheckpoint]:
    """featcache's OCL model with the official options and weights (``featcache.interop.vvo_checkpoint``)."""
    checkpoint = in_memory_checkpoint(official)
    _, _, _, codebook = quantizer_parts(checkpoint, GRID)
    model = OCLModel(ocl_model_config(checkpoint), FEATURE_DIM, GRID, codebook)
    model.load_state_dict(ocl_state_dict(checkpoint, model), strict=True)
    return model, checkpoint


def part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.``, the prefix removed."""
    head = prefix + "."
    return {key[len(head) :]: value for key, value in state.items() if key.startswith(head)}


# ---------------------------------------------------------------------------------------------------------------
# Checks and timing


@contextmanager
def replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name = value`` inside the block (to fix the official code's random draws)."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextmanager
def no_dropout(*modules: nn.Module) -> Iterator[None]:
    """Every nn.Dropout of ``modules`` at p = 0 inside the block (training mode otherwise)."""
    dropouts = [m for module in modules for m in module.modules() if isinstance(m, nn.Dropout)]
    probabilities = [m.p for m in dropouts]
    for m in dropouts:
        m.p = 0.0
    try:
        yield
    finally:
        for m, p in zip(dropouts, probabilities):
            m.p = p


def backward_both(
    official_module: torch.nn.Module,
    ours: torch.nn.Module,
    slots: torch.Tensor,
    official_step: Callable[[], torch.Tensor],
    featcache_step: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One backward pass of each side from cleared gradients: (official loss, featcache loss, official slot gradient);
    the featcache slot gradient is left in ``slots.grad``."""
    official_module.zero_grad(set_to_none=True)
    ours.zero_grad(set_to_none=True)
    official_loss = official_step()
    official_loss.backward()
    official_grad = slots.grad.clone()
    slots.grad = None
    our_loss = featcache_step()
    our_loss.backward()
    return official_loss, our_loss, official_grad


def difference(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    ours, theirs = ours.detach().float(), theirs.detach().float()
    if ours.shape != theirs.shape:
        raise AssertionError(f"shapes differ: featcache {tuple(ours.shape)}, official {tuple(theirs.shape)}")
    diff = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    return {"max_abs_diff": diff, "max_abs_official": scale, "relative": diff / max(scale, 1e-12)}


def gradient_difference(
    official: dict[str, nn.Parameter], ours: dict[str, nn.Parameter], mapping: Callable[[dict], dict]
) -> dict[str, float]:
    """The worst parameter gradient after mapping the official names onto featcache's.

    Each gradient's max |diff| is taken relative to its own max |official gradient|, floored at 1/1000 of the
    largest official gradient (some gradients are ~0, e.g. of the query norm's bias under the bi-level step).
    """
    grads = {name: p.grad for name, p in official.items() if p.grad is not None}
    mapped = mapping(grads)
    largest = max(grad.abs().max().item() for grad in grads.values())
    worst: dict[str, Any] = {"relative": -1.0}
    count = 0
    for name, parameter in ours.items():
        if not parameter.requires_grad:
            continue
        if parameter.grad is None or name not in mapped:
            raise AssertionError(f"gradient of {name}: featcache {parameter.grad is not None}, official {name in mapped}")
        count += 1
        result = difference(parameter.grad, mapped[name])
        result["relative"] = result["max_abs_diff"] / max(result["max_abs_official"], 1e-3 * largest, 1e-30)
        if result["relative"] > worst["relative"]:
            worst = {**result, "parameter": name}
    return {**worst, "parameters": count, "largest_official": largest}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Case:
    """One row: two training steps (forward + loss) over the same weights, and the check that they agree."""

    key: str
    module: str
    official_class: str
    batch: int
    official_step: Callable[[], torch.Tensor]
    featcache_step: Callable[[], torch.Tensor]
    official_modules: list[nn.Module]
    featcache_modules: list[nn.Module]
    leaves: list[torch.Tensor]
    check: Callable[[], dict[str, Any]]
    note: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def timed(
    step: Callable[[], torch.Tensor], modules: list[nn.Module], leaves: list[torch.Tensor], device: torch.device
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward + loss + backward (gradients cleared before, untimed).

    The CPU time counts only this process's work, so other jobs on a shared machine do not inflate it (with one
    thread it is the step's own compute; with several it also counts threads waiting for each other).
    """
    for module in modules:
        module.zero_grad(set_to_none=True)
    for leaf in leaves:
        leaf.grad = None
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    step().backward()
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(case: Case, repeats: int, warmup: int, target_seconds: float, device: torch.device) -> dict[str, Any]:
    """Alternating rounds (each round times both sides, the first side swapping every round).

    At least ``repeats`` timed rounds; fast modules get more (up to 5x), about ``target_seconds`` per side, since
    the machine's noise weighs more on short steps. The warm-up rounds give the step time that decides this.
    """
    sides = {
        "official": (case.official_step, case.official_modules),
        "featcache": (case.featcache_step, case.featcache_modules),
    }
    times: dict[str, list[tuple[float, float]]] = {"official": [], "featcache": []}
    rounds = repeats
    round_index = 0
    while round_index < warmup + rounds:
        order = ("official", "featcache") if round_index % 2 == 0 else ("featcache", "official")
        for side in order:
            step, modules = sides[side]
            seconds = timed(step, modules, case.leaves, device)
            if round_index >= warmup:
                times[side].append(seconds)
            elif round_index == warmup - 1:
                rounds = max(rounds, min(5 * repeats, math.ceil(target_seconds / max(seconds[0], 1e-3))))
        round_index += 1
    summary: dict[str, Any] = {"rounds": rounds}
    for side, values in times.items():
        wall = [1e3 * value[0] for value in values]
        cpu = [1e3 * value[1] for value in values]
        summary[side] = {
            "best_ms": min(wall), "median_ms": statistics.median(wall), "all_ms": wall,
            "best_cpu_ms": min(cpu), "median_cpu_ms": statistics.median(cpu), "all_cpu_ms": cpu,
        }
    for kind in ("best_ms", "median_ms", "best_cpu_ms", "median_cpu_ms"):
        summary[f"ratio_{kind.removesuffix('_ms')}"] = summary["featcache"][kind] / summary["official"][kind]
    return summary


# ---------------------------------------------------------------------------------------------------------------
# The cases


def features(batch: int, device: torch.device, seed: int) -> torch.Tensor:
    """(B, h, w, C) features as featcache's cache holds them (float32 here)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *GRID, FEATURE_DIM, generator=generator).to(device)


def tokens_of(batch: int, codes: int, device: torch.device, seed: int) -> torch.Tensor:
    """(B, h, w) random token indices."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, codes, (batch, *GRID), generator=generator).to(device)


def slot_inputs(batch: int, model: OCLModel, device: torch.device, seed: int) -> torch.Tensor:
    """(B, S, D) slots that carry gradients, as the aggregator hands them to a decoder."""
    generator = torch.Generator().manual_seed(seed + 2)
    aggregator = model.config.aggregator
    slots = torch.randn(batch, aggregator.num_slots, aggregator.slot_dim, generator=generator)
    return slots.to(device).requires_grad_(True)


def case_slots(official: SimpleNamespace, batch: int, device: torch.device, seed: int) -> Case:
    """VVO-Tfd's feature projection + NormalSeparat + SlotAttention (trunc_bp bi-level), a fixed loss on the slots."""
    model, _ = official_model(official, "vqdino_tfd_r-coco", seed)
    ours, _ = featcache_model(model)
    project, initializ, aggregat = (m.to(device).train() for m in (model.encode_project, model.initializ, model.aggregat))
    projection, aggregator = ours.projection.to(device).train(), ours.aggregator.to(device).train()
    flat = features(batch, device, seed).flatten(1, 2)  # (B, N, C)
    generator = torch.Generator().manual_seed(seed + 3)
    weights = torch.randn(batch, aggregator.num_slots, aggregator.slot_dim, generator=generator).to(device)
    last: dict[str, Any] = {}  # each side's latest outputs, for the check

    def official_step(noise: torch.Tensor | None = None) -> torch.Tensor:
        encode = project(flat)
        if noise is None:
            query = initializ(batch)
        else:
            with replaced(torch, "randn_like", lambda tensor, **_: noise.clone()):
                query = initializ(batch)
        last["official"] = aggregat(encode, query)  # slots (B, S, D), attention (B, S, N)
        return (last["official"][0] * weights).mean()

    def featcache_step(noise: torch.Tensor | None = None) -> torch.Tensor:
        last["featcache"] = aggregator(projection(flat), None if noise is None else {"slots": noise})
        return (last["featcache"].slots * weights).mean()

    official_parts = {"encode_project": project, "initializ": initializ, "aggregat": aggregat}
    official_params = {f"{name}.{key}": p for name, module in official_parts.items() for key, p in module.named_parameters()}
    our_params = {f"projection.{k}": p for k, p in projection.named_parameters()} | {
        f"aggregator.{k}": p for k, p in aggregator.named_parameters()
    }

    def mapping(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mapped = {f"projection.{k}": v for k, v in map_projection(part(grads, "encode_project")).items()}
        slots = map_slot_attention(part(grads, "aggregat"), part(grads, "initializ"))
        return mapped | {f"aggregator.{k}": v for k, v in slots.items()}

    def check() -> dict[str, Any]:
        noise = torch.randn(batch, aggregator.num_slots, aggregator.slot_dim, generator=torch.Generator().manual_seed(seed + 4)).to(device)
        with no_dropout(project, aggregat, projection, aggregator):
            for module in (project, initializ, aggregat, projection, aggregator):
                module.zero_grad(set_to_none=True)
            official_loss, our_loss = official_step(noise), featcache_step(noise)
            official_loss.backward()
            our_loss.backward()
        slots, attention = last["official"]
        return {
            "slots": difference(last["featcache"].slots, slots),
            "attention": difference(last["featcache"].attention, attention),
            "loss": difference(our_loss, official_loss),
            "gradients": gradient_difference(official_params, our_params, mapping),
        }

    return Case(
        "slots", "projection + Slot Attention (NormalSeparat, bi-level)", "ocl.py SlotAttention, NormalSeparat", batch,
        official_step, featcache_step, [project, initializ, aggregat], [projection, aggregator], [], check,
        "loss: a fixed random weighting of the slots; dropout 0.01 and query noise as in training",
    )


def decoder_inputs(ours: OCLModel, batch: int, device: torch.device, seed: int) -> SimpleNamespace:
    """Tokens, their code vectors in both layouts, features and slots for a decoder case."""
    codebook = ours.codebook.to(device)  # (K, D): the official mediat's projected codes
    tokens = tokens_of(batch, codebook.shape[0], device, seed)
    codes = codebook[tokens]  # (B, h, w, D), featcache's decoder_targets
    return SimpleNamespace(
        tokens=tokens,
        codes=codes,
        quant=codes.permute(0, 3, 1, 2),  # (B, D, h, w) as the official VQVAEZ returns it (a permuted view)
        features=features(batch, device, seed),  # (B, h, w, C)
        slots=slot_inputs(batch, ours, device, seed),
    )


def case_tfd(official: SimpleNamespace, batch: int, device: torch.device, seed: int) -> Case:
    """ARTransformerDecoder (4 layers, 4096-code readout) with cross-entropy, as VVOTfd.forward_decode + loss_fn."""
    model, _ = official_model(official, "vqdino_tfd_r-coco", seed)
    ours, _ = featcache_model(model)
    model.decode.to(device).train()
    decoder = ours.decoder.to(device).train()
    data = decoder_inputs(ours, batch, device, seed)
    targets = DecoderTargets(tokens=data.tokens, codes=data.codes)
    last: dict[str, Any] = {}

    def official_step() -> torch.Tensor:
        (recon,) = model.forward_decode(quant=data.quant, slotz=data.slots)  # (B, K, h, w)
        last["official"] = recon
        return F.cross_entropy(recon, data.tokens)

    def featcache_step() -> torch.Tensor:
        return decoder(data.slots, targets).loss

    def check() -> dict[str, Any]:
        official_loss, our_loss, official_grad = backward_both(model.decode, decoder, data.slots, official_step, featcache_step)
        with torch.no_grad():
            logits, _ = decoder.predict(data.slots, targets)  # (B, N, K)
        recon = last["official"].flatten(2).transpose(1, 2)  # (B, K, h, w) -> (B, N, K)
        return {
            "logits": difference(logits, recon),
            "loss": difference(our_loss, official_loss),
            "slot gradient": difference(data.slots.grad, official_grad),
            "gradients": gradient_difference(dict(model.decode.named_parameters()), dict(decoder.named_parameters()), map_vvo_tfd),
        }

    return Case(
        "tfd", "Tfd decoder (ARTransformerDecoder)", "slatesteve.py ARTransformerDecoder", batch,
        official_step, featcache_step, [model.decode], [decoder], [data.slots], check,
        "teacher-forced on 256 code vectors, cross-entropy over 4096 codes; featcache also returns its masks "
        "(last cross-attention) and the argmax tokens",
    )


def case_mlp(official: SimpleNamespace, batch: int, device: torch.device, seed: int) -> Case:
    """BroadcastMLPDecoder (3 x 2048, GELU) on codes + features, as VVOMlp.forward_decode + loss_fn (recon0 + recon)."""
    model, config = official_model(official, "vqdino_mlp_r-coco", seed)
    ours, _ = featcache_model(model)
    model.decode.to(device).train()
    decoder = ours.decoder.to(device).train()
    data = decoder_inputs(ours, batch, device, seed)
    feature = data.features.permute(0, 3, 1, 2).contiguous()  # (B, C, h, w) as the official backbone returns it
    code_dim = config.embed_dim
    targets = DecoderTargets(features=data.features, codes=data.codes)
    last: dict[str, Any] = {}

    def official_step() -> torch.Tensor:
        recon, attent2 = model.forward_decode(quant=data.quant, slotz=data.slots)  # (B, D + C, h, w), (B, S, h, w)
        last["official"] = recon, attent2
        return F.mse_loss(recon[:, :code_dim], data.quant.detach()) + F.mse_loss(recon[:, code_dim:], feature.detach())

    def featcache_step() -> torch.Tensor:
        last["featcache"] = decoder(data.slots, targets)
        return last["featcache"].loss

    def check() -> dict[str, Any]:
        official_loss, our_loss, official_grad = backward_both(model.decode, decoder, data.slots, official_step, featcache_step)
        recon, attent2 = last["official"]
        out = last["featcache"]
        return {
            "reconstruction": difference(out.reconstruction, recon.permute(0, 2, 3, 1)),
            "masks": difference(out.masks, attent2),
            "loss": difference(our_loss, official_loss),
            "slot gradient": difference(data.slots.grad, official_grad),
            "gradients": gradient_difference(dict(model.decode.named_parameters()), dict(decoder.named_parameters()), map_mlp_decoder),
        }

    return Case(
        "mlp", "Mlp decoder (BroadcastMLPDecoder)", "dinosaur.py BroadcastMLPDecoder", batch,
        official_step, featcache_step, [model.decode], [decoder], [data.slots], check,
        "7 slots x 256 positions through 256-2048-2048-2048-641, MSE to codes and features",
    )


def case_dfz(official: SimpleNamespace, batch: int, device: torch.device, seed: int) -> Case:
    """ConditionDiffusionDecoder (diffusers UNet2DConditionModel, 128-256-384-512) with the noise MSE."""
    model, _ = official_model(official, "vqdino_dfz_r-coco", seed)
    ours, _ = featcache_model(model)
    model.decode.to(device).train()
    decoder = ours.decoder.to(device).train()
    data = decoder_inputs(ours, batch, device, seed)
    targets = DecoderTargets(codes=data.codes)

    def official_step() -> torch.Tensor:
        recon, noise = model.forward_decode(quant=data.quant, slotz=data.slots)
        return F.mse_loss(recon, noise)

    def featcache_step(noise: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        return decoder(data.slots, targets, noise).loss

    def check() -> dict[str, Any]:
        generator = torch.Generator().manual_seed(seed + 5)
        timesteps = torch.randint(0, decoder.timesteps, (batch,), generator=generator).to(device)
        noise = torch.randn(data.quant.shape, generator=generator).to(device)
        model.decode.zero_grad(set_to_none=True)
        decoder.zero_grad(set_to_none=True)
        with no_dropout(model.decode, decoder), replaced(torch, "randint", lambda *_, **__: timesteps.clone()), replaced(
            torch, "randn_like", lambda tensor, **_: noise.clone()
        ):
            official_loss = official_step()
        official_loss.backward()
        official_grad = data.slots.grad.clone()
        data.slots.grad = None
        with no_dropout(model.decode, decoder):
            our_loss = featcache_step({"timesteps": timesteps, "noise": noise})
        our_loss.backward()
        return {
            "loss": difference(our_loss, official_loss),
            "slot gradient": difference(data.slots.grad, official_grad),
            "gradients": gradient_difference(
                dict(model.decode.named_parameters()),
                dict(decoder.named_parameters()),
                lambda grads: {vvo_dfz_key(key): value for key, value in grads.items()},
            ),
        }

    return Case(
        "dfz", "Dfz decoder (diffusers UNet2DConditionModel)", "slotdiffusion.py ConditionDiffusionDecoder", batch,
        official_step, featcache_step, [model.decode], [decoder], [data.slots], check,
        "DDPM epsilon loss on the 4-channel code map, one random timestep per sample; dropout 0.1 as in training",
    )


def case_vq(official: SimpleNamespace, batch: int, device: torch.device, seed: int) -> Case:
    """VQVAEZ encoder + QuantiZ (4096 codes of 256) in pre-training: Gumbel draw, residual STE and the three losses."""
    model, config = official_model(official, "vqdino-coco-c256", seed)
    mediat = model.mediat.to(device).train()
    state = {key: value.detach().cpu() for key, value in mediat.state_dict().items()}
    quantizer = VectorQuantizer(official_quantizer_config(state), FEATURE_DIM)
    quantizer.load_state_dict(map_quantizer(state)[0], strict=True)
    quantizer.to(device).train()
    progress = 0.2  # step 6000 of 30000: Gumbel scale and residual weight both mid-way
    qconfig = quantizer.config
    mediat.quant.std.fill_(gumbel_scale(progress, qconfig.gumbel_scale_start, qconfig.gumbel_scale_end))
    mediat.alpha.fill_(residual_alpha(progress, qconfig.residual_anneal_fraction, qconfig.residual_alpha_end))
    weights = {name: float(config.loss_fn[name].get("weight", 1.0)) for name in ("align", "commit", "norm_e")}
    ours_hwc = features(batch, device, seed)  # (B, h, w, C)
    theirs = ours_hwc.permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
    generator = torch.Generator().manual_seed(seed + 6)
    upstream = torch.randn(batch, qconfig.code_dim, *GRID, generator=generator).to(device)  # stands in for the decoder
    last: dict[str, Any] = {}

    def official_step() -> torch.Tensor:
        encode, zidx, quant, residual, decode = mediat(theirs)
        last["official"] = encode, zidx, quant, decode
        return (
            weights["align"] * F.mse_loss(quant, encode.detach())
            + weights["commit"] * F.mse_loss(encode, residual.detach())
            + weights["norm_e"] * F.mse_loss(encode, F.group_norm(encode.detach(), num_groups=1))
            + (decode * upstream).mean()
        )

    def featcache_step(gumbel: torch.Tensor | None = None) -> torch.Tensor:
        out = quantizer(ours_hwc, progress, training_noise=True, gumbel_noise=gumbel)
        last["featcache"] = out
        return (
            weights["align"] * out.losses["alignment"]
            + weights["commit"] * out.losses["commitment"]
            + weights["norm_e"] * out.losses["normalisation"]
            + (out.decoder_input * upstream).mean()
        )

    def check() -> dict[str, Any]:
        exponential = torch.empty(batch, *GRID, qconfig.codebook_size).exponential_(generator=generator).to(device)
        mediat.zero_grad(set_to_none=True)
        quantizer.zero_grad(set_to_none=True)
        with replaced(torch.Tensor, "exponential_", lambda self, *_, **__: self.copy_(exponential)):
            official_loss = official_step()
        official_loss.backward()
        our_loss = featcache_step(-exponential.log())  # the Gumbel(0, 1) draws gumbel_softmax made
        our_loss.backward()
        encode, zidx, quant, decode = last["official"]
        out = last["featcache"]
        key_map = quantizer_key_map(state)
        return {
            "z": difference(out.z, encode),
            "indices equal": {"fraction": (out.indices == zidx).float().mean().item()},
            "quantized": difference(out.quantized, quant),
            "decoder input": difference(out.decoder_input, decode),
            "loss": difference(our_loss, official_loss),
            "gradients": gradient_difference(
                dict(mediat.named_parameters()),
                dict(quantizer.named_parameters()),
                lambda grads: {key_map[key]: value for key, value in grads.items()},
            ),
        }

    return Case(
        "vq", "quantizer (VQVAEZ encoder + QuantiZ)", "vaez.py VQVAEZ, QuantiZ", batch,
        official_step, featcache_step, [mediat], [quantizer], [], check,
        "pre-training step at progress 0.2 (Gumbel scale and residual mid-way); loss: align + 0.25 commit + "
        "0.1 norm_e + a fixed random readout of the decoder input (the image decoder left out)",
    )


def case_model(official: SimpleNamespace, batch: int, device: torch.device, seed: int) -> list[Case]:
    """The whole VVO-Tfd from features: official (its frozen quantizer runs every step) vs featcache twice,
    tokenizing every step as the official model does, and reading the tokens from the cache as featcache trains."""
    model, _ = official_model(official, "vqdino_tfd_r-coco", seed)
    ours, checkpoint = featcache_model(model)
    for parameter in model.mediat.parameters():  # the config's freez: m.mediat.*
        parameter.requires_grad_(False)
    model.to(device).train()
    model.mediat.eval()  # noise-free tokens: the computation featcache caches (see the note)
    ours.to(device).train()
    quantizer_config, _, vq_state, _ = quantizer_parts(checkpoint, GRID)
    quantizer = VectorQuantizer(quantizer_config, FEATURE_DIM)
    quantizer.load_state_dict(part(vq_state, "quantizer"), strict=True)
    quantizer.to(device).eval().requires_grad_(False)
    ours_hwc = features(batch, device, seed)
    theirs = ours_hwc.permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        cached_tokens = quantizer.tokenize(ours_hwc)[0]
    last: dict[str, Any] = {}

    def official_step(noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            outputs = model(theirs)
        else:
            with replaced(torch, "randn_like", lambda tensor, **_: noise.clone()):
                outputs = model(theirs)
        last["official"] = outputs
        _, zidx, _, _, _, recon = outputs
        return F.cross_entropy(recon, zidx)

    def featcache_tokenizing(noise: torch.Tensor | None = None) -> torch.Tensor:
        tokens = quantizer.tokenize(ours_hwc)[0]
        drawn = None if noise is None else {"aggregator": {"slots": noise}, "decoder": {}}
        last["featcache"] = tokens, ours(ours_hwc, tokens, drawn)
        return last["featcache"][1].loss

    def featcache_cached() -> torch.Tensor:
        return ours(ours_hwc, cached_tokens).loss

    official_params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    our_params = dict(ours.named_parameters())

    def mapping(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {**{k: v.cpu() for k, v in checkpoint.state.items() if k.startswith("mediat.")}, **grads}
        mapped = ocl_state_dict(VVOCheckpoint(checkpoint.path, checkpoint.kind, state), ours)
        return {name: value.to(device) for name, value in mapped.items() if name in our_params}

    def check() -> dict[str, Any]:
        aggregator = ours.aggregator
        noise = torch.randn(batch, aggregator.num_slots, aggregator.slot_dim, generator=torch.Generator().manual_seed(seed + 7)).to(device)
        with no_dropout(model, ours):
            model.zero_grad(set_to_none=True)
            ours.zero_grad(set_to_none=True)
            official_loss = official_step(noise)
            official_loss.backward()
            our_loss = featcache_tokenizing(noise)
            our_loss.backward()
        _, zidx, _, slotz, attent, _ = last["official"]
        tokens, out = last["featcache"]
        return {
            "tokens equal": {"fraction": (tokens == zidx).float().mean().item()},
            "slots": difference(out.slots, slotz),
            "attention": difference(out.attention_masks, attent),
            "loss": difference(our_loss, official_loss),
            "gradients": gradient_difference(official_params, our_params, mapping),
        }

    note = (
        "features in, cross-entropy out; the official frozen quantizer held in eval mode (noise-free tokens: in its "
        "own training the whole model is in train mode, so QuantiZ draws Gumbel noise at std 2.35 every step)"
    )
    tokenizing = Case(
        "model", "VVO-Tfd from features, tokenized each step", "vqvfmocl.py VVOTfd", batch,
        official_step, featcache_tokenizing, [model], [ours], [], check, note,
    )
    cached = Case(
        "model-cached", "VVO-Tfd from features, featcache reads cached tokens", "vqvfmocl.py VVOTfd", batch,
        official_step, featcache_cached, [model], [ours], [], lambda: {"same model": {"see": "row above"}},
        "featcache's training step: tokens come from its cache, the quantizer does not run",
    )
    return [tokenizing, cached]


BUILDERS: dict[str, Callable[..., Case | list[Case]]] = {
    "slots": case_slots, "tfd": case_tfd, "mlp": case_mlp, "dfz": case_dfz, "vq": case_vq, "model": case_model,
}


# ---------------------------------------------------------------------------------------------------------------
# Report


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "platform": platform.platform(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "").strip()
        info["cpus"] = fields.get("CPU(s)", "").strip()
    except OSError:
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def agrees(check: dict[str, Any]) -> bool:
    for value in check.values():
        if "relative" in value and value["relative"] > AGREE:
            return False
        if "fraction" in value and value["fraction"] < 1.0:
            return False
    return True


def check_summary(check: dict[str, Any]) -> str:
    parts = []
    for name, value in check.items():
        if "relative" in value:
            parts.append(f"{name} {value['max_abs_diff']:.1e}")
        elif "fraction" in value:
            parts.append(f"{name} {100 * value['fraction']:.2f}%")
    return ", ".join(parts)


def table(cases: list[Case], cpu_time: bool) -> Table:
    """Rows of ms (best, median in brackets) and featcache / official ratios; ``cpu_time``: process CPU time."""
    unit = "CPU ms" if cpu_time else "ms"
    suffix = "_cpu_ms" if cpu_time else "_ms"
    grid = Table(title=f"featcache vs official VVO: one training step (forward + loss + backward), {'process CPU' if cpu_time else 'wall'} time")
    for column, justify in (
        ("module", "left"), ("batch", "right"), ("rounds", "right"), (f"official {unit}", "right"),
        (f"featcache {unit}", "right"), ("ratio (best)", "right"), ("ratio (median)", "right"),
        ("same computation (max |diff|)", "left"),
    ):
        grid.add_column(column, justify=justify)  # type: ignore[arg-type]
    for case in cases:
        result = case.results
        if "error" in result:
            grid.add_row(case.module, str(case.batch), "-", "-", "-", "-", "-", f"[red]{result['error']}")
            continue
        official, ours = result["official"], result["featcache"]
        ratio = ours["best" + suffix] / official["best" + suffix]
        colour = "green" if ratio <= 1 + NOISE else "red"
        verdict = "[green]yes[/]" if result["agrees"] else "[red]NO[/]"
        grid.add_row(
            case.module,
            str(case.batch),
            str(result["rounds"]),
            f"{official['best' + suffix]:.0f} ({official['median' + suffix]:.0f})",
            f"{ours['best' + suffix]:.0f} ({ours['median' + suffix]:.0f})",
            f"[{colour}]{ratio:.2f}[/]",
            f"{ours['median' + suffix] / official['median' + suffix]:.2f}",
            f"{verdict} {check_summary(result['check'])}",
        )
    return grid


def parse_module_batches(values: list[str]) -> dict[str, int]:
    batches = {}
    for value in values:
        name, _, size = value.partition("=")
        if name not in MODULES or not size.isdigit():
            raise SystemExit(f"--module-batch takes NAME=N with NAME one of {', '.join(MODULES)}, got {value!r}")
        batches[name] = int(size)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="a Genera1Z/VQ-VFM-OCL checkout (read only)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per side (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per side first")
    parser.add_argument(
        "--target-seconds", type=float, default=10.0, help="fast modules get more rounds (up to 5x --repeats), about this long per side"
    )
    parser.add_argument("--batch", type=int, default=32, help="batch size (the paper's: 32)")
    parser.add_argument("--module-batch", action="append", default=[], metavar="NAME=N", help="another batch for one module, e.g. dfz=8")
    parser.add_argument("--modules", default=",".join(MODULES), help=f"comma-separated subset of {','.join(MODULES)}")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    selected = [name.strip() for name in args.modules.split(",") if name.strip()]
    unknown = sorted(set(selected) - set(MODULES))
    if unknown:
        raise SystemExit(f"--modules: unknown {', '.join(unknown)}; known: {', '.join(MODULES)}")
    module_batch = parse_module_batches(args.module_batch)
    official = load_official(args.official.resolve())
    info = machine(device)
    console.print(
        f"official: {official.root} @ {official.commit[:12]}  |  torch {info['torch']}, {info['threads']} threads, "
        f"{info.get('gpu') or info.get('cpu')}  |  {args.warmup} warm-up + {args.repeats} timed rounds per side"
    )
    cases: list[Case] = []
    for name in selected:
        batch = module_batch.get(name, args.batch)
        built = BUILDERS[name](official, batch, device, args.seed)
        group = built if isinstance(built, list) else [built]
        for case in group:
            console.print(f"[bold]{case.module}[/] (batch {batch}): checking ...", end=" ")
            try:
                case.results["check"] = case.check()
                case.results["agrees"] = agrees(case.results["check"]) if case.key != "model-cached" else cases[-1].results["agrees"]
                console.print(check_summary(case.results["check"]) or "-", end="; timing ... ")
                case.results |= measure(case, args.repeats, args.warmup, args.target_seconds, device)
                console.print(
                    f"official {case.results['official']['best_ms']:.0f} ms, featcache {case.results['featcache']['best_ms']:.0f} ms, "
                    f"ratio {case.results['ratio_best']:.2f} (CPU time {case.results['ratio_best_cpu']:.2f})"
                )
            except Exception as error:  # one failing module should not hide the others' results
                case.results["error"] = f"{type(error).__name__}: {error}"
                console.print(f"[red]{case.results['error']}")
            cases.append(case)
        del built, group
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    console.print(table(cases, cpu_time=False))
    console.print(table(cases, cpu_time=True))
    console.print(
        f"ms: best of the timed rounds (at least {args.repeats}; median in brackets); CPU ms: this process's CPU time, "
        f"which other jobs on a shared machine do not inflate; ratio = featcache / official (< 1: featcache faster); "
        f"same computation: max relative difference <= {AGREE:g} for outputs, loss and every gradient"
    )
    for case in cases:
        if case.note:
            console.print(f"  {case.module}: {case.note}")
    if any(case.batch != args.batch for case in cases):
        console.print(f"  batch: smaller than {args.batch} where marked, to keep the CPU run short (ratios are per step at that batch)")
    if args.json:
        report = {
            "official": {"repo": "Genera1Z/VQ-VFM-OCL", "path": str(official.root), "commit": official.commit},
            "machine": info,
            "settings": {"repeats": args.repeats, "warmup": args.warmup, "target_seconds": args.target_seconds, "batch": args.batch, "module_batch": module_batch, "seed": args.seed},
            "grid": list(GRID),
            "feature_dim": FEATURE_DIM,
            "results": [
                {"key": c.key, "module": c.module, "official_class": c.official_class, "batch": c.batch, "note": c.note, **c.results}
                for c in cases
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
