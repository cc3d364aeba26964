"""MSF through the stages: train-vq -> tokenize -> analyze codes -> train-ocl on a tiny MSF run (issue 17)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from featcache.cli import main
from featcache.config import load_config, merge
from featcache.datasets import open_dataset
from featcache.errors import ConfigError
from featcache.extraction import extract
from featcache.quantize import CodeLookup, MSFQuantizerConfig, QuantizerConfig, VQDecoderConfig, VQModel
from featcache.store import FeatureStore
from featcache.training.config import VQTrainConfig
from featcache.training.runs import load_vq_run
from tests.conftest import OCL_EXTRACT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: A CPU-sized MSF quantizer on the 4x4 grid: levels 4x4, 2x2, 1x1; shared 8 codes, specified 8 / 4 / 2.
TINY = [
    "quantizer.kind=msf", "quantizer.codebook_size=8", "quantizer.code_dim=8", "quantizer.template_dim=8",
    "quantizer.encoder_layers=1", "quantizer.encoder_channels=16", "decoder.channels=8", "decoder.image_size=32",
    "train.steps=6", "train.batch_size=4", "train.log_every=2", "train.checkpoint_every=3", "train.loader=memory",
]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["featcache", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sets(*overrides: str) -> list[str]:
    return [item for override in overrides for item in ("--set", override)]


@pytest.fixture(scope="module")
def msf_store(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("msf") / "store.zarr"
    extract(open_dataset(str(shapes_dir)), out, OCL_EXTRACT, device="cpu", show_progress=False)
    return out


@pytest.fixture(scope="module")
def msf_run(msf_store: Path) -> tuple[Path, Path]:
    """(store with token set ``msf``, VQ run folder), through the CLI."""
    run = msf_store.parent / "vq-msf"
    mp = pytest.MonkeyPatch()
    try:
        for args in (
            ["train-vq", "--store", str(msf_store), "--out", str(run), "--device", "cpu", *sets(*TINY)],
            ["tokenize", "--store", str(msf_store), "--vq", str(run), "--name", "msf", "--device", "cpu"],
        ):
            mp.setattr(sys, "argv", ["featcache", *args])
            try:
                main()
            except SystemExit as exit_:
                assert not exit_.code, args
    finally:
        mp.undo()
    return msf_store, run


def test_shipped_msf_configs_select_msf_and_tiny_layers_after_them() -> None:
    config = load_config(VQTrainConfig, ["configs/vq/msf-c256.yaml"])
    assert isinstance(config.quantizer, MSFQuantizerConfig)
    assert (config.quantizer.codebook_size, config.quantizer.specified_sizes(), config.quantizer.code_dim) == (256, [256, 128, 64], 256)
    assert config.quantizer.gumbel_scale_end == 2.0 and config.quantizer.combine == "average"
    c4 = load_config(VQTrainConfig, ["configs/vq/msf-c4.yaml"])
    assert (c4.quantizer.code_dim, c4.quantizer.specified_sizes()) == (4, [256, 128, 64])
    tiny = load_config(VQTrainConfig, ["configs/vq/msf-c256.yaml", "configs/vq/tiny.yaml"])
    assert isinstance(tiny.quantizer, MSFQuantizerConfig) and tiny.quantizer.specified_sizes() == [64, 32, 16]
    # Switching back to VVO drops the MSF keys; MSF keys without kind: msf are unknown keys.
    assert type(merge(tiny, {"quantizer": {"kind": "vvo"}}).quantizer) is QuantizerConfig
    with pytest.raises(ConfigError, match=r"quantizer.num_scales. \(a key of kind: msf; set quantizer.kind: msf first\)"):
        merge(VQTrainConfig(), {"quantizer": {"num_scales": 2}})


def test_loss_is_the_sum_of_per_level_losses() -> None:
    """The MSF VQ model's loss = sum over levels of reconstruction (target resized to the level) + weighted quantizer terms."""
    torch.manual_seed(0)
    quantizer = MSFQuantizerConfig(codebook_size=8, code_dim=8, template_dim=8, encoder_layers=1, encoder_channels=16)
    model = VQModel(quantizer, VQDecoderConfig(target="pixels", channels=8, image_size=32), 12, (4, 4)).eval()
    features, images = torch.randn(2, 4, 4, 12), torch.rand(2, 3, 32, 32) * 2 - 1
    output = model(features, images, progress=0.7, training_noise=False)
    q = model.quantizer(features, progress=0.7, training_noise=False)
    by_hand = []
    for i in range(3):
        reconstruction = model.decoder(q.decoder_input[i])
        side = 32 // 2**i
        target = images if i == 0 else F.interpolate(images, size=(side, side), mode="bicubic", antialias=True, align_corners=False)
        assert reconstruction.shape == (2, 3, side, side)
        terms = q.losses_per_scale[i]
        by_hand.append(F.mse_loss(reconstruction, target) + terms["alignment"] + 0.25 * terms["commitment"] + 0.1 * terms["normalisation"])
    torch.testing.assert_close(output.losses["total"], torch.stack(by_hand).sum())
    assert output.indices.shape == (2, 2, 4, 4)
    # Feature targets: each level against the quantizer's pyramid of the features.
    feature_model = VQModel(quantizer, VQDecoderConfig(target="features", channels=8), 12, (4, 4)).eval()
    output = feature_model(features, features, progress=1.0, training_noise=False)
    q = feature_model.quantizer(features, progress=1.0, training_noise=False)
    levels = [features, F.avg_pool2d(features.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1),
              features.permute(0, 3, 1, 2)[:, :, 1:3, 1:3].mean((2, 3), keepdim=True).permute(0, 2, 3, 1)]  # bilinear x0.25 of 4x4
    expected = sum(F.mse_loss(feature_model.decoder(q.decoder_input[i]), levels[i]) for i in range(3))
    torch.testing.assert_close(output.losses["reconstruction"], expected)


def test_train_vq_records_msf_and_logs_per_level(msf_run: tuple[Path, Path]) -> None:
    _, run = msf_run
    info = json.loads((run / "run.json").read_text())
    assert info["quantizer"] == "msf"
    assert yaml.safe_load((run / "config.yaml").read_text())["quantizer"]["kind"] == "msf"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert {"loss_reconstruction_scale0", "loss_reconstruction_scale2", "specified_used_codes", "used_codes"} <= set(last)
    model, config, _, _ = load_vq_run(run, torch.device("cpu"))
    assert isinstance(config.quantizer, MSFQuantizerConfig) and len(model.quantizer.specified) == 3


def test_token_set_layout_and_lookup(msf_run: tuple[Path, Path]) -> None:
    store_path, run = msf_run
    store = FeatureStore(store_path, warn_random=False)
    attributes = store.token_attributes("msf")
    assert attributes["quantizer"] == "msf" and attributes["index_groups"] == 2 and attributes["codebook_sizes"] == [8, 8]
    assert attributes["combine"] == "average" and attributes["scale"] == 0
    tokens = store.tokens("msf", slice(0, 3), view=None)
    assert tokens.shape == (3, store.layout.num_views, 2, 4, 4) and tokens.dtype == np.uint16
    model, _, _, _ = load_vq_run(run, torch.device("cpu"))
    features = torch.from_numpy(store.features([0, 1, 2], view=0, kind="final_norm").astype(np.float32))
    indices, _ = model.tokenize(features)
    assert np.array_equal(store.tokens("msf", [0, 1, 2], view=0), indices.numpy())
    lookup = CodeLookup.from_token_set(store, "msf")
    assert lookup.group_sizes == [8, 8] and lookup.code_dim == 8
    expected = model.quantizer.lookup(indices).permute(0, 2, 3, 1)  # (B, h, w, D)
    torch.testing.assert_close(lookup(torch.from_numpy(store.tokens("msf", [0, 1, 2], view=0).astype(np.int64))), expected)


def numpy_usage(indices: np.ndarray, size: int) -> tuple[int, float]:
    """(used codes, perplexity) by brute force."""
    counts = np.array([(indices == code).sum() for code in range(size)], dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    return int((counts > 0).sum()), float(np.exp(-(p * np.log(p)).sum()))


def test_analyze_codes_reports_each_codebook(msf_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    store_path, _ = msf_run
    out = store_path.parent / "codes"
    code, printed, err = run_cli(monkeypatch, capsys, "analyze", "codes", "--store", str(store_path), "--tokens", "msf", "--out", str(out))
    assert code == 0, err
    assert "shared" in printed and "specified" in printed and "pairs used" in printed and "codes used: shared " in printed
    summary = json.loads((out / "code_statistics.json").read_text())
    store = FeatureStore(store_path, warn_random=False)
    tokens = store.tokens("msf", store.valid_indices(), "center").astype(np.int64)  # (N, 2, h, w)
    assert summary["quantizer"] == "msf" and set(summary["codebooks"]) == {"shared", "specified"}
    for g, name in enumerate(("shared", "specified")):
        used, perplexity = numpy_usage(tokens[:, g], 8)
        assert summary["codebooks"][name]["used_codes"] == used
        assert summary["codebooks"][name]["perplexity"] == pytest.approx(perplexity)
        assert summary["codebooks"][name]["usage"] == [int((tokens[:, g] == k).sum()) for k in range(8)]
    pairs = {(a, b) for a, b in zip(tokens[:, 0].ravel(), tokens[:, 1].ravel())}
    assert summary["joint"]["used_pairs"] == len(pairs)
    assert summary["used_codes"] == summary["codebooks"]["shared"]["used_codes"]


#: Layered after configs/ocl/<method>.yaml and configs/ocl/tiny.yaml.
OCL_TINY = [
    "model.aggregator.num_slots=3", "model.aggregator.slot_dim=16", "model.aggregator.mlp_hidden=32", "model.projection_hidden=32",
    "model.decoder.tfd.dim=16", "model.decoder.tfd.layers=1", "model.decoder.mlp.hidden=32", "model.decoder.dfz.timesteps=10",
    "train.steps=2", "train.batch_size=4", "train.log_every=1", "train.checkpoint_every=2", "train.loader=memory", "validate_every=0",
    "tokens=msf",
]


@pytest.mark.parametrize("method", ["vvo-tfd", "vvo-mlp", "vvo-dfz"])
def test_train_ocl_on_msf_tokens(method: str, msf_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Every decoder reading tokens trains from an MSF token set: codes = the fused level-0 codes."""
    store_path, _ = msf_run
    run = store_path.parent / f"ocl-{method}"
    code, _, err = run_cli(monkeypatch, capsys, "train-ocl", "--store", str(store_path), "--out", str(run), "--device", "cpu",
                           "--config", f"configs/ocl/{method}.yaml", "--config", "configs/ocl/tiny.yaml", *sets(*OCL_TINY))
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(rows[-1]["loss_total"])
    if method == "vvo-tfd":  # the sum of one cross-entropy per codebook
        assert rows[-1]["loss_cross_entropy"] == pytest.approx(rows[-1]["loss_cross_entropy_0"] + rows[-1]["loss_cross_entropy_1"], rel=1e-5)


def test_ocl_model_reads_fused_codes_and_sums_grouped_cross_entropy(msf_run: tuple[Path, Path]) -> None:
    from featcache.config import from_dict
    from featcache.ocl import OCLModel
    from featcache.training.config import OCLTrainConfig

    store_path, run = msf_run
    store = FeatureStore(store_path, warn_random=False)
    config = load_config(OCLTrainConfig, ["configs/ocl/vvo-tfd.yaml", "configs/ocl/tiny.yaml"], OCL_TINY)
    lookup = CodeLookup.from_token_set(store, "msf")
    model = OCLModel(config.model, store.layout.channels, store.layout.grid, lookup).eval()
    assert model.decoder.readout.out_features == 16  # 8 shared + 8 specified logits
    features = torch.from_numpy(store.features([0, 1], view=0, kind="final_norm").astype(np.float32))
    tokens = torch.from_numpy(store.tokens("msf", [0, 1], view=0).astype(np.int64))  # (2, 2, 4, 4)
    targets = model.decoder_targets(features, tokens)
    vq, _, _, _ = load_vq_run(run, torch.device("cpu"))
    torch.testing.assert_close(targets.codes, vq.quantizer.lookup(tokens).permute(0, 2, 3, 1))
    slots = torch.randn(2, 3, 16)
    output = model.decoder(slots, targets)
    shared_logits, own_logits = model.decoder.predict(slots, targets)[0].float().split([8, 8], -1)  # (B, N, 8) each
    by_hand = F.cross_entropy(shared_logits.flatten(0, 1), tokens[:, 0].flatten()) + F.cross_entropy(own_logits.flatten(0, 1), tokens[:, 1].flatten())
    torch.testing.assert_close(output.loss, by_hand)
    assert output.reconstruction.shape == (2, 2, 4, 4)
    # Saved and rebuilt from its config and token set: the lookup's buffers are part of the weights.
    assert {"code_lookup.codebook", "code_lookup.specified"} <= set(model.state_dict())
    assert from_dict(OCLTrainConfig, {"tokens": "msf"}).tokens == "msf"
    with pytest.raises(Exception, match=r"MSF tokens must be \(B, 2, 4, 4\)"):
        model.decoder_targets(features, tokens[:, 0])


def test_tfd_with_a_learned_embedding_refuses_msf_tokens(msf_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    store_path, _ = msf_run
    code, _, err = run_cli(monkeypatch, capsys, "train-ocl", "--store", str(store_path), "--out", str(store_path.parent / "refused"),
                           "--device", "cpu", "--config", "configs/ocl/vvo-tfd.yaml", "--config", "configs/ocl/tiny.yaml",
                           *sets(*OCL_TINY, "model.decoder.tfd.input_embedding=learned"))
    assert code != 0
    message = [line for line in err.splitlines() if line.strip()]
    assert len(message) == 1 and "decoder tfd reads multi-codebook (MSF) tokens" in message[0] and "Traceback" not in err


def test_msf_resume_reproduces_an_uninterrupted_run(msf_store: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from featcache.config import parse_overrides
    from featcache.training.vq import train_vq

    config = merge(VQTrainConfig(), parse_overrides(TINY))
    train_vq(msf_store, config, tmp_path / "whole", device="cpu", show_progress=False)
    train_vq(msf_store, config, tmp_path / "resumed", device="cpu", show_progress=False, stop_after=3)
    train_vq(msf_store, config, tmp_path / "resumed", device="cpu", show_progress=False, resume=True)
    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert whole.keys() == resumed.keys() and any(key.startswith("quantizer.specified.2.") for key in whole)
    for key in whole:
        torch.testing.assert_close(whole[key], resumed[key], msg=key)


def test_verify_and_info_accept_the_msf_token_set(msf_run: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    store_path, _ = msf_run
    code, out, err = run_cli(monkeypatch, capsys, "verify", str(store_path))
    assert code == 0, out + err
    FeatureStore(store_path, warn_random=False).require_token_set("msf")


def test_vvo_token_sets_keep_their_layout(ocl_store: Path) -> None:
    """VVO token sets: (N, V, h, w) indices, no quantizer attribute, read as one codebook (also by OCLModel)."""
    store = FeatureStore(ocl_store, warn_random=False)
    assert "quantizer" not in store.token_attributes("vvo-c256") and store.token_arrays("vvo-c256") == {}
    assert store.tokens("vvo-c256", [0, 1], view=None).shape == (2, store.layout.num_views, 4, 4)
    lookup = CodeLookup.from_token_set(store, "vvo-c256")
    tokens = torch.from_numpy(store.tokens("vvo-c256", [0, 1], view=0).astype(np.int64))
    assert not lookup.multi_scale and lookup.group_sizes == [16]
    torch.testing.assert_close(lookup(tokens), torch.from_numpy(store.codebook("vvo-c256"))[tokens])
