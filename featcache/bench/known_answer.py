"""Known-answer learning suite: synthetic feature stores whose right segmentation is known by construction.

Each scene is an h x w patch grid (8 x 8 by default) with a background and 2-3 axis-aligned rectangles
(later ones drawn on top). Every segment gets a per-image random code id out of a fixed random codebook, and
every patch of the segment carries that code's vector, so only grouping, never the vector itself, tells the
segments apart. A few more channels carry a sinusoidal signal of the patch position, so slots can locate the
segment they took. Ground-truth masks are stored at a small evaluation resolution (twice the grid: bilinear
upsampling + argmax then reproduces a perfect patch mask exactly; at 4x it would round rectangle corners).
The patch's code id is also written as a token set (``vvo-c256``: the segment codebook; ``vvo-c4``: random
4-d codes), i.e. the tokens a perfect quantizer would give, for the token decoders (Tfd, Dfz).

The stores are written with featcache's store writer, so ``train-ocl`` and ``eval`` read them as any store.

Tasks (each scored by FG-ARI on a held-out store of the same generator):

- ``perfect-slots``: decoder only. Slot k is a learned linear map of segment k's ground-truth patch mask and
  mean feature (zeros for missing segments), so the right answer is in the slots; only this map and the
  decoder train, and the decoder's own masks are scored. Bar 0.9.
- ``segments``: end to end from the features (``dinosaur-mlp``: decoder masks). Bar 0.8.
- ``tokens``: end to end with the token set as the decoder target (``vvo-tfd``: attention masks). Bar 0.8.

Methods are method configs of ``configs/ocl`` layered with the CPU preset ``configs/ocl/known-answer.yaml``,
further config files and ``key=value`` overrides; other implementations (an independent reference, in the
slow test) plug in as :class:`Method` objects and land in the same table and curves.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.table import Table
from torch import nn

from featcache import records
from featcache.config import load_config, repo_root, to_dict
from featcache.console import console
from featcache.decoders import DecoderTargets, create_decoder
from featcache.errors import FeatcacheError
from featcache.metrics.protocols import MaskMetrics, get_protocol, labels_from_patch_masks, score_masks
from featcache.provenance import utc_now
from featcache.runtime import resolve_device, seed_everything
from featcache.stages.evaluate import evaluate_run
from featcache.store import FeatureStore, schema
from featcache.store.schema import StoreLayout
from featcache.store.tokens import create_token_set, finish_token_set, write_token_unit
from featcache.store.writer import UnitArrays, create_store, finalize_store, mark_unit_done, write_unit
from featcache.training.checkpoint import prepare_run_folder
from featcache.training.config import OCLTrainConfig, with_seed
from featcache.training.loader import Batch, CachedBatches
from featcache.training.loop import train_loop
from featcache.training.metrics_log import MetricsLog
from featcache.training.ocl import train_ocl
from featcache.training.runs import resolve_feature_kind

#: Token sets written into every known-answer store, named as the shipped VVO configs expect.
FEATURE_TOKENS = "vvo-c256"
SMALL_TOKENS = "vvo-c4"
#: The CPU-size preset layered after each method config.
PRESET = "configs/ocl/known-answer.yaml"


@dataclass(frozen=True)
class SceneSpec:
    """How known-answer scenes are drawn (the store records it; every array is a function of it and the seed)."""

    grid: int = 8
    min_rectangles: int = 2
    max_rectangles: int = 3
    #: Rectangle sides in patches, drawn uniformly in [min_side, max_side].
    min_side: int = 2
    max_side: int = 5
    #: A rectangle (or the background) must keep at least this many visible patches.
    min_visible: int = 3
    #: Codes segments draw their ids from (per image, without repeats); also the token codebook size.
    codebook_size: int = 256
    #: Channels holding the segment's code vector (N(0, 1) entries).
    segment_channels: int = 24
    #: Sinusoid frequencies of the position signal: sin and cos of pi * f * (i + 0.5) / grid per axis (4 per f).
    position_frequencies: tuple[float, ...] = (1.0, 2.0)
    #: Amplitude of the position channels.
    position_scale: float = 1.0
    #: Std of i.i.d. Gaussian noise added to every feature.
    noise: float = 0.05
    #: Ground-truth mask side (a multiple of the grid; 2x keeps bilinear upsampling of a perfect mask exact).
    mask_size: int = 16
    #: Seed of the codebooks (shared by the training and validation stores).
    codebook_seed: int = 1234

    def __post_init__(self) -> None:
        if not 1 <= self.min_rectangles <= self.max_rectangles:
            raise FeatcacheError(f"rectangles: need 1 <= min_rectangles <= max_rectangles, got {self.min_rectangles}, {self.max_rectangles}")
        if not 1 <= self.min_side <= self.max_side <= self.grid:
            raise FeatcacheError(f"rectangle sides must satisfy 1 <= min_side <= max_side <= grid, got {self.min_side}, {self.max_side}")
        if self.mask_size % self.grid != 0:
            raise FeatcacheError(f"mask_size {self.mask_size} must be a multiple of the grid {self.grid}")
        if self.codebook_size < self.max_rectangles + 1:
            raise FeatcacheError(f"codebook_size {self.codebook_size} must be at least max_rectangles + 1")

    @property
    def max_segments(self) -> int:
        return self.max_rectangles + 1

    @property
    def channels(self) -> int:
        return self.segment_channels + 4 * len(self.position_frequencies)


@dataclass
class Scenes:
    """labels (N, h, w) segment of each patch (0 = background); codes (N, max_segments) code id of each
    segment (-1 = absent); features (N, h, w, C) float32; tokens (N, h, w) the patch's code id."""

    labels: np.ndarray
    codes: np.ndarray
    features: np.ndarray
    tokens: np.ndarray


def codebooks(spec: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """The segment codebook (K, segment_channels) and the 4-d token codebook (K, 4), from ``codebook_seed``."""
    rng = np.random.default_rng(spec.codebook_seed)
    return (
        rng.standard_normal((spec.codebook_size, spec.segment_channels)).astype(np.float32),
        rng.standard_normal((spec.codebook_size, 4)).astype(np.float32),
    )


def position_signal(spec: SceneSpec) -> np.ndarray:
    """(h, w, 4 * frequencies) sin/cos of each patch's row and column."""
    centres = (np.arange(spec.grid) + 0.5) / spec.grid  # (g,)
    rows, columns = np.meshgrid(centres, centres, indexing="ij")
    channels = []
    for frequency in spec.position_frequencies:
        for coordinate in (rows, columns):
            channels += [np.sin(math.pi * frequency * coordinate), np.cos(math.pi * frequency * coordinate)]
    return spec.position_scale * np.stack(channels, axis=-1).astype(np.float32)


def draw_labels(spec: SceneSpec, rng: np.random.Generator) -> np.ndarray:
    """One scene's (h, w) segment map: background 0, rectangles 1..k in drawing order, each visible enough."""
    while True:
        count = int(rng.integers(spec.min_rectangles, spec.max_rectangles + 1))
        labels = np.zeros((spec.grid, spec.grid), dtype=np.int64)
        for index in range(1, count + 1):
            height, width = (int(v) for v in rng.integers(spec.min_side, spec.max_side + 1, size=2))
            top, left = int(rng.integers(0, spec.grid - height + 1)), int(rng.integers(0, spec.grid - width + 1))
            labels[top : top + height, left : left + width] = index
        if all((labels == index).sum() >= spec.min_visible for index in range(count + 1)):
            return labels


def make_scenes(spec: SceneSpec, count: int, seed: int) -> Scenes:
    """``count`` scenes, a pure function of ``spec`` and ``seed``."""
    rng = np.random.default_rng(seed)
    segment_codebook, _ = codebooks(spec)
    position = position_signal(spec)  # (h, w, P)
    g, s = spec.grid, spec.max_segments
    labels = np.zeros((count, g, g), dtype=np.int64)
    codes = np.full((count, s), -1, dtype=np.int64)
    for image in range(count):
        labels[image] = draw_labels(spec, rng)
        present = int(labels[image].max()) + 1
        codes[image, :present] = rng.choice(spec.codebook_size, size=present, replace=False)
    tokens = np.take_along_axis(codes, labels.reshape(count, -1), axis=1).reshape(count, g, g)  # (N, h, w)
    vectors = segment_codebook[tokens]  # (N, h, w, segment_channels)
    features = np.concatenate([vectors, np.broadcast_to(position, (count, *position.shape))], axis=-1)
    features = features + spec.noise * rng.standard_normal(features.shape).astype(np.float32)
    return Scenes(labels=labels, codes=codes, features=features.astype(np.float32), tokens=tokens)


def pixel_masks(labels: np.ndarray, mask_size: int) -> np.ndarray:
    """(N, h, w) patch labels -> (N, M, M) uint16 instance masks (each patch a block of pixels)."""
    factor = mask_size // labels.shape[-1]
    return labels.repeat(factor, axis=1).repeat(factor, axis=2).astype(np.uint16)


def patch_labels(masks: np.ndarray, grid: int) -> np.ndarray:
    """(N, M, M) instance masks of a known-answer store -> (N, h, w) patch labels (every block is constant)."""
    factor = masks.shape[-1] // grid
    return masks[:, ::factor, ::factor].astype(np.int64)


def one_hot_masks(labels: np.ndarray, num_slots: int) -> np.ndarray:
    """(N, h, w) labels -> (N, S, h, w) float32 one-hot masks: the perfect masks (segments beyond S are dropped)."""
    return (labels[:, None] == np.arange(num_slots)[None, :, None, None]).astype(np.float32)


def _identity(spec: SceneSpec, images: int, seed: int) -> dict[str, Any]:
    return {"generator": "known-answer", "spec": asdict(spec), "images": images, "seed": seed}


def write_known_answer_store(path: str | Path, spec: SceneSpec, images: int, seed: int, samples_per_chunk: int = 64) -> Path:
    """Write ``images`` scenes as a complete single-view store with masks and the two token sets."""
    path = Path(path)
    if path.exists():
        raise FeatcacheError(f"{path} exists; choose a new folder for the known-answer store")
    scenes = make_scenes(spec, images, seed)
    segment_codebook, small_codebook = codebooks(spec)
    layout = StoreLayout(
        num_samples=images,
        view_names=("center",),
        grid=(spec.grid, spec.grid),
        channels=spec.channels,
        image_size=0,
        mask_size=spec.mask_size,
        max_instances=spec.max_rectangles,
        samples_per_chunk=samples_per_chunk,
        is_video=False,
    )
    identity = _identity(spec, images, seed)
    fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    attributes = schema.store_attributes(
        identity=identity,
        config={"known_answer": asdict(spec), "seed": seed},
        layout=layout,
        encoder={
            "name": "known-answer",
            "family": "synthetic",
            "timm_name": None,
            "patch_size": 1,
            "resolution": spec.grid,
            "channels": spec.channels,
            # Stored as last_block with an identity final LayerNorm, so DINOSAUR (last_block) and VVO (final_norm)
            # configs both read the store unchanged.
            "stored_kind": "last_block",
            "derivable_kinds": ["final_norm"],
            "final_norm": {"weight": [1.0] * spec.channels, "bias": [0.0] * spec.channels, "eps": 1e-6},
            "normalisation": None,
            "resize": "none: features are generated on the patch grid",
        },
        weights={"source": "synthetic", "location": "featcache.bench.known_answer", "sha256": fingerprint, "file_sha256": None},
        dataset={
            "source": f"known-answer:{seed}",
            "kind": "known-answer",
            "split": "train",
            "num_samples": images,
            "has_masks": True,
            "is_video": False,
            "fingerprint": fingerprint,
        },
        views=[{"name": "center", "kind": "center", "flip": False}],
        compression_level=1,
    )
    create_store(path, layout, attributes, [f"scene-{seed}-{i:06d}" for i in range(images)], [None] * images, [0] * images)
    masks = pixel_masks(scenes.labels, spec.mask_size)
    for unit in range(layout.num_units):
        start, stop = layout.unit_range(unit)
        n = stop - start
        instance_classes = np.full((n, spec.max_rectangles), -1, dtype=np.int32)
        for row, labels in enumerate(scenes.labels[start:stop]):
            instance_classes[row, : int(labels.max())] = 0
        write_unit(
            path,
            UnitArrays(
                unit=unit,
                start=start,
                features=scenes.features[start:stop, None].astype(np.float16),
                images=None,
                masks=masks[start:stop, None],
                view_params=np.tile(np.array([0, 0, spec.grid, spec.grid, 0], np.float32), (n, 1, 1)),
                source_size=np.full((n, 2), spec.grid, dtype=np.int32),
                instance_classes=instance_classes,
                status=np.full(n, schema.STATUS_WRITTEN, dtype=np.uint8),
            ),
        )
        mark_unit_done(path, unit, {})
    finalize_store(path)
    for name, codebook in ((FEATURE_TOKENS, segment_codebook), (SMALL_TOKENS, small_codebook)):
        create_token_set(
            path,
            name,
            layout,
            codebook,
            {
                "schema_version": 1,
                "name": name,
                **records.provenance(),
                "completed": None,
                "feature_kind": "last_block",
                # No VQ run: the tokens are the generator's code ids (what a perfect quantizer would give).
                "vq": {"run": None, "weights_sha256": f"known-answer:{name}:{spec.codebook_seed}", "config": None, "trained_on": None},
                "codebook_size": int(codebook.shape[0]),
                "code_dim": int(codebook.shape[1]),
            },
        )
        for unit in range(layout.num_units):
            start, stop = layout.unit_range(unit)
            indices = scenes.tokens[start:stop, None]
            write_token_unit(path, name, start, indices, np.zeros(indices.shape, np.float32), unit)
        finish_token_set(path, name, utc_now())
    return path


# ----------------------------------------------------------------------------------------------- the data


@dataclass
class KnownAnswerData:
    """The suite's training and validation stores, and the validation arrays every method is scored on."""

    spec: SceneSpec
    train: Path
    validation: Path

    def arrays(self, split: str = "validation", kind: str = "last_block") -> dict[str, np.ndarray]:
        """features (N, h, w, C) float32 of ``kind``, tokens (N, h, w) int64, masks (N, M, M) int64 and patch
        labels (N, h, w) of the ``train`` or ``validation`` store."""
        store = FeatureStore(self.train if split == "train" else self.validation, warn_random=False)
        indices = store.valid_indices()
        masks = store.masks(indices, view="center").astype(np.int64)
        return {
            "features": store.features(indices, view="center", kind=kind).astype(np.float32),
            "tokens": store.tokens(FEATURE_TOKENS, indices, view="center").astype(np.int64),
            "masks": masks,
            "labels": patch_labels(masks, self.spec.grid),
        }


def build_data(work_dir: Path, spec: SceneSpec, train_images: int, validation_images: int, seed: int = 0) -> KnownAnswerData:
    """Training and validation stores under ``work_dir`` (reused when already written with the same identity)."""
    work_dir = Path(work_dir)
    paths = {}
    for split, images, split_seed in (("train", train_images, seed), ("validation", validation_images, seed + 10_000)):
        path = work_dir / f"known-answer-{split}.zarr"
        if path.exists():
            existing = FeatureStore(path, warn_random=False).attributes["identity"]
            if existing != json.loads(json.dumps(_identity(spec, images, split_seed))):
                raise FeatcacheError(f"{path} holds other known-answer scenes; remove it or choose another work folder")
        else:
            write_known_answer_store(path, spec, images, split_seed)
        paths[split] = path
    return KnownAnswerData(spec=spec, train=paths["train"], validation=paths["validation"])


def score_labels(masks: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Mean ARI / FG-ARI / mBO / mIoU of predicted (N, M, M) labels against ground truth (VVO protocol)."""
    summary = MaskMetrics(**score_masks(masks, predicted, get_protocol("vvo")), clip_ari={}).summary()
    return {k: float(v) for k, v in summary.items() if k in ("ari", "fg_ari", "mbo", "miou")}


def oracle_scores(data: KnownAnswerData, num_slots: int) -> dict[str, float]:
    """Scores of the perfect patch masks through the evaluation path (upsampling, argmax): FG-ARI 1.0 by construction."""
    arrays = data.arrays()
    perfect = torch.from_numpy(one_hot_masks(arrays["labels"], num_slots))
    return score_labels(arrays["masks"], labels_from_patch_masks(perfect, data.spec.mask_size))


# ----------------------------------------------------------------------------------------------- methods


@dataclass
class SeedResult:
    """One trained seed: final validation scores and the learning curve (step, FG-ARI)."""

    task: str
    method: str
    implementation: str
    seed: int
    scores: dict[str, float]
    curve: list[tuple[int, float]]
    seconds: float
    steps: int

    @property
    def fg_ari(self) -> float:
        return self.scores["fg_ari"]


#: run(data, seed, run_dir) -> SeedResult
MethodRunner = Callable[[KnownAnswerData, int, Path], SeedResult]


@dataclass
class Method:
    """A trainable entry of the suite: ``task`` and ``name`` label its rows; ``bar`` is the FG-ARI it must reach."""

    task: str
    name: str
    implementation: str
    bar: float | None
    run: MethodRunner
    #: The resolved settings, written to the results (config dict for featcache methods).
    settings: dict[str, Any] = field(default_factory=dict)


#: featcache's methods: (task, method config, bar).
FEATCACHE_METHODS: dict[str, tuple[str, str, float | None]] = {
    "perfect-slots/dinosaur-mlp": ("perfect-slots", "dinosaur-mlp", 0.9),
    "segments/dinosaur-mlp": ("segments", "dinosaur-mlp", 0.8),
    "tokens/vvo-tfd": ("tokens", "vvo-tfd", 0.8),
}


def method_config(method: str, config_files: list[str | Path], overrides: list[str], configs_dir: Path | None = None) -> OCLTrainConfig:
    """``configs/ocl/<method>.yaml`` + the known-answer preset + ``config_files`` + ``overrides``."""
    configs_dir = Path(configs_dir) if configs_dir else repo_root() / "configs" / "ocl"
    return load_config(OCLTrainConfig, [configs_dir / f"{method}.yaml", configs_dir / Path(PRESET).name, *config_files], overrides)


def curve_from_log(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation FG-ARI) rows of a run's metrics log."""
    rows = MetricsLog.read(Path(run_dir) / "metrics.jsonl")
    return [(int(row["step"]), float(row["val_fg_ari"])) for row in rows if "val_fg_ari" in row]


def end_to_end_method(key: str, config: OCLTrainConfig, device: str) -> Method:
    """Train ``config`` with ``train_ocl`` on the training store; score its masks (``mask_source``) on the validation store."""
    task, method, bar = FEATCACHE_METHODS[key]

    def run(data: KnownAnswerData, seed: int, run_dir: Path) -> SeedResult:
        seeded = with_seed(config, seed)
        started = time.perf_counter()
        result = train_ocl(data.train, seeded, run_dir, device=device, validation_store=data.validation, show_progress=False)
        seconds = time.perf_counter() - started
        evaluation = evaluate_run(run_dir, store_path=data.validation, protocol_name="vvo", device=device, out=run_dir / "eval", show_progress=False)
        scores = {k: float(evaluation["metrics"][k]) for k in ("ari", "fg_ari", "mbo", "miou")}
        return SeedResult(task, method, "featcache", seed, scores, curve_from_log(run_dir), seconds, result.steps)

    return Method(task, method, "featcache", bar, run, to_dict(config))


class PerfectSlotsModel(nn.Module):
    """Slots from the ground truth: slot k = Linear([segment k's patch mask (h*w), its mean feature (C)]);
    a featcache decoder decodes them. Segments beyond the slot count are dropped; missing ones are zeros."""

    def __init__(self, config: OCLTrainConfig, grid: tuple[int, int], channels: int, codebook: torch.Tensor | None) -> None:
        super().__init__()
        slot_dim = config.model.aggregator.slot_dim
        self.num_slots = config.model.aggregator.num_slots
        self.grid = grid
        self.embedding = nn.Linear(grid[0] * grid[1] + channels, slot_dim)
        self.register_buffer("codebook", codebook)
        size, dim = (codebook.shape[0], codebook.shape[1]) if codebook is not None else (0, 0)
        self.decoder = create_decoder(config.model.decoder, slot_dim, grid, channels, size, dim)
        if not getattr(self.decoder, "returns_masks", False):
            raise FeatcacheError(f"perfect-slots needs a decoder with masks; {config.model.decoder.name} has none")

    def slots(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """features (B, h, w, C), labels (B, h, w) -> slots (B, S, D)."""
        masks = (labels.flatten(1)[:, None, :] == torch.arange(self.num_slots, device=labels.device)[None, :, None]).float()  # (B, S, N)
        area = masks.sum(-1, keepdim=True).clamp(min=1.0)
        means = masks @ features.flatten(1, 2).float() / area  # (B, S, C)
        return self.embedding(torch.cat([masks, means], dim=-1))

    def forward(self, features: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """-> loss, its terms, decoder masks (B, S, h, w)."""
        targets = DecoderTargets(features=features.float())
        if tokens is not None:
            codes = self.codebook[tokens] if "codes" in self.decoder.needs else None
            targets = DecoderTargets(features=features.float(), tokens=tokens, codes=codes)
        decoded = self.decoder(self.slots(features, labels), targets)
        assert decoded.masks is not None
        return decoded.loss, dict(decoded.losses), decoded.masks


def perfect_slots_method(key: str, config: OCLTrainConfig, device: str) -> Method:
    """Train only the slot embedding and the decoder of ``config`` on ground-truth slots; score decoder masks."""
    task, method, bar = FEATCACHE_METHODS[key]

    def run(data: KnownAnswerData, seed: int, run_dir: Path) -> SeedResult:
        seeded = with_seed(config, seed)
        target = resolve_device(device)
        store = FeatureStore(data.train, warn_random=False)
        token_name = seeded.tokens or None
        codebook = torch.from_numpy(store.codebook(token_name)) if token_name else None
        seed_everything(seed)
        model = PerfectSlotsModel(seeded, store.layout.grid, store.layout.channels, codebook).to(target)
        kind = resolve_feature_kind(store, seeded.feature_kind)
        train_labels = torch.from_numpy(data.arrays("train")["labels"]).to(target)  # (N, h, w), by store index
        validation = data.arrays(kind=kind)
        optimizer = torch.optim.Adam(model.parameters(), lr=seeded.train.learning_rate)
        batches = CachedBatches(store, seeded.train.batch_size, target, kind, False, seed=seeded.train.resolved_data_seed, mode="memory", token_name=token_name)
        prepare_run_folder(run_dir, seeded, False)

        def predict() -> np.ndarray:
            model.eval()
            with torch.no_grad():
                features = torch.from_numpy(validation["features"]).to(target)
                labels = torch.from_numpy(validation["labels"]).to(target)
                tokens = torch.from_numpy(validation["tokens"]).to(target) if token_name else None
                masks = model(features, labels, tokens)[2]
            model.train()
            return labels_from_patch_masks(masks, data.spec.mask_size)

        def step_loss(batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            labels = train_labels[torch.from_numpy(batch.sample_indices).to(target)]
            loss, terms = model(batch.features, labels, batch.tokens)[:2]
            return loss, {**terms, "total": loss}

        started = time.perf_counter()
        try:
            loop = train_loop(
                model=model,
                optimizer=optimizer,
                batches=batches,
                settings=seeded.train,
                device=target,
                run_dir=run_dir,
                config=to_dict(seeded),
                run_info={"stage": "known-answer-perfect-slots", "store": str(data.train)},
                step_loss=step_loss,
                start_step=0,
                end_step=seeded.train.steps,
                description="perfect slots",
                validate=lambda: score_labels(validation["masks"], predict()),
                validate_every=seeded.validate_every,
                show_progress=False,
            )
        finally:
            batches.close()
        seconds = time.perf_counter() - started
        scores = score_labels(validation["masks"], predict())
        return SeedResult(task, method, "featcache", seed, scores, curve_from_log(run_dir), seconds, loop.steps)

    return Method(task, method, "featcache", bar, run, to_dict(config))


def featcache_methods(
    names: list[str] | None = None,
    config_files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    device: str = "cpu",
    configs_dir: Path | None = None,
) -> list[Method]:
    """featcache's methods (keys of FEATCACHE_METHODS; all by default) with the preset, files and overrides applied."""
    methods = []
    for key in names or list(FEATCACHE_METHODS):
        if key not in FEATCACHE_METHODS:
            raise FeatcacheError(f"unknown known-answer method {key!r}; known: {', '.join(FEATCACHE_METHODS)}")
        task, method, _ = FEATCACHE_METHODS[key]
        config = method_config(method, list(config_files or []), list(overrides or []), configs_dir)
        methods.append((perfect_slots_method if task == "perfect-slots" else end_to_end_method)(key, config, device))
    return methods


# ----------------------------------------------------------------------------------------------- the suite


def run_suite(
    work_dir: Path,
    methods: list[Method],
    seeds: list[int],
    spec: SceneSpec | None = None,
    train_images: int = 1024,
    validation_images: int = 256,
    data: KnownAnswerData | None = None,
    on_result: Callable[[SeedResult], None] | None = None,
) -> dict[str, Any]:
    """Train every method with every seed on the known-answer stores; returns the summary (see :func:`summarise`).

    Each finished seed leaves ``result.json`` in its run folder with the method's settings; a later call with the
    same settings reuses it, so an interrupted suite resumes and several processes can share one ``work_dir``.
    """
    work_dir = Path(work_dir)
    data = data or build_data(work_dir, spec or SceneSpec(), train_images, validation_images)
    results: list[SeedResult] = []
    for method in methods:
        for seed in seeds:
            run_dir = work_dir / "runs" / f"{method.task}--{method.name}--{method.implementation}" / f"seed{seed}"
            saved = run_dir / "result.json"
            settings = json.loads(json.dumps(method.settings, default=str))
            if saved.is_file() and json.loads(saved.read_text())["settings"] == settings:
                stored = json.loads(saved.read_text())["result"]
                result = SeedResult(**{**stored, "curve": [tuple(point) for point in stored["curve"]]})
            else:
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                result = method.run(data, seed, run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                saved.write_text(json.dumps({"settings": settings, "result": asdict(result)}, default=float))
            results.append(result)
            if on_result is not None:
                on_result(result)
    max_slots = max((m.settings.get("model", {}).get("aggregator", {}).get("num_slots", 0) for m in methods), default=0)
    summary = summarise(results, methods)
    summary["spec"] = asdict(data.spec)
    summary["stores"] = {"train": str(data.train), "validation": str(data.validation)}
    if max_slots:
        summary["oracle"] = oracle_scores(data, max_slots)
    summary["settings"] = {f"{m.task}/{m.name}/{m.implementation}": m.settings for m in methods}
    return summary


def summarise(results: list[SeedResult], methods: list[Method]) -> dict[str, Any]:
    """Rows (task, method, implementation, seeds, FG-ARI mean and std, bar, pass) and every seed's curve."""
    rows = []
    for method in methods:
        mine = [r for r in results if (r.task, r.method, r.implementation) == (method.task, method.name, method.implementation)]
        if not mine:
            continue
        values = np.array([r.fg_ari for r in mine])
        mean = float(values.mean())
        rows.append(
            {
                "task": method.task,
                "method": method.name,
                "implementation": method.implementation,
                "seeds": [r.seed for r in mine],
                "fg_ari_mean": mean,
                "fg_ari_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "fg_ari": [float(v) for v in values],
                "ari_mean": float(np.mean([r.scores["ari"] for r in mine])),
                "mbo_mean": float(np.mean([r.scores["mbo"] for r in mine])),
                "steps": mine[0].steps,
                "seconds_per_seed": float(np.mean([r.seconds for r in mine])),
                "bar": method.bar,
                "pass": None if method.bar is None else bool(mean >= method.bar),
            }
        )
    return {"rows": rows, "seeds": [asdict(r) for r in results]}


def print_summary(summary: dict[str, Any], title: str = "Known-answer suite (FG-ARI on held-out scenes)") -> None:
    table = Table(title=title)
    for column in ("task", "method", "implementation", "seeds", "steps", "FG-ARI mean ± std", "bar", "pass", "s/seed"):
        table.add_column(column, justify="left" if column in ("task", "method", "implementation") else "right")
    for row in summary["rows"]:
        verdict = "-" if row["pass"] is None else ("[green]pass[/]" if row["pass"] else "[red]FAIL[/]")
        table.add_row(
            row["task"],
            row["method"],
            row["implementation"],
            str(len(row["seeds"])),
            str(row["steps"]),
            f"{row['fg_ari_mean']:.3f} ± {row['fg_ari_std']:.3f}",
            "-" if row["bar"] is None else f"{row['bar']:.2f}",
            verdict,
            f"{row['seconds_per_seed']:.0f}",
        )
    console.print(table)
    if "oracle" in summary:
        console.print(f"perfect masks through the evaluation path: FG-ARI {summary['oracle']['fg_ari']:.3f}")


def write_summary(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """known-answer.json (everything), known-answer.csv (the table), curves.json and curves.png (FG-ARI vs step)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "known-answer.json", "csv": out_dir / "known-answer.csv", "curves": out_dir / "curves.json", "png": out_dir / "curves.png"}
    paths["json"].write_text(json.dumps(summary, indent=2, default=float))
    columns = ["task", "method", "implementation", "seeds", "steps", "fg_ari_mean", "fg_ari_std", "ari_mean", "mbo_mean", "bar", "pass", "seconds_per_seed"]
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in summary["rows"]:
            writer.writerow({**row, "seeds": " ".join(str(s) for s in row["seeds"])})
    curves = [
        {"task": s["task"], "method": s["method"], "implementation": s["implementation"], "seed": s["seed"], "curve": s["curve"]}
        for s in summary["seeds"]
    ]
    paths["curves"].write_text(json.dumps(curves, indent=1))
    plot_curves(curves, summary["rows"], paths["png"])
    return paths


def plot_curves(curves: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per task: validation FG-ARI vs step, a line per (method, implementation, seed), bars dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(c["task"] for c in curves)) or ["none"]
    figure = Figure(figsize=(5.0 * len(tasks), 4.0), dpi=100)
    FigureCanvasAgg(figure)
    colours = {}
    for index, task in enumerate(tasks, start=1):
        axes = figure.add_subplot(1, len(tasks), index)
        for curve in (c for c in curves if c["task"] == task):
            label = f"{curve['method']} ({curve['implementation']})"
            colour = colours.setdefault(label, f"C{len(colours) % 10}")
            steps, values = zip(*curve["curve"]) if curve["curve"] else ((), ())
            axes.plot(steps, values, color=colour, alpha=0.8, label=label if curve["seed"] == min(c["seed"] for c in curves if c["task"] == task) else None)
        for row in (r for r in rows if r["task"] == task and r["bar"] is not None):
            axes.axhline(row["bar"], color="grey", linestyle="--", linewidth=1)
        axes.set_title(task)
        axes.set_xlabel("step")
        axes.set_ylabel("validation FG-ARI")
        axes.set_ylim(-0.05, 1.05)
        axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


__all__ = [
    "FEATCACHE_METHODS",
    "KnownAnswerData",
    "Method",
    "PerfectSlotsModel",
    "SceneSpec",
    "Scenes",
    "SeedResult",
    "build_data",
    "featcache_methods",
    "make_scenes",
    "one_hot_masks",
    "oracle_scores",
    "patch_labels",
    "pixel_masks",
    "print_summary",
    "run_suite",
    "score_labels",
    "summarise",
    "write_known_answer_store",
    "write_summary",
]
