"""Temporal (video) OCL models from cached clip stores: the model, the clip-window loader, training and evaluation.

The recurrence's parity with the official VVO code is tests/test_parity_temporal.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from featcache.aggregators import AggregatorConfig
from featcache.config import load_config, merge
from featcache.datasets import open_dataset, write_synthetic
from featcache.decoders import DecoderConfig
from featcache.errors import ConfigError, FeatcacheError, StoreError
from featcache.extraction import extract
from featcache.ocl import OCLModel
from featcache.ocl.config import OCLModelConfig, TemporalConfig
from featcache.ocl.temporal import TemporalOCLModel, boxes_from_masks, frame_config
from featcache.stages.evaluate import evaluate_run
from featcache.store import FeatureStore
from featcache.training.clips import ClipBatches, clip_table, evaluation_clips, window_starts
from featcache.training.config import OCLTrainConfig
from featcache.training.ocl import train_ocl
from tests.conftest import OCL_EXTRACT, single_torch_thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).parent.parent / "configs" / "ocl"
#: The temporal configs, run with tiny-video.yaml on the clip store.
VIDEO_CONFIGS = ("vvo-tfdt", "vvo-mlpt", "vvo-dfzt", "videosaur-mlp")


@pytest.fixture(scope="module")
def clip_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic clips of 6 frames (4 x 4 grid), with token sets vvo-c256 and vvo-c4 as the shipped configs name."""
    from featcache.quantize import QuantizerConfig, VQDecoderConfig
    from featcache.training.config import TrainSettings, VQTrainConfig
    from featcache.training.tokenize import tokenize_store
    from featcache.training.vq import train_vq

    root = tmp_path_factory.mktemp("clips")
    data = write_synthetic(root / "data", images=5, seed=3, size=48, video=True, frames=6)
    out = root / "clips.zarr"
    with single_torch_thread():
        extract(open_dataset(f"clips:{data}"), out, OCL_EXTRACT, device="cpu", show_progress=False)
        for name, code_dim in (("vvo-c256", 8), ("vvo-c4", 4)):
            vq = VQTrainConfig(
                quantizer=QuantizerConfig(codebook_size=16, code_dim=code_dim, template_dim=8, encoder_layers=1, encoder_channels=16),
                decoder=VQDecoderConfig(target="pixels", channels=8, image_size=32),
                train=TrainSettings(steps=2, batch_size=8, learning_rate=2e-3, log_every=1, checkpoint_every=2, loader="memory"),
            )
            train_vq(out, vq, root / f"vq-{name}", device="cpu", show_progress=False)
            tokenize_store(out, root / f"vq-{name}", name, device="cpu", show_progress=False)
        msf = merge(vq, {"quantizer": {"kind": "msf", "codebook_size": 8}})  # MSF token set: (shared, specified) per position
        train_vq(out, msf, root / "vq-msf", device="cpu", show_progress=False)
        tokenize_store(out, root / "vq-msf", "msf", device="cpu", show_progress=False)
    return out


def video_config(name: str = "vvo-tfdt", steps: int = 4, **train: object) -> OCLTrainConfig:
    config = load_config(OCLTrainConfig, [CONFIGS / f"{name}.yaml", CONFIGS / "tiny-video.yaml"])
    settings = {"steps": steps, "batch_size": 2, "log_every": 2, "checkpoint_every": 2, "loader": "memory", **train}
    return merge(config, {"train": settings, "validate_every": 0})


def small_model(transit: str = "transformer", query_init: str = "learned", decoder: str = "mlp") -> TemporalOCLModel:
    config = OCLModelConfig(
        aggregator=AggregatorConfig(num_slots=4, slot_dim=16, mlp_hidden=32, mlp_dropout=0.0),
        decoder=DecoderConfig(name=decoder, target="features"),
        projection_hidden=32,
        projection_dropout=0.0,
        temporal=TemporalConfig(enabled=True, transit=transit, query_init=query_init, transit_dropout=0.0),
    )
    torch.manual_seed(0)
    return TemporalOCLModel(config, 8, (4, 4))


@pytest.mark.parametrize("transit", ["none", "transformer", "videosaur"])
@pytest.mark.parametrize("query_init", ["learned", "bbox"])
def test_shapes_and_gradients(transit: str, query_init: str) -> None:
    model = small_model(transit, query_init)
    features = torch.randn(2, 3, 4, 4, 8)
    boxes = torch.rand(2, 4, 4) if query_init == "bbox" else None
    output = model(features, None, model.draw_noise(2, 3, torch.Generator().manual_seed(0), features.device), boxes)
    assert output.slots.shape == (2, 3, 4, 16) and output.masks.shape == (2, 3, 4, 4, 4)
    torch.testing.assert_close(output.attention_masks.sum(2), torch.ones(2, 3, 4, 4))
    output.loss.backward()
    if model.transit is not None:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transit.parameters())
    if query_init == "bbox":
        assert model.box_queries[0].weight.grad.abs().sum() > 0
        with pytest.raises(FeatcacheError, match=r"needs the first frame's boxes \(B, 4, 4\)"):
            model(features)


def test_transit_none_equals_the_image_model_frame_by_frame() -> None:
    """Same weights, fresh queries every frame: the temporal model is the image model on each frame."""
    model = small_model("none").eval()
    image = OCLModel(frame_config(model.config), 8, (4, 4))
    image.load_state_dict({k[len("frame."):]: v for k, v in model.state_dict().items()})
    image.eval()
    features = torch.randn(2, 3, 4, 4, 8)
    with torch.no_grad():
        clip = model(features)
        frames = image(features.flatten(0, 1))
    torch.testing.assert_close(clip.slots.flatten(0, 1), frames.slots)
    torch.testing.assert_close(clip.masks.flatten(0, 1), frames.masks)
    torch.testing.assert_close(clip.loss, frames.loss)
    # with the transit the later frames differ, the first does not
    recurrent = small_model("transformer").eval()
    recurrent.frame.load_state_dict(image.state_dict())
    with torch.no_grad():
        slots = recurrent(features).slots
    torch.testing.assert_close(slots[:, 0], clip.slots[:, 0])
    assert (slots[:, 1:] - clip.slots[:, 1:]).abs().max() > 1e-3


def test_training_noise_draws_first_frame_only_with_a_transit() -> None:
    model = small_model("transformer").train()
    assert model.draw_noise(2, 3, None, torch.device("cpu"))["aggregator"]["slots"].shape == (2, 4, 16)
    assert small_model("none").train().draw_noise(2, 3, None, torch.device("cpu"))["aggregator"]["slots"].shape == (6, 4, 16)
    assert small_model("transformer", "bbox").train().draw_noise(2, 3, None, torch.device("cpu"))["aggregator"] == {}


def test_boxes_from_masks_match_hand_computed() -> None:
    mask = np.zeros((8, 8), np.uint16)
    mask[1:3, 2:6] = 1  # rows 1-2, cols 2-5
    mask[5, 7] = 3  # one pixel at row 5, col 7
    mask[0, 0] = 65535  # ignore pixel: no instance
    boxes = boxes_from_masks(mask, 4)
    expected = np.array([[2 / 8, 1 / 8, 6 / 8, 3 / 8], [0, 0, 0, 0], [7 / 8, 5 / 8, 1, 6 / 8], [0, 0, 0, 0]], np.float32)
    np.testing.assert_allclose(boxes, expected)
    assert boxes_from_masks(np.stack([mask, np.zeros_like(mask)]), 2).shape == (2, 2, 4)
    assert boxes_from_masks(mask, 2)[1].tolist() == [0, 0, 0, 0]  # instance 3 dropped with 2 slots


def test_window_starts_follow_vvo_strided_slicing() -> None:
    # VVO StridedRandomSlice1: start = randint(0, ceil(T / size) - 1) * size, T a multiple of size
    assert window_starts(24, 6, "strided").tolist() == [0, 6, 12, 18]
    assert window_starts(8, 3, "strided").tolist() == [0, 3]  # no partial window at 6
    assert window_starts(5, 3, "any").tolist() == [0, 1, 2]
    assert window_starts(4, 4, "strided").tolist() == [0]


def test_loader_windows_are_strided_and_within_one_clip(clip_store: Path) -> None:
    store = FeatureStore(clip_store, warn_random=False)
    table = clip_table(store)
    assert len(table) == 5 and all(len(frames) == 6 for frames in table.values())
    for clip, frames in table.items():
        assert set(np.array(store.clip_ids)[frames]) == {clip} and store.frame_indices[frames].tolist() == list(range(6))
    assert [len(evaluation_clips(store, limit)) for limit in (1, 7, 12, None)] == [1, 1, 2, 5]  # whole clips, >= 1
    temporal = TemporalConfig(enabled=True, window=3, query_init="bbox")
    batches = ClipBatches(store, 4, torch.device("cpu"), temporal, num_slots=8, seed=0, token_name="vvo-c256", mode="memory")
    streamed = ClipBatches(store, 4, torch.device("cpu"), temporal, num_slots=8, seed=0, token_name="vvo-c256", mode="stream")
    clip_ids, frames_of = np.array(store.clip_ids), store.frame_indices
    for _ in range(5):
        batch, other = batches.next(), streamed.next()
        assert batch.features.shape == (4, 3, 4, 4, 384) and batch.tokens.shape == (4, 3, 4, 4) and batch.boxes.shape == (4, 8, 4)
        torch.testing.assert_close(batch.features, other.features, rtol=0, atol=0)  # memory and stream give the same batches
        for row, view in zip(batch.sample_indices, batch.view_indices):
            assert len(set(clip_ids[row])) == 1  # one clip
            assert frames_of[row].tolist() in ([0, 1, 2], [3, 4, 5])  # strided window starts 0 or 3
            assert store.view_names[view] in ("center", "center-flip")  # views cut alike in every frame
        row, view = batch.sample_indices[1], batch.view_indices[1]
        np.testing.assert_array_equal(batch.features[1].numpy(), store.features(row, view=int(view)).astype(np.float32))
        np.testing.assert_array_equal(batch.boxes[1].numpy(), boxes_from_masks(store.masks([row[0]], view=int(view))[0], 8))


def test_temporal_config_on_an_image_store_is_refused(ocl_store: Path, tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="holds images; the config's model.temporal.enabled needs a video store"):
        train_ocl(ocl_store, video_config(), tmp_path / "run", device="cpu", show_progress=False)


def test_resume_equals_uninterrupted_and_eval_scores_clips(clip_store: Path, tmp_path: Path) -> None:
    config = video_config("vvo-tfdt", steps=4)
    train_ocl(clip_store, config, tmp_path / "a", device="cpu", show_progress=False)
    train_ocl(clip_store, config, tmp_path / "b", device="cpu", show_progress=False, stop_after=2)
    train_ocl(clip_store, config, tmp_path / "b", device="cpu", show_progress=False, resume=True)
    first, resumed = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert any(key.startswith("transit.") for key in first) and any(key.startswith("box_queries.") for key in first)
    for key in first:
        torch.testing.assert_close(first[key], resumed[key], rtol=0, atol=0, msg=key)
    result = evaluate_run(tmp_path / "a", device="cpu", show_progress=False, protocol_name="vvo-code")
    metrics = result["metrics"]
    assert metrics["clips"] == 5 and metrics["images"] == 30
    assert all(np.isfinite(metrics[name]) for name in ("ari", "fg_ari", "mbo", "miou"))  # vvo-code: pooled per clip
    assert result["protocol"]["transit"] == "transformer" and (Path(result["output"]) / "eval.json").is_file()


def test_eval_per_clip_metrics_equal_scoring_the_clip_masks_directly(clip_store: Path, tmp_path: Path) -> None:
    """eval's per-frame and per-clip numbers are those of the model's whole-clip masks scored by score_masks."""
    from featcache.metrics.protocols import get_protocol, labels_from_patch_masks, score_masks
    from featcache.training.runs import evaluation_generator, load_ocl_run

    config = video_config("videosaur-mlp", steps=2)
    train_ocl(clip_store, config, tmp_path / "run", device="cpu", show_progress=False)
    result = evaluate_run(tmp_path / "run", device="cpu", show_progress=False, protocol_name="vvo")
    store = FeatureStore(clip_store, warn_random=False)
    model, _, _ = load_ocl_run(tmp_path / "run", store, torch.device("cpu"))
    protocol = get_protocol("vvo")
    frame_ari, clip_ari = [], []
    generator = evaluation_generator(torch.device("cpu"))  # one generator over the clips, in clip order, as eval
    for frames in clip_table(store).values():
        features = torch.from_numpy(store.features(frames, view="center", kind="last_block").astype(np.float32))[None]
        masks = model.predict_masks(features, generator=generator)[0]  # (T, S, h, w)
        predicted, true = labels_from_patch_masks(masks, store.layout.mask_size), store.masks(frames, view="center").astype(np.int64)
        frame_ari.extend(score_masks(true, predicted, protocol)["ari"])
        clip_ari.append(score_masks(true[None], predicted[None], protocol)["ari"][0])
    assert result["metrics"]["ari"] == pytest.approx(np.nanmean(frame_ari), abs=1e-9)
    assert result["metrics"]["clip_ari"] == pytest.approx(np.nanmean(clip_ari), abs=1e-9)
    # The drawn clips show the whole-clip masks that were scored (4 clips by default: a PNG and a GIF each).
    assert len(result["clip_pictures"]) == 8 and all((Path(result["output"]) / path).is_file() for path in result["clip_pictures"])


@pytest.mark.parametrize("name", VIDEO_CONFIGS)
def test_every_video_config_runs_one_step_on_a_clip_store(name: str, clip_store: Path, tmp_path: Path) -> None:
    """Each temporal config + tiny-video: one train_ocl step with a validation (whole clips) on the clip store."""
    result = train_ocl(clip_store, replace(video_config(name, steps=1), validate_every=1), tmp_path / "run", device="cpu", show_progress=False)
    assert result.steps == 1 and np.isfinite(result.first_losses[0])


@pytest.mark.parametrize("name", [*VIDEO_CONFIGS[:2], pytest.param("vvo-dfzt", marks=pytest.mark.slow), VIDEO_CONFIGS[3]])
def test_video_configs_at_paper_size_take_a_step(name: str, clip_store: Path) -> None:
    """Paper sizes: the model builds and takes a backward pass on one 2-frame clip (vvo-dfzt's SD UNet: -m slow)."""
    from featcache.training.runs import build_ocl_model, resolve_feature_kind

    paper = load_config(OCLTrainConfig, [CONFIGS / f"{name}.yaml"])
    store = FeatureStore(clip_store, warn_random=False)
    model = build_ocl_model(paper, store).train()
    frames = clip_table(store)[store.clip_ids[0]][:2]
    features = torch.from_numpy(store.features(frames, view="center", kind=resolve_feature_kind(store, paper.feature_kind)).astype(np.float32))[None]
    tokens = torch.from_numpy(store.tokens(paper.tokens, frames, view="center").astype(np.int64))[None] if paper.tokens else None
    boxes = torch.from_numpy(boxes_from_masks(store.masks(frames[:1], view="center"), model.num_slots)) if model.needs_boxes else None
    loss = model(features, tokens, model.draw_noise(1, 2, torch.Generator().manual_seed(0), torch.device("cpu")), boxes).loss
    loss.backward()
    assert np.isfinite(loss.item()) and model.frame.aggregator.to_keys.weight.grad.abs().sum() > 0


def test_online_clips_match_the_cache_in_the_first_steps(clip_store: Path, tmp_path: Path) -> None:
    """--online for video: the VFM (and VQ) run on each window's frames every step, same windows as the cache."""
    config = replace(video_config("vvo-tfdt", steps=3), model=replace(video_config().model, projection_dropout=0.0))
    cached = train_ocl(clip_store, config, tmp_path / "cached", device="cpu", show_progress=False)
    online = train_ocl(clip_store, config, tmp_path / "online", device="cpu", show_progress=False, online=True)
    np.testing.assert_allclose(online.first_losses, cached.first_losses, rtol=2e-2)


def test_fused_seeds_refuse_temporal_configs(tmp_path: Path) -> None:
    from featcache.training.config import with_seed
    from featcache.training.fused import check_fusable

    config = video_config()
    with pytest.raises(ConfigError, match="fused seeds train image models only"):
        check_fusable([with_seed(config, 0), with_seed(config, 1)], [tmp_path / "a", tmp_path / "b"])


def test_temporal_models_read_msf_token_sets(clip_store: Path, tmp_path: Path) -> None:
    """MSF tokens (two indices per position) guide a temporal Tfd: windows (B, T, 2, h, w), the fused codes per frame."""
    config = merge(video_config("vvo-tfdt", steps=2), {"tokens": "msf"})
    result = train_ocl(clip_store, config, tmp_path / "run", device="cpu", show_progress=False)
    assert result.steps == 2 and np.isfinite(result.first_losses[0])
    metrics = evaluate_run(tmp_path / "run", device="cpu", show_progress=False, protocol_name="vvo", clip_pictures=0)["metrics"]
    assert metrics["clips"] == 5 and np.isfinite(metrics["clip_ari"])


def test_a_sweep_over_temporal_configs_trains_evaluates_and_skips_finished_runs(clip_store: Path, tmp_path: Path) -> None:
    """Sweeps run temporal configs as image ones (cases x seeds, eval per clip, a second call runs nothing);
    --fuse-seeds is refused before any run, naming the configuration."""
    import yaml

    from featcache.sweeps import load_sweep_spec, run_sweep

    spec_file = tmp_path / "video.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "video", "store": str(clip_store),
        "base": [str(CONFIGS / "vvo-tfdt.yaml"), str(CONFIGS / "tiny-video.yaml")],
        "set": {"train.steps": 2, "train.batch_size": 2, "train.log_every": 1, "train.checkpoint_every": 2, "train.loader": "memory",
                "validate_every": 0},
        "cases": [{"name": "transit", "set": {}}, {"name": "frame-by-frame", "set": {"model.temporal.transit": "none"}}],
        "seeds": 1, "data_seed": 0, "eval": {"protocol": "vvo", "clip_pictures": 0},
    }, sort_keys=False))
    spec = load_sweep_spec(spec_file)
    with pytest.raises(ConfigError, match="configuration transit: --fuse-seeds: fused seeds train image models only"):
        run_sweep(spec, out=tmp_path / "fused", device="cpu", show_progress=False, fuse_seeds=True)
    result = run_sweep(spec, out=tmp_path / "sweep", device="cpu", show_progress=False)
    assert (result.ran, result.failed) == (2, [])
    assert all(row["eval_images"] == 30 and np.isfinite(row["metrics"]["clip_ari"]) for row in result.rows)  # 5 whole clips
    again = run_sweep(spec, out=tmp_path / "sweep", device="cpu", show_progress=False)
    assert (again.ran, again.skipped) == (0, 2)
