"""OCL training from the cache and evaluation: configs, determinism, resume, NaN guard, online parity, metrics."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr
from safetensors.torch import load_file
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from featcache.cli import app
from featcache.config import load_config, merge
from featcache.datasets import open_dataset, write_synthetic
from featcache.errors import ConfigError, FeatcacheError
from featcache.extraction import ExtractConfig, extract
from featcache.metrics.protocols import labels_from_patch_masks
from featcache.stages.evaluate import evaluate_run
from featcache.store import FeatureStore, schema
from featcache.training.config import OCLTrainConfig
from featcache.training.ocl import train_ocl
from featcache.training.runs import build_ocl_model, evaluation_generator, load_ocl_run, resolve_feature_kind

CONFIGS = Path(__file__).parent.parent / "configs" / "ocl"


def tiny_config(name: str = "dinosaur-mlp", steps: int = 20, **changes: object) -> OCLTrainConfig:
    config = load_config(OCLTrainConfig, [CONFIGS / f"{name}.yaml", CONFIGS / "tiny.yaml"])
    train = {"steps": steps, "batch_size": 8, "log_every": 5, "checkpoint_every": 10, "loader": "memory"}
    return replace(merge(config, {"train": train, "validate_every": 10, "validation_images": 8}), **changes)


@pytest.fixture(scope="module")
def store(ocl_store: Path) -> Path:
    """The shared 4x4-grid store with token sets vvo-c256 and vvo-c4 (tests/conftest.py)."""
    return ocl_store


#: Layer presets: not runnable alone, layered after every method config.
PRESETS = ("tiny", "random-vfm", "known-answer", "tiny-video")


#: Image configs; the temporal ones (model.temporal.enabled) run on a clip store in tests/test_temporal.py.
SHIPPED = sorted(p for p in CONFIGS.glob("*.yaml") if p.stem not in PRESETS and "temporal:" not in p.read_text())


#: Configs whose paper-size step runs only in the slow test below (test_paper_size_configs_run_one_train_ocl_step):
#: the paper-size SD UNet of Dfz costs 5-20 s per step on a 2-core machine; the default suite builds and steps their
#: tiny versions here, and vvo-dfzt's paper size is likewise slow in test_temporal.py.
PAPER_SIZE_SLOW = ("vvo-dfz", "vvo-dfz-sa")


def paper_size_step(store: Path, config: OCLTrainConfig) -> float:
    """One Adam step of the config's model on two stored views, without a run folder: at paper sizes (an SD UNet
    for Dfz) writing train_ocl's checkpoint took most of the time (vvo-dfz: ~7 of 12 s)."""
    reader = FeatureStore(store, warn_random=False)
    model = build_ocl_model(config, reader).train()
    indices = reader.valid_indices()[:1]  # one view: the paper-size model (an SD UNet for Dfz) is what costs
    features = torch.from_numpy(reader.features(indices, view="center", kind=resolve_feature_kind(reader, config.feature_kind)).astype(np.float32))
    tokens = torch.from_numpy(reader.tokens(config.tokens, indices, view="center").astype(np.int64)) if config.tokens else None
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=config.train.learning_rate)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    loss = model(features, tokens, model.draw_noise(1, torch.Generator().manual_seed(0), torch.device("cpu"))).loss
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters() if p.requires_grad)
    return loss.item()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_config_loads_and_runs_one_step(path: Path, store: Path, tmp_path: Path) -> None:
    """Paper sizes: the model builds and takes one optimizer step; + tiny (+ random-vfm): one train_ocl step each.
    (The paper-size train_ocl run with its checkpoint is test_paper_size_configs_run_one_train_ocl_step, -m slow.)"""
    tiny, random_vfm = CONFIGS / "tiny.yaml", CONFIGS / "random-vfm.yaml"
    if path.stem not in PAPER_SIZE_SLOW:
        assert np.isfinite(paper_size_step(store, load_config(OCLTrainConfig, [path])))
    teacher: dict[str, object] = {}
    if load_config(OCLTrainConfig, [path]).distill.enabled:  # SPOT self-training: a one-step spot-tfd9 teacher
        teacher = {"distill": {"teacher": str(tmp_path / "teacher")}}
        one_step = {"train": {"steps": 1, "batch_size": 2, "loader": "memory"}, "validate_every": 0}
        train_ocl(store, merge(load_config(OCLTrainConfig, [CONFIGS / "spot-tfd9.yaml", tiny]), one_step), tmp_path / "teacher", device="cpu", show_progress=False)
    for layers in ([path, tiny], [path, tiny, random_vfm]):
        config = merge(load_config(OCLTrainConfig, layers), {"train": {"steps": 1, "batch_size": 2, "loader": "memory"}, "validate_every": 0, **teacher})
        result = train_ocl(store, config, tmp_path / f"run-{len(layers)}", device="cpu", show_progress=False)
        assert result.steps == 1 and np.isfinite(result.first_losses[0])


@pytest.mark.slow  # the default suite: test_every_shipped_config_loads_and_runs_one_step (paper_size_step; Dfz configs at tiny size only)
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_paper_size_configs_run_one_train_ocl_step(path: Path, store: Path, tmp_path: Path) -> None:
    one_step = {"train": {"steps": 1, "batch_size": 2, "loader": "memory"}, "validate_every": 0}
    config = merge(load_config(OCLTrainConfig, [path]), one_step)
    if config.distill.enabled:  # SPOT self-training: a one-step paper-size spot-tfd9 teacher
        train_ocl(store, merge(load_config(OCLTrainConfig, [CONFIGS / "spot-tfd9.yaml"]), one_step), tmp_path / "teacher", device="cpu", show_progress=False)
        config = merge(config, {"distill": {"teacher": str(tmp_path / "teacher")}})
    result = train_ocl(store, config, tmp_path / "run", device="cpu", show_progress=False)
    assert result.steps == 1 and np.isfinite(result.first_losses[0])


@pytest.mark.parametrize("method", ["vvo-tfd", "spot-tfd9"])  # spot-tfd9 draws an order per sample
def test_same_seed_same_weights_and_resume_equals_uninterrupted(method: str, store: Path, tmp_path: Path) -> None:
    config = tiny_config(method)
    train_ocl(store, config, tmp_path / "a", device="cpu", show_progress=False)
    train_ocl(store, config, tmp_path / "b", device="cpu", show_progress=False, stop_after=10)
    train_ocl(store, config, tmp_path / "b", device="cpu", show_progress=False, resume=True)
    first, resumed = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    for key in first:
        torch.testing.assert_close(first[key], resumed[key], rtol=0, atol=0, msg=key)
    train_ocl(store, config, tmp_path / "c", device="cpu", show_progress=False)
    again = load_file(str(tmp_path / "c" / "model.safetensors"))
    assert all(torch.equal(first[key], again[key]) for key in first)


def flatten_saved_config(run_dir: Path) -> None:
    """Rewrite a run folder's config.yaml as featcache wrote it before the ``train`` section: its keys at the top."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    train = saved.pop("train")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**saved, **train}, sort_keys=False))


def test_a_run_folder_saved_with_flat_training_keys_evaluates_and_resumes(store: Path, tmp_path: Path) -> None:
    config = tiny_config("vvo-tfd")
    train_ocl(store, config, tmp_path / "whole", device="cpu", show_progress=False)
    old = tmp_path / "old"
    train_ocl(store, config, old, device="cpu", show_progress=False, stop_after=10)
    flatten_saved_config(old)
    assert "steps" in yaml.safe_load((old / "config.yaml").read_text())
    _, loaded, _ = load_ocl_run(old, FeatureStore(store, warn_random=False), torch.device("cpu"))
    assert loaded == config
    evaluate_run(old, protocol_name="vvo", device="cpu", out=tmp_path / "eval", show_progress=False)
    with pytest.raises(ConfigError, match=r"differs from .*config.yaml: train.steps: 20 -> 30"):
        train_ocl(store, replace(config, train=replace(config.train, steps=30)), old, device="cpu", show_progress=False, resume=True)
    # `featcache train-ocl --resume` without --config continues from the saved (flat) config alone.
    outcome = CliRunner().invoke(app, ["train-ocl", "--store", str(store), "--out", str(old), "--resume", "--device", "cpu"])
    assert outcome.exit_code == 0, outcome.output
    whole, resumed = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(old / "model.safetensors"))
    for key in whole:
        torch.testing.assert_close(whole[key], resumed[key], rtol=0, atol=0, msg=key)
    assert yaml.safe_load((old / "config.yaml").read_text())["train"]["steps"] == 20  # saved again in the new layout


def test_missing_token_set_is_a_config_error(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a token set.*vvo-c256"):
        train_ocl(store, tiny_config("vvo-tfd", tokens=""), tmp_path / "r", device="cpu", show_progress=False)


def test_non_finite_loss_stops_naming_the_step_and_checkpoint(store: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.zarr"
    shutil.copytree(store, broken)
    features = zarr.open_array(str(broken / schema.FEATURES), mode="r+")
    features[:] = np.full(features.shape, np.inf, dtype=np.float16)
    with pytest.raises(FeatcacheError, match=r"loss became nan at step 0; the last good checkpoint is .* at step 0"):
        train_ocl(broken, tiny_config(), tmp_path / "r", device="cpu", show_progress=False)


@pytest.mark.parametrize("method", ["vvo-tfd", "dinosaur-mlp"])
def test_online_baseline_matches_the_cache_in_the_first_steps(method: str, store: Path, tmp_path: Path) -> None:
    config = tiny_config(method)
    cached = train_ocl(store, config, tmp_path / "cached", device="cpu", show_progress=False, stop_after=3)
    online = train_ocl(store, config, tmp_path / "online", device="cpu", show_progress=False, stop_after=3, online=True)
    np.testing.assert_allclose(online.first_losses, cached.first_losses, rtol=2e-2)


def test_eval_metrics_match_sklearn_and_record_the_protocol(store: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train_ocl(store, tiny_config(), run, device="cpu", show_progress=False)
    result = evaluate_run(run, protocol_name="dinosaur", device="cpu", baseline=True, out=tmp_path / "eval", show_progress=False)
    assert result["protocol"]["name"] == "dinosaur" and result["protocol"]["background_in_mbo_miou"] is False
    assert result["protocol"]["resolution"] == 32 and result["random_weights"] is True
    assert (tmp_path / "eval" / "eval.json").is_file() and (tmp_path / "eval" / "masks.png").is_file()
    assert set(result["kmeans_baseline"]) >= {"ari", "fg_ari", "mbo", "miou"}
    # Independent check of FG-ARI: the model's masks scored with scikit-learn on foreground pixels.
    reader = FeatureStore(store, warn_random=False)
    model, config, info = load_ocl_run(run, reader, torch.device("cpu"))
    indices = reader.valid_indices()
    features = torch.from_numpy(reader.features(indices, view="center", kind=info["store"]["feature_kind"]))
    predicted = labels_from_patch_masks(model.predict_masks(features, None, evaluation_generator(torch.device("cpu"))), 32)
    true = reader.masks(indices, view="center").astype(np.int64)
    scores = [adjusted_rand_score(t[t > 0], p[t > 0]) for t, p in zip(true, predicted) if (t > 0).any()]
    assert result["metrics"]["fg_ari"] == pytest.approx(np.mean(scores), abs=1e-9)
    vvo = evaluate_run(run, protocol_name="vvo", device="cpu", out=tmp_path / "eval-vvo", show_progress=False)
    assert vvo["metrics"]["ari"] == pytest.approx(result["metrics"]["ari"])
    assert vvo["metrics"]["mbo"] != pytest.approx(result["metrics"]["mbo"])  # background counted or not


def test_eval_scores_the_tfd_decoder_masks_on_request(store: Path, tmp_path: Path) -> None:
    """`featcache eval --masks decoder` on a Tfd run (trained with attention masks): its last cross-attention,
    fed the store's tokens, scored with scikit-learn; the attention evaluation is kept beside it."""
    run = tmp_path / "run"
    train_ocl(store, tiny_config("vvo-tfd9", steps=4, validate_every=0), run, device="cpu", show_progress=False)
    outcome = CliRunner().invoke(app, ["eval", str(run), "--masks", "decoder", "--device", "cpu"])
    assert outcome.exit_code == 0, outcome.output
    written = json.loads((run / f"eval-{Path(store).stem}-vvo-decoder-masks" / "eval.json").read_text())
    assert written["protocol"]["mask_source"] == "decoder"
    reader = FeatureStore(store, warn_random=False)
    model, config, info = load_ocl_run(run, reader, torch.device("cpu"))
    indices = reader.valid_indices()
    features = torch.from_numpy(reader.features(indices, view="center", kind=info["store"]["feature_kind"]))
    tokens = torch.from_numpy(reader.tokens(config.tokens, indices, view="center").astype(np.int64))
    decoder_masks = model(features, tokens).decoder_masks  # eval mode: raster order, no noise
    assert decoder_masks is not None
    predicted = labels_from_patch_masks(decoder_masks, 32)
    true = reader.masks(indices, view="center").astype(np.int64)
    scores = [adjusted_rand_score(t[t > 0], p[t > 0]) for t, p in zip(true, predicted) if (t > 0).any()]
    assert written["metrics"]["fg_ari"] == pytest.approx(np.mean(scores), abs=1e-9)
    attention = evaluate_run(run, device="cpu", show_progress=False)
    assert attention["protocol"]["mask_source"] == "attention" and Path(attention["output"]).name == f"eval-{Path(store).stem}-vvo"
    diffusion_run = tmp_path / "diffusion"
    train_ocl(store, tiny_config("vvo-dfz", steps=1, validate_every=0), diffusion_run, device="cpu", show_progress=False)
    with pytest.raises(ConfigError, match="mask_source 'decoder' needs a decoder with masks; decoder dfz has none"):
        evaluate_run(diffusion_run, device="cpu", show_progress=False, mask_source="decoder")
    with pytest.raises(ConfigError, match=r"mask source \(eval --masks\) must be 'attention' or 'decoder', got 'alpha'"):
        evaluate_run(run, device="cpu", show_progress=False, mask_source="alpha")


def test_video_stores_pool_ari_over_each_clip(tmp_path: Path, ocl_extract_config: ExtractConfig) -> None:
    data = write_synthetic(tmp_path / "clips", images=2, seed=2, size=48, video=True, frames=3)
    video = tmp_path / "video.zarr"
    extract(open_dataset(str(data)), video, ocl_extract_config, device="cpu", show_progress=False)
    run = tmp_path / "run"
    train_ocl(video, tiny_config(steps=4, validate_every=0), run, device="cpu", show_progress=False)
    result = evaluate_run(run, device="cpu", show_progress=False)
    assert result["metrics"]["clips"] == 2 and -1.0 <= result["metrics"]["clip_ari"] <= 1.0 or np.isnan(result["metrics"]["clip_ari"])


def test_stream_mode_gives_the_stores_rows_with_their_tokens(store: Path) -> None:
    """Streamed batches (whole units through a buffer) hold exactly the stored features/tokens of their (sample, view)."""
    from featcache.training.loader import CachedBatches

    reader = FeatureStore(store, warn_random=False)
    batches = CachedBatches(reader, 8, torch.device("cpu"), feature_kind=None, seed=0, mode="stream", buffer_units=2, token_name="vvo-c256")
    try:
        seen = set()
        for _ in range(6):
            batch = batches.next()
            assert batch.features.shape == (8, 4, 4, 384) and batch.tokens is not None and batch.tokens.dtype == torch.int64
            for row, (sample, view) in enumerate(zip(batch.sample_indices, batch.view_indices)):
                expected = reader.features([int(sample)], view=int(view))[0].astype(np.float32)
                np.testing.assert_array_equal(batch.features[row].numpy(), expected)
                np.testing.assert_array_equal(batch.tokens[row].numpy(), reader.tokens("vvo-c256", [int(sample)], view=int(view))[0])
                seen.add(int(sample))
        assert len(seen) > 8  # draws come from several units, not one
    finally:
        batches.close()
    assert batches.mode == "stream"
