"""Metric protocols against the anchors' own metric code: VVO (vvo-code), OCLF (oclf), videosaur (videosaur,
videosaur-instances).

The fixture holds seeded label maps and the numbers the official code computes on them (VVO's MetricWrap with
its configs' metric_fn_v and AverageLog, OCLF's ARIMetric / UnsupervisedMaskIoUMetric, videosaur's
ImageARI / VideoARI / ImageIoU / VideoIoU): 24 images with 4 without foreground (VVO batches 16 + a last
partial 8), 20 VOC-style images with 255 boundary rings, 6 video clips (VVO batches 4 + 2 clips), and 6
larger clips where VVO's int64 ARI products wrap around. Each case runs through ``evaluate_masks`` as
``featcache eval`` does.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from featcache.datasets.base import IGNORE_LABEL
from featcache.errors import FeatcacheError
from featcache.metrics import MetricInputError, adjusted_rand_index, mean_of_batch_means, object_discovery_metrics
from featcache.metrics.protocols import METRIC_NAMES, PROTOCOLS, MaskMetrics, Protocol, evaluate_masks, get_protocol, score_masks
from tests.parity import fixture_config, load_fixture

FIXTURE = "metrics_protocols"
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    tensors, metadata = load_fixture(FIXTURE)
    return tensors, fixture_config(metadata)


def _case(fixture, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) int64 label maps of a case, 255 -> featcache's ignore label, large clips upsampled."""
    tensors, config = fixture
    true = tensors["input"][f"{name}.true"].numpy().astype(np.int64)
    predicted = tensors["input"][f"{name}.predicted"].numpy().astype(np.int64)
    if name == "video_large":
        factor = config["video_large_upsample"]
        true, predicted = (np.repeat(np.repeat(a, factor, -2), factor, -1) for a in (true, predicted))
    true[true == config["voc_ignore_value"]] = IGNORE_LABEL
    return true, predicted


def _official(fixture, case: str) -> dict[str, dict[str, float]]:
    """{protocol: {summary key: official number}} of a case."""
    tensors, _ = fixture
    numbers: dict[str, dict[str, float]] = {}
    for key, value in tensors["output"].items():
        name, protocol, metric = key.split(".")
        if name == case:
            numbers.setdefault(protocol, {})[metric] = float(value)
    return numbers


class _ArrayStore:
    """The slice of FeatureStore that evaluate_masks reads, over in-memory label maps (frames of clips when
    ``clips`` is set); a sample's "feature" is its index, from which the predictor looks its masks up."""

    def __init__(self, true: np.ndarray, clips: list[str] | None) -> None:
        self.true = true
        self.has_masks = True
        self.path = Path("memory")
        self.layout = SimpleNamespace(mask_size=true.shape[-1])
        self.clip_ids = clips
        self.stored_kind = "memory"

    def features(self, indices: np.ndarray, view: str) -> np.ndarray:
        return np.asarray(indices, dtype=np.float32)[:, None]

    def masks(self, indices: np.ndarray, view: str) -> np.ndarray:
        return self.true[indices]


def _evaluate(true: np.ndarray, predicted: np.ndarray, protocol: Protocol) -> dict[str, float]:
    """``featcache eval``'s scoring of label maps (B, H, W) or clips (B, T, H, W), in featcache batches of 5."""
    clips = None
    if true.ndim == 4:
        b, t = true.shape[:2]
        clips = [f"clip{c}" for c in range(b) for _ in range(t)]
        true, predicted = true.reshape(b * t, *true.shape[2:]), predicted.reshape(b * t, *predicted.shape[2:])
    slots = int(predicted.max()) + 1

    def predict(features: torch.Tensor, tokens: None) -> torch.Tensor:
        rows = torch.from_numpy(predicted[features[:, 0].long().numpy()])
        return torch.nn.functional.one_hot(rows, slots).permute(0, 3, 1, 2).float()  # (B, S, M, M): upsampling is the identity

    store = _ArrayStore(true, clips)
    metrics, _ = evaluate_masks(predict, store, np.arange(len(true)), protocol, None, None, torch.device("cpu"), batch_size=5)  # type: ignore[arg-type]
    return metrics.summary()


CASES = {
    "images24": ("vvo-code", "oclf", "videosaur", "videosaur-instances"),
    "voc": ("vvo-code", "oclf", "videosaur-instances"),
    "video": ("vvo-code", "oclf", "videosaur", "videosaur-instances"),
    "video_large": ("vvo-code", "videosaur"),
}


@pytest.mark.parametrize("case,protocol", [(case, protocol) for case, protocols in CASES.items() for protocol in protocols])
def test_protocol_reproduces_the_official_numbers(fixture, case: str, protocol: str) -> None:
    true, predicted = _case(fixture, case)
    if protocol == "oclf" and true.ndim == 4:  # OCLF's MOVi evaluation scores frames as images
        true, predicted = true.reshape(-1, *true.shape[2:]), predicted.reshape(-1, *predicted.shape[2:])
    summary = _evaluate(true, predicted, get_protocol(protocol))
    official = _official(fixture, case)[protocol]
    assert official, f"fixture has no numbers for {case}/{protocol}"
    for metric, expected in official.items():
        assert summary[metric] == pytest.approx(expected, abs=TOLERANCE), f"{case}/{protocol}/{metric}: {summary[metric]} vs official {expected}"


def test_featcache_protocols_depart_where_the_anchors_differ(fixture) -> None:
    """featcache's own protocols stay as they were; each departure from an anchor is visible on its case."""
    true, predicted = _case(fixture, "images24")
    dinosaur = _evaluate(true, predicted, get_protocol("dinosaur"))
    official = _official(fixture, "images24")
    # Images without foreground: featcache and videosaur's instance-mask configs skip them, OCLF scores them 1.0.
    assert dinosaur["fg_ari"] == pytest.approx(official["videosaur-instances"]["fg_ari"], abs=TOLERANCE)
    assert official["oclf"]["fg_ari"] - dinosaur["fg_ari"] > 0.1
    assert dinosaur["mbo"] == pytest.approx(official["oclf"]["mbo"], abs=TOLERANCE)
    # VVO averages batch means (16 + 8 images); featcache's vvo averages images.
    vvo = _evaluate(true, predicted, get_protocol("vvo"))
    assert abs(vvo["fg_ari"] - official["vvo-code"]["fg_ari"]) > 1e-3
    # VOC boundaries: featcache drops them, VVO's loader makes them background.
    true, predicted = _case(fixture, "voc")
    vvo_voc = _evaluate(true, predicted, get_protocol("vvo"))
    assert abs(vvo_voc["mbo"] - _official(fixture, "voc")["vvo-code"]["mbo"]) > 1e-3
    # Video: featcache's vvo scores frames (plus a pooled clip_ari); VVO pools all four metrics per clip.
    true, predicted = _case(fixture, "video")
    vvo_video = _evaluate(true, predicted, get_protocol("vvo"))
    assert set(vvo_video) == {*METRIC_NAMES, "clip_ari", "images", "clips"}
    assert abs(vvo_video["mbo"] - _official(fixture, "video")["vvo-code"]["mbo"]) > 1e-3


def test_vvo_int64_overflow_is_reproduced_and_departs_from_exact_ari(fixture) -> None:
    """On 6 x 128 x 128 clips VVO's pair-count products pass 2**63: its clip ARI is far from the exact one."""
    true, predicted = _case(fixture, "video_large")
    exact = replace(PROTOCOLS["vvo-code"], name="vvo-code-float64", ari_arithmetic="float64")
    summary = _evaluate(true, predicted, exact)
    official = _official(fixture, "video_large")["vvo-code"]
    assert abs(summary["ari"] - official["ari"]) > 0.1
    assert summary["mbo"] == pytest.approx(official["mbo"], abs=TOLERANCE)  # IoUs do not overflow


def test_vvo_arithmetic_matches_exact_ari_without_overflow() -> None:
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, size=(32, 32))
    predicted = np.where(rng.random((32, 32)) < 0.7, true, rng.integers(0, 6, size=(32, 32)))
    for background in (False, True):
        exact = adjusted_rand_index(true, predicted, background)
        assert adjusted_rand_index(true, predicted, background, arithmetic="vvo-int64-float32") == pytest.approx(exact, abs=1e-6)
    with pytest.raises(MetricInputError, match="arithmetic"):
        adjusted_rand_index(true, predicted, arithmetic="float16")


def test_empty_ari_rules() -> None:
    background_only = np.zeros((1, 4, 4), np.int64)
    all_ignored = np.full((1, 4, 4), IGNORE_LABEL, np.int64)
    predicted = np.zeros((1, 4, 4), np.int64)
    expected = {  # rule: (FG-ARI without foreground, ARI without any pixel)
        "skip": (math.nan, math.nan),
        "one": (1.0, 1.0),
        "one-if-any-pixel": (1.0, math.nan),
    }
    for rule, (fg_ari, ari) in expected.items():
        no_foreground = object_discovery_metrics(background_only, predicted, False, empty_ari=rule)
        no_pixels = object_discovery_metrics(all_ignored, predicted, False, empty_ari=rule)
        np.testing.assert_equal([no_foreground["fg_ari"][0], no_pixels["ari"][0]], [fg_ari, ari])
        assert math.isnan(no_foreground["mbo"][0]) and math.isnan(no_foreground["miou"][0])  # every anchor skips these
    with pytest.raises(MetricInputError, match="empty_ari"):
        object_discovery_metrics(background_only, predicted, False, empty_ari="zero")


def test_mean_of_batch_means() -> None:
    values = [1.0, 0.0, math.nan, 1.0, 0.5]
    # batches [1, 0], [nan, 1], [0.5] -> 0.5, 1.0, 0.5
    assert mean_of_batch_means(values, 2) == pytest.approx(2.0 / 3.0)
    assert math.isnan(mean_of_batch_means([1.0, math.nan, math.nan], 1))  # a batch with nothing scored: nan, as VVO
    with pytest.raises(MetricInputError, match="batch_size"):
        mean_of_batch_means(values, 0)


def test_ignore_pixels_as_background() -> None:
    true = np.array([[[0, 1, IGNORE_LABEL, 2]]], np.int64)
    predicted = np.array([[[0, 1, 0, 2]]], np.int64)
    as_background = score_masks(true, predicted, get_protocol("vvo-code"))
    dropped = score_masks(true, predicted, get_protocol("vvo"))
    assert as_background["mbo"][0] == pytest.approx(1.0) and dropped["mbo"][0] == pytest.approx(1.0)
    predicted_other = np.array([[[0, 1, 3, 2]]], np.int64)  # the ignore pixel in its own slot
    assert score_masks(true, predicted_other, get_protocol("vvo"))["mbo"][0] == pytest.approx(1.0)
    assert score_masks(true, predicted_other, get_protocol("vvo-code"))["mbo"][0] == pytest.approx((0.5 + 1 + 1) / 3)


def test_protocols_record_every_choice_and_validate() -> None:
    for name, protocol in PROTOCOLS.items():
        described = protocol.describe()
        assert described["name"] == name
        for key in ("ignore_pixels", "empty_ari", "empty_mbo_miou", "video_frame_metrics", "video_clip_metrics", "averaging",
                    "clip_averaging", "ari_arithmetic", "background_in_mbo_miou", "anchor_resolution", "source"):
            assert key in described
        json.dumps(described)
    assert PROTOCOLS["vvo"].describe()["averaging"] == "per image"
    assert "16" in PROTOCOLS["vvo-code"].describe()["averaging"]
    with pytest.raises(FeatcacheError, match="ignore_pixels") as error:
        Protocol("bad", count_background=True, ignore_pixels="keep")
    assert "\n" not in str(error.value)
    with pytest.raises(FeatcacheError, match="clip_metrics"):
        Protocol("bad", count_background=True, clip_metrics=("ari", "pq"))
    with pytest.raises(FeatcacheError, match="image_batch"):
        Protocol("bad", count_background=True, image_batch=0)
    with pytest.raises(FeatcacheError, match="unknown protocol"):
        get_protocol("vvo-paper")


def test_mask_metrics_without_protocol_keep_featcache_means() -> None:
    """train_ocl's kMeans baseline builds MaskMetrics without a protocol: per-image means, nan skipped."""
    metrics = MaskMetrics(ari=np.array([0.5, math.nan]), fg_ari=np.array([1.0, 0.0]), mbo=np.ones(2), miou=np.zeros(2), clip_ari={})
    assert metrics.summary() == {"ari": 0.5, "fg_ari": 0.5, "mbo": 1.0, "miou": 0.0, "images": 2}
