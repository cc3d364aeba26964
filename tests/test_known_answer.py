"""Known-answer learning suite (featcache.bench.known_answer).

Fast tests check that the tasks are built right: masks known by construction, tokens equal to the segments'
code ids, stores that ``train-ocl`` and ``eval`` read like any other, perfect masks scoring FG-ARI 1.0 through
the evaluation path, and the suite's table and files. The ``slow`` test runs the bar (3 seeds of every
featcache method) next to an independent reference written from the papers (below), and writes the table and
learning curves under ``runs/known-answer`` (ignored by git): ``python -m pytest -m slow tests/test_known_answer.py``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score
from torch import nn

from featcache.bench.known_answer import (
    FEATCACHE_METHODS,
    FEATURE_TOKENS,
    SMALL_TOKENS,
    KnownAnswerData,
    Method,
    SceneSpec,
    SeedResult,
    build_data,
    codebooks,
    featcache_methods,
    make_scenes,
    method_config,
    one_hot_masks,
    oracle_scores,
    patch_labels,
    pixel_masks,
    print_summary,
    run_suite,
    score_labels,
    summarise,
    write_summary,
)
from featcache.config import from_dict
from featcache.errors import FeatcacheError
from featcache.metrics.protocols import labels_from_patch_masks
from featcache.stages.evaluate import evaluate_run
from featcache.store import FeatureStore
from featcache.training.config import OCLTrainConfig, TrainSettings
from featcache.training.ocl import train_ocl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = SceneSpec()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> KnownAnswerData:
    return build_data(tmp_path_factory.mktemp("known-answer"), SPEC, train_images=96, validation_images=32)


def test_scenes_are_known_by_construction() -> None:
    scenes = make_scenes(SPEC, 200, seed=3)
    segment_codebook, _ = codebooks(SPEC)
    for labels, codes, tokens, features in zip(scenes.labels, scenes.codes, scenes.tokens, scenes.features):
        count = int(labels.max())
        assert 2 <= count <= 3 and set(np.unique(labels)) == set(range(count + 1))  # background + every rectangle
        assert all((labels == k).sum() >= SPEC.min_visible for k in range(count + 1))
        present = codes[: count + 1]
        assert len(set(present.tolist())) == count + 1 and (codes[count + 1 :] == -1).all()  # distinct ids per image
        np.testing.assert_array_equal(tokens, present[labels])
        # The segment channels are the segment's code vector (plus small noise): equal within, different across.
        np.testing.assert_allclose(features[..., : SPEC.segment_channels], segment_codebook[tokens], atol=6 * SPEC.noise)
        for k in range(count + 1):
            rows, columns = np.nonzero(labels == k)
            if k > 0:  # each rectangle's visible part lies inside its bounding box of sides 2..5
                assert rows.max() - rows.min() < SPEC.max_side and columns.max() - columns.min() < SPEC.max_side
    # The position channels are the same sinusoids in every image, and tell every patch apart.
    position = scenes.features[:, :, :, SPEC.segment_channels :]
    assert position.shape[-1] == 4 * len(SPEC.position_frequencies)
    np.testing.assert_allclose(position.std(axis=0), SPEC.noise, rtol=0.3)
    mean = position.mean(axis=0).reshape(-1, position.shape[-1])
    assert len({tuple(np.round(row, 1)) for row in mean}) == SPEC.grid**2
    again = make_scenes(SPEC, 200, seed=3)
    np.testing.assert_array_equal(again.features, scenes.features)
    assert not np.array_equal(make_scenes(SPEC, 200, seed=4).labels, scenes.labels)


def test_pixel_masks_round_trip_and_spec_checks() -> None:
    labels = make_scenes(SPEC, 5, seed=0).labels
    masks = pixel_masks(labels, 16)
    assert masks.shape == (5, 16, 16) and masks.dtype == np.uint16
    np.testing.assert_array_equal(patch_labels(masks, 8), labels)
    assert masks[0, 3, 5] == labels[0, 1, 2]
    with pytest.raises(FeatcacheError, match="multiple of the grid"):
        SceneSpec(mask_size=12)
    with pytest.raises(FeatcacheError, match="min_rectangles"):
        SceneSpec(min_rectangles=4)


def test_stores_read_like_any_store(data: KnownAnswerData) -> None:
    store = FeatureStore(data.train)
    assert not store.weights_are_random and store.layout.grid == (8, 8) and store.layout.channels == SPEC.channels
    assert store.feature_kinds == ("last_block", "final_norm") and store.layout.mask_size == 16
    assert set(store.token_names()) == {FEATURE_TOKENS, SMALL_TOKENS}
    assert store.token_completeness(FEATURE_TOKENS) == store.token_completeness(SMALL_TOKENS) == (2, 2)
    arrays = data.arrays("train")
    scenes = make_scenes(SPEC, 96, seed=0)
    np.testing.assert_array_equal(arrays["labels"], scenes.labels)
    np.testing.assert_array_equal(arrays["tokens"], scenes.tokens)
    np.testing.assert_allclose(arrays["features"], scenes.features, atol=2e-3)  # stored as float16
    np.testing.assert_array_equal(store.codebook(FEATURE_TOKENS), codebooks(SPEC)[0])
    assert store.codebook(SMALL_TOKENS).shape == (SPEC.codebook_size, 4)
    # final_norm is an identity-weight LayerNorm of the stored features.
    derived = data.arrays(kind="final_norm")["features"]
    np.testing.assert_allclose(derived.mean(-1), 0, atol=1e-4)
    # The validation store holds other scenes; building again reuses both stores.
    assert not np.array_equal(data.arrays()["labels"][:32], arrays["labels"][:32])
    assert build_data(data.train.parent, SPEC, 96, 32).train == data.train
    with pytest.raises(FeatcacheError, match="other known-answer scenes"):
        build_data(data.train.parent, SPEC, 95, 32)


def test_perfect_masks_score_one_through_the_evaluation_path(data: KnownAnswerData) -> None:
    assert oracle_scores(data, num_slots=4) == {"ari": 1.0, "fg_ari": 1.0, "mbo": 1.0, "miou": 1.0}
    arrays = data.arrays()
    perfect = one_hot_masks(arrays["labels"], 4)
    assert perfect.shape == (32, 4, 8, 8) and (perfect.sum(1) == 1).all()
    shuffled = torch.from_numpy(perfect[:, [2, 0, 3, 1]] * 0.6 + 0.1)  # any slot order, soft: still perfect
    assert score_labels(arrays["masks"], labels_from_patch_masks(shuffled, 16))["fg_ari"] == 1.0
    one_slot = np.zeros_like(arrays["masks"])
    assert score_labels(arrays["masks"], one_slot)["fg_ari"] == pytest.approx(0.0)
    # Against scikit-learn, on foreground pixels of a wrong (patch-row) segmentation.
    rows = np.broadcast_to(np.arange(16)[:, None] // 4, (32, 16, 16))
    expected = np.mean([adjusted_rand_score(t[t > 0], p[t > 0]) for t, p in zip(arrays["masks"], rows)])
    assert score_labels(arrays["masks"], rows)["fg_ari"] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("method", ["vvo-mlp", "vvo-dfz"])  # dinosaur-mlp and vvo-tfd: test_suite_runs_every_featcache_method
def test_other_shipped_configs_with_the_preset_train_and_evaluate(method: str, data: KnownAnswerData, tmp_path: Path) -> None:
    config = method_config(method, [], ["train.steps=2", "validate_every=2", "validation_images=8"])
    assert config.model.aggregator.num_slots == 4
    train_ocl(data.train, config, tmp_path / "run", device="cpu", show_progress=False, validation_store=data.validation)
    result = evaluate_run(tmp_path / "run", store_path=data.validation, device="cpu", out=tmp_path / "eval", show_progress=False)
    assert result["metrics"]["images"] == 32 and math.isfinite(result["metrics"]["fg_ari"])


def test_suite_runs_every_featcache_method_and_writes_the_table(data: KnownAnswerData, tmp_path: Path) -> None:
    overrides = ["train.steps=4", "validate_every=2", "train.log_every=2", "train.batch_size=8"]
    methods = featcache_methods(overrides=overrides, device="cpu")
    assert [(m.task, m.name, m.bar) for m in methods] == list(FEATCACHE_METHODS.values())
    assert all(m.settings["train"]["steps"] == 4 for m in methods)
    summary = run_suite(tmp_path, methods, seeds=[3], data=data)
    assert [(r["task"], r["method"], r["seeds"]) for r in summary["rows"]] == [(t, m, [3]) for t, m, _ in FEATCACHE_METHODS.values()]
    for row in summary["rows"]:
        assert row["steps"] == 4 and row["pass"] is (row["fg_ari_mean"] >= row["bar"]) and row["fg_ari_std"] == 0.0
    assert summary["oracle"]["fg_ari"] == 1.0
    for seed in summary["seeds"]:
        assert [step for step, _ in seed["curve"]] == [2, 4] and seed["curve"][-1][1] == seed["scores"]["fg_ari"]
    paths = write_summary(summary, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["rows"][0]["task"] == "perfect-slots"
    with paths["csv"].open() as handle:
        assert [row["method"] for row in csv.DictReader(handle)] == ["dinosaur-mlp", "dinosaur-mlp", "vvo-tfd"]
    assert len(json.loads(paths["curves"].read_text())) == 3 and paths["png"].stat().st_size > 1000
    print_summary(summary)
    with pytest.raises(FeatcacheError, match="unknown known-answer method"):
        featcache_methods(["segments/nope"])


def test_cli_runs_the_suite_and_reuses_finished_seeds(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from featcache.cli import app

    arguments = ["bench", "known-answer", "--method", "perfect-slots/dinosaur-mlp", "--seeds", "1", "--train-images", "32",
                 "--validation-images", "16", "--set", "train.steps=2", "--set", "validate_every=2", "--set", "train.batch_size=4",
                 "--set", "train.lr_schedule=constant", "--out", str(tmp_path)]
    outcome = CliRunner().invoke(app, arguments)
    assert outcome.exit_code == 0, outcome.output
    assert "perfect-slots" in outcome.output and (tmp_path / "known-answer.csv").is_file()
    (row,) = json.loads((tmp_path / "known-answer.json").read_text())["rows"]
    assert row["steps"] == 2 and row["bar"] == 0.9
    saved = tmp_path / "runs" / "perfect-slots--dinosaur-mlp--featcache" / "seed0" / "result.json"
    assert json.loads(saved.read_text())["settings"]["train"]["lr_schedule"] == "constant"
    stamp = saved.stat().st_mtime_ns
    assert CliRunner().invoke(app, arguments).exit_code == 0 and saved.stat().st_mtime_ns == stamp  # reused, not retrained


def test_summary_takes_mean_std_and_bar_over_seeds() -> None:
    method = Method("segments", "m", "x", 0.8, lambda *_: None)  # type: ignore[arg-type,return-value]
    results = [SeedResult("segments", "m", "x", seed, {"fg_ari": v, "ari": 0.0, "mbo": 0.0, "miou": 0.0}, [], 1.0, 10) for seed, v in enumerate((0.7, 0.9, 0.95))]
    (row,) = summarise(results, [method])["rows"]
    assert row["fg_ari_mean"] == pytest.approx(0.85) and row["fg_ari_std"] == pytest.approx(np.std([0.7, 0.9, 0.95], ddof=1))
    assert row["pass"] is True and row["seeds"] == [0, 1, 2]
    (row,) = summarise(results[:1], [method])["rows"]
    assert row["pass"] is False and row["fg_ari_std"] == 0.0


def test_perfect_slots_carry_the_ground_truth(data: KnownAnswerData) -> None:
    from featcache.bench.known_answer import PerfectSlotsModel

    config = method_config("dinosaur-mlp", [], [])
    model = PerfectSlotsModel(config, (8, 8), SPEC.channels, None)
    arrays = data.arrays()
    features, labels = torch.from_numpy(arrays["features"][:4]), torch.from_numpy(arrays["labels"][:4])
    with torch.no_grad():
        model.embedding.weight.zero_()
        model.embedding.weight[:64, :64] = torch.eye(64)  # slot dims 0..63 = the segment's patch mask
        model.embedding.bias.zero_()
        slots = model.slots(features, labels)
    assert slots.shape == (4, 4, 64)
    np.testing.assert_array_equal(slots.numpy(), one_hot_masks(arrays["labels"][:4], 4).reshape(4, 4, 64))
    loss, terms, masks = model(features, labels, None)
    assert masks.shape == (4, 4, 8, 8) and torch.isfinite(loss) and "mse_features" in terms


# ------------------------------------------------------------------------------- independent reference
# Written from the papers, not from featcache: Slot Attention (Locatello et al. 2020, Algorithm 1: shared learned
# Gaussian initialisation sampled in training and evaluation, Glorot-initialised projections as in the original
# code), DINOSAUR's spatial-broadcast MLP decoder (Seitzer et al. 2023: learned position embedding, alpha
# softmax over slots, feature MSE), and for token targets a causal Transformer decoder from torch.nn with the
# slots as memory (SLATE/VVO-Tfd: cross-entropy over codes; masks from slot attention). Same recipe as the
# featcache method it stands beside: sizes, steps, batch, lr, warm-up + schedule and clipping from its config.


class ReferenceSlotAttention(nn.Module):
    def __init__(self, slots: int, dim: int, hidden: int, iterations: int) -> None:
        super().__init__()
        self.slots, self.dim, self.iterations = slots, dim, iterations
        self.mu = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, 1, dim)))
        self.log_sigma = nn.Parameter(nn.init.xavier_uniform_(torch.empty(1, 1, dim)))
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        for layer in (self.q, self.k, self.v):
            nn.init.xavier_uniform_(layer.weight)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.norm_inputs, self.norm_slots, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (B, N, D) -> slots (B, S, D), attention (B, S, N) of the last iteration (softmax over slots)."""
        batch = inputs.shape[0]
        inputs = self.norm_inputs(inputs)
        keys, values = self.k(inputs), self.v(inputs)
        slots = self.mu + self.log_sigma.exp() * torch.randn(batch, self.slots, self.dim)
        for _ in range(self.iterations):
            previous = slots
            logits = torch.einsum("bnd,bsd->bsn", keys, self.q(self.norm_slots(slots))) / math.sqrt(self.dim)
            attention = logits.softmax(dim=1)
            weights = (attention + 1e-8) / (attention + 1e-8).sum(-1, keepdim=True)
            updates = torch.einsum("bsn,bnd->bsd", weights, values)
            slots = self.gru(updates.reshape(-1, self.dim), previous.reshape(-1, self.dim)).reshape(batch, self.slots, self.dim)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, attention


class ReferenceBroadcastDecoder(nn.Module):
    def __init__(self, dim: int, positions: int, hidden: int, layers: int, out: int) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(1, 1, positions, dim) * dim**-0.5)
        widths = [dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*blocks, nn.Linear(widths[-1], out + 1))

    def forward(self, slots: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slots (B, S, D), target (B, N, C) -> MSE loss, masks (B, S, N)."""
        output = self.mlp(slots[:, :, None, :] + self.position)  # (B, S, N, C + 1)
        alpha = output[..., -1].softmax(dim=1)
        reconstruction = (alpha[..., None] * output[..., :-1]).sum(1)
        return F.mse_loss(reconstruction, target), alpha


class ReferenceTokenDecoder(nn.Module):
    def __init__(self, slot_dim: int, dim: int, heads: int, feedforward: int, layers: int, positions: int, codes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(codes, dim)
        self.bos = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, positions, dim) * 0.02)
        self.memory = nn.Linear(slot_dim, dim)
        layer = nn.TransformerDecoderLayer(dim, heads, feedforward, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(dim))
        self.readout = nn.Linear(dim, codes)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(positions))

    def forward(self, slots: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """slots (B, S, D), tokens (B, N) -> cross-entropy of the teacher-forced prediction."""
        inputs = torch.cat([self.bos.expand(tokens.shape[0], -1, -1), self.embed(tokens[:, :-1])], dim=1) + self.position
        hidden = self.decoder(inputs, self.memory(slots), tgt_mask=self.causal, tgt_is_causal=True)
        return F.cross_entropy(self.readout(hidden).flatten(0, 1), tokens.flatten())


def reference_lr(train: TrainSettings, step: int) -> float:
    """The config's schedule, written out here: linear warm-up from 0, then cosine / constant / halving."""
    warmup = train.warmup_steps if train.warmup_steps is not None else int(train.warmup_fraction * train.steps)
    if step < warmup:
        return train.learning_rate * step / warmup
    if train.lr_schedule == "constant":
        return train.learning_rate
    if train.lr_schedule == "exponential":
        return train.learning_rate * 0.5 ** ((step - warmup) / train.lr_half_life)
    final = train.learning_rate * train.final_lr_ratio
    return final + (train.learning_rate - final) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (train.steps - warmup)))


class ReferenceModel(nn.Module):
    def __init__(self, task: str, config: OCLTrainConfig, channels: int, codes: int) -> None:
        super().__init__()
        model, aggregator = config.model, config.model.aggregator
        self.task, dim, positions = task, aggregator.slot_dim, 64
        if task == "perfect-slots":
            self.embedding = nn.Linear(positions + channels, dim)
        else:
            self.projection = nn.Sequential(
                nn.LayerNorm(channels), nn.Linear(channels, model.projection_hidden), nn.ReLU(), nn.Linear(model.projection_hidden, dim)
            )
            self.slot_attention = ReferenceSlotAttention(aggregator.num_slots, dim, aggregator.mlp_hidden, aggregator.iterations)
        if task == "tokens":
            tfd = model.decoder.tfd
            self.decoder: nn.Module = ReferenceTokenDecoder(dim, tfd.dim, tfd.heads, tfd.feedforward, tfd.layers, positions, codes)
        else:
            self.decoder = ReferenceBroadcastDecoder(dim, positions, model.decoder.mlp.hidden, model.decoder.mlp.layers, channels)
        self.num_slots = aggregator.num_slots

    def forward(self, features: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> loss, masks (B, S, h, w): decoder alphas (Mlp) or slot attention (tokens)."""
        flat = features.flatten(1, 2)  # (B, N, C)
        if self.task == "perfect-slots":
            masks = (labels.flatten(1)[:, None] == torch.arange(self.num_slots)[None, :, None]).float()  # (B, S, N)
            means = masks @ flat / masks.sum(-1, keepdim=True).clamp(min=1)
            slots, attention = self.embedding(torch.cat([masks, means], -1)), None
        else:
            slots, attention = self.slot_attention(self.projection(flat))
        if self.task == "tokens":
            return self.decoder(slots, tokens.flatten(1)), attention.reshape(-1, self.num_slots, 8, 8)
        loss, alpha = self.decoder(slots, flat)
        return loss, alpha.reshape(-1, self.num_slots, 8, 8)


def reference_method(featcache_method: Method) -> Method:
    """The independent reference trained with ``featcache_method``'s recipe (its resolved config)."""
    config = from_dict(OCLTrainConfig, featcache_method.settings)
    settings = config.train

    def run(data: KnownAnswerData, seed: int, run_dir: Path) -> SeedResult:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        kind = "last_block" if featcache_method.task != "tokens" else config.feature_kind
        train, validation = data.arrays("train", kind), data.arrays("validation", kind)
        model = ReferenceModel(featcache_method.task, config, train["features"].shape[-1], data.spec.codebook_size)
        optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        tensors = {name: torch.from_numpy(array) for name, array in train.items()}
        val = {name: torch.from_numpy(array) for name, array in validation.items()}

        def evaluate() -> float:
            with torch.no_grad():
                masks = model(val["features"], val["labels"], val["tokens"])[1]
            predicted = F.interpolate(masks, size=(data.spec.mask_size,) * 2, mode="bilinear", align_corners=False).argmax(1).numpy()
            truth = validation["masks"]
            return float(np.mean([adjusted_rand_score(t[t > 0], p[t > 0]) for t, p in zip(truth, predicted)]))

        curve, started = [], time.perf_counter()
        for step in range(settings.steps):
            for group in optimizer.param_groups:
                group["lr"] = reference_lr(settings, step)
            batch = rng.integers(0, len(tensors["features"]), size=settings.batch_size)
            loss = model(tensors["features"][batch], tensors["labels"][batch], tensors["tokens"][batch])[0]
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            if (step + 1) % config.validate_every == 0 or step + 1 == settings.steps:
                curve.append((step + 1, evaluate()))
        seconds = time.perf_counter() - started
        fg_ari = curve[-1][1]
        scores = {"fg_ari": fg_ari, "ari": float("nan"), "mbo": float("nan"), "miou": float("nan")}
        return SeedResult(featcache_method.task, featcache_method.name, "reference", seed, scores, curve, seconds, settings.steps)

    return Method(featcache_method.task, featcache_method.name, "reference", featcache_method.bar, run, featcache_method.settings)


def test_reference_learns_the_shape_of_the_task(data: KnownAnswerData) -> None:
    """The reference's pieces run and its schedule follows the config (a smoke test; its results are in the slow test)."""
    for method in featcache_methods(overrides=["train.steps=3", "validate_every=3", "train.batch_size=4"]):
        result = reference_method(method).run(data, 0, Path("unused"))
        assert result.steps == 3 and [s for s, _ in result.curve] == [3] and math.isfinite(result.fg_ari)
    train = TrainSettings(steps=100, batch_size=32, learning_rate=1.0)
    assert reference_lr(train, 0) == 0.0 and reference_lr(train, 5) == 1.0 and reference_lr(train, 100) == pytest.approx(1e-3)
    assert reference_lr(replace(train, lr_schedule="constant"), 99) == 1.0


@pytest.mark.slow
def test_known_answer_bar() -> None:
    """The bar: featcache and the reference, 3 seeds each, with the shipped configs + the known-answer preset
    (plus KNOWN_ANSWER_SET="key=value ..." overrides); writes runs/known-answer/<label>/ and asserts featcache's bars."""
    overrides = os.environ.get("KNOWN_ANSWER_SET", "").split()
    label = os.environ.get("KNOWN_ANSWER_LABEL", "default")
    out = Path(__file__).resolve().parent.parent / "runs" / "known-answer" / label
    methods = featcache_methods(overrides=overrides, device="cpu")
    methods += [reference_method(method) for method in methods]
    summary = run_suite(out, methods, seeds=[0, 1, 2], spec=SPEC, train_images=1024, validation_images=256)
    summary["overrides"] = overrides
    write_summary(summary, out)
    print_summary(summary)
    failed = [f"{r['task']}/{r['method']}: {r['fg_ari_mean']:.3f} < {r['bar']}" for r in summary["rows"] if r["implementation"] == "featcache" and r["pass"] is False]
    assert not failed, "known-answer bar not reached: " + "; ".join(failed)
