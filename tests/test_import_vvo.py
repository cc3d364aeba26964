"""`featcache import-vvo`: official VVO checkpoints, end to end from features, equal featcache's imported models.

Fixtures (tests/fixtures/parity/):
- ``vvo_{tfd,mlp,dfz,dinosaur}_e2e.safetensors``: the official VVOTfd / VVOMlp / VVODfz / DINOSAUR (Genera1Z/VQ-VFM-OCL, random
  weights, an Identity backbone so features go in) in eval mode: its state dict (``weights.m.*``, exactly what
  ``ModelWrap.save`` writes), the features and every output (tokens, codes, slots, attention, decoder outputs).
- ``vvo_tfd_dino2s14_4x4.pth``: a checkpoint written by the official ``ModelWrap.save`` for 384-channel
  (DINOv2 ViT-S/14) features on a 4 x 4 grid, small elsewhere, for the CLI round trip on a real store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from featcache.cli import app
from featcache.errors import ConfigError, FeatcacheError
from featcache.interop.vvo_checkpoint import ocl_model_config, ocl_state_dict, quantizer_parts, read_vvo_checkpoint
from featcache.ocl import OCLModel
from featcache.quantize.model import VQModel
from featcache.training.import_vvo import import_vvo
from tests.parity import FIXTURES, assert_close, fixture_config, load_fixture


def official_checkpoint(kind: str, tmp_path: Path) -> tuple[Path, dict, dict]:
    """The fixture's official state dict written as the official trainer writes it (torch.save of the dict)."""
    tensors, metadata = load_fixture(f"vvo_{kind}_e2e")
    path = tmp_path / f"vvo_{kind}.pth"
    torch.save(tensors["weights"], path)
    return path, tensors, fixture_config(metadata)


@pytest.mark.parametrize("kind", ["tfd", "mlp", "dfz", "dinosaur"])
def test_imported_model_equals_the_official_model_end_to_end(kind: str, tmp_path: Path) -> None:
    path, tensors, config = official_checkpoint(kind, tmp_path)
    features, expected = tensors["input"]["features"], tensors["output"]  # (B, h, w, C)
    grid = (config["H"], config["W"])
    checkpoint = read_vvo_checkpoint(path)
    assert checkpoint.kind == kind

    codebook = tokens = None
    if kind != "dinosaur":  # VVO's DINOSAUR has no quantizer
        quantizer, vq_decoder, vq_state, codebook = quantizer_parts(checkpoint, grid)
        vq = VQModel(quantizer, vq_decoder, config["C"], grid).eval()
        vq.load_state_dict(vq_state, strict=True)
        tokens, _ = vq.tokenize(features)
        assert torch.equal(tokens, expected["zidx"].long())
        assert_close(codebook[tokens].permute(0, 3, 1, 2), expected["quant"], what="codes")

    # What the weights cannot tell, set as the fixture's official model had it (the official configs: 4, 8, 32).
    cannot_tell = {"tfd": {"tfd": {"heads": 2}}, "dfz": {"dfz": {"heads": 4, "sd_norm_groups": 4}}}.get(kind, {})
    model_config = ocl_model_config(checkpoint, {"decoder": cannot_tell})
    model = OCLModel(model_config, config["C"], grid, codebook).eval()
    model.load_state_dict(ocl_state_dict(checkpoint, model), strict=True)
    with torch.no_grad():
        aggregated = model.aggregate(features)
        assert_close(aggregated.slots, expected["slotz"], what="slots")
        assert_close(aggregated.attention.reshape(expected["attent"].shape), expected["attent"], what="attention")
        targets = model.decoder_targets(features, tokens)
        if kind == "tfd":
            logits, _ = model.decoder.predict(aggregated.slots, targets)  # (B, N, K)
            assert_close(logits.transpose(1, 2).reshape(expected["recon"].shape), expected["recon"], what="logits")
        elif kind in ("mlp", "dinosaur"):
            decoded = model.decoder(aggregated.slots, targets)
            recon = decoded.reconstruction.permute(0, 3, 1, 2)  # (B, [codes +] features, h, w)
            assert_close(recon, expected["recon"], what="reconstruction")
            assert_close(decoded.masks, expected["attent2"], what="decoder masks")
        else:
            timesteps = expected["timesteps"].long()
            noised = model.decoder.add_noise(expected["quant"], expected["noise"], timesteps)
            assert_close(noised, expected["noisy"], atol=1e-6, what="x_t")
            prediction = model.decoder.unet(expected["noisy"], timesteps, aggregated.slots)
            assert_close(prediction, expected["recon"], what="predicted noise")


def test_a_vq_pretraining_checkpoint_imports_with_its_decoder(tmp_path: Path) -> None:
    """The official pre-training model's ``mediat``: the quantizer of one fixture, the image decoder of another."""
    quantizer_weights, decoder_weights = load_fixture("vvo_vq")[0]["weights"], load_fixture("vvo_vq_decoder")[0]["weights"]
    mediat = {f"m.mediat.{key}": value for key, value in {**quantizer_weights, **decoder_weights}.items()}
    path = tmp_path / "vq.pth"
    torch.save(mediat, path)
    checkpoint = read_vvo_checkpoint(path)
    assert checkpoint.kind == "vq"
    side = 4
    quantizer, decoder, state, _ = quantizer_parts(checkpoint, (side, side))
    assert decoder.architecture == "vvo"
    VQModel(quantizer, decoder, int(mediat["m.mediat.encode.0.0.weight"].shape[1]), (side, side)).load_state_dict(state, strict=True)


def test_bad_checkpoints_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(FeatcacheError, match="does not exist"):
        read_vvo_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(FeatcacheError, match="cannot read as a torch checkpoint"):
        read_vvo_checkpoint(tmp_path / "text.pth")
    torch.save({"m.encode_backbone.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(FeatcacheError, match="not a VVO checkpoint featcache can import"):
        read_vvo_checkpoint(tmp_path / "other.pth")


def test_import_vvo_refuses_bad_input_before_writing_anything(tmp_path: Path) -> None:
    path, _, _ = official_checkpoint("dinosaur", tmp_path)
    with pytest.raises(FeatcacheError, match="reads 24-channel features; --vfm dino2-s14 gives 384"):
        import_vvo(path, tmp_path / "wrong-vfm")
    with pytest.raises(ConfigError, match="decoder.tfd.heads"):
        import_vvo(FIXTURES / "vvo_tfd_dino2s14_4x4.pth", tmp_path / "bad-set", overrides=["model.decoder.tfd.heads=3"])
    assert not (tmp_path / "wrong-vfm").exists() and not (tmp_path / "bad-set").exists()


def test_import_vvo_then_tokenize_and_eval_on_a_store(ocl_store: Path, tmp_path: Path) -> None:
    """The user path: a checkpoint the official code wrote -> run folders -> tokens of the store -> evaluation."""
    out = tmp_path / "imported"
    runner = CliRunner()
    result = runner.invoke(app, ["import-vvo", str(FIXTURES / "vvo_tfd_dino2s14_4x4.pth"), "--out", str(out), "--tokens", "vvo-imp"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "ocl" / "run.json").read_text())
    assert info["imported_from"]["kind"] == "tfd" and info["store"]["encoder"] == "dino2-s14"
    result = runner.invoke(app, ["tokenize", "--store", str(ocl_store), "--vq", str(out / "vq"), "--name", "vvo-imp", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", str(out / "ocl"), "--store", str(ocl_store), "--device", "cpu", "--limit", "8"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads(next((out / "ocl").glob("eval-*/eval.json")).read_text())
    assert 0.0 <= evaluation["metrics"]["mbo"] <= 1.0
    # Imported runs hold no optimizer state and no training store: both are refused by name.
    result = runner.invoke(app, ["eval", str(out / "ocl"), "--device", "cpu"])
    assert result.exit_code != 0 and "pass --store" in str(result.exception)
    with pytest.raises(FeatcacheError, match="imported"):
        from featcache.training.checkpoint import load_train_state

        load_train_state(out / "ocl")
    # A second import into the same folder is refused rather than overwriting.
    with pytest.raises(FeatcacheError, match="already holds a run"):
        import_vvo(FIXTURES / "vvo_tfd_dino2s14_4x4.pth", out)
