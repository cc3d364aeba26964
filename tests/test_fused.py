"""Fused multi-seed OCL training: each fused seed equals its separate train_ocl run, resumes exactly, refuses bad input."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from featcache.aggregators.slot_attention import gru_update
from featcache.config import from_dict, load_config, merge, nest_keys
from featcache.errors import ConfigError, FeatcacheError
from featcache.ocl import OCLModel
from featcache.stages.evaluate import evaluate_run
from featcache.training.checkpoint import read_run
from featcache.training.config import OCLTrainConfig, with_seed
from featcache.training.fused import FusedSeeds, dropout_keys, train_ocl_fused_seeds
from featcache.training.loop import LoopRun
from featcache.training.metrics_log import MetricsLog
from featcache.training.ocl import train_ocl

CONFIGS = Path(__file__).parent.parent / "configs" / "ocl"
SEEDS = (0, 1)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These models are tiny: one thread is faster than two, and much faster when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seed_configs(method: str, seeds: tuple[int, ...] = SEEDS, overrides: list[str] | None = None, **changes: object) -> list[OCLTrainConfig]:
    """The tiny preset of ``method`` for a few steps, one config per seed, sharing data_seed 0 (then ``overrides``,
    then ``changes``: top-level fields, or ``steps``)."""
    settings = [f"{key}={value}" for key, value in {
        "train.steps": changes.pop("steps", 4), "train.batch_size": 8, "train.log_every": 2, "validate_every": 4,
        "validation_images": 4, "train.checkpoint_every": 2, "train.loader": "memory", "train.data_seed": 0,
        "train.grad_clip": 0.05,  # a small clip: per-seed clipping acts at every step
        # narrower than the tiny preset, so the tests stay fast on 2 shared cores
        "model.aggregator.slot_dim": 16, "model.aggregator.mlp_hidden": 32, "model.projection_hidden": 32,
        "model.decoder.mlp.hidden": 32, "model.decoder.tfd.dim": 16, "model.decoder.tfd.feedforward": 32,
        "model.decoder.dfz.unet_levels": 1,
        # Fused seeds refuse dropout (one vmapped forward cannot draw each seed's masks as its own run would).
        "model.aggregator.mlp_dropout": 0.0, "model.projection_dropout": 0.0, "model.decoder.dfz.dropout": 0.0,
    }.items()]
    config = load_config(OCLTrainConfig, [CONFIGS / f"{method}.yaml", CONFIGS / "tiny.yaml"], settings + list(overrides or []))
    return [with_seed(replace(config, **changes), seed) for seed in seeds]


def gradient_free(key: str, tensor: torch.Tensor, alpha_bias: str) -> torch.Tensor:
    """Entries whose gradient is zero in exact arithmetic: a shift shared by all softmax inputs.

    The Mlp decoder's alpha-logit bias (softmax over slots) and attention key biases (softmax over keys) get
    pure rounding noise as gradient, which Adam turns into learning-rate-sized steps; they are not compared.
    """
    mask = torch.zeros_like(tensor, dtype=torch.bool)
    if key == alpha_bias:
        mask[-1] = True  # the last output channel is the alpha logit
    elif key.endswith("in_proj_bias"):
        width = tensor.shape[0] // 3
        mask[width : 2 * width] = True  # (query, key, value) biases
    elif key.endswith(".key.bias"):
        mask[:] = True
    return mask


def assert_same_weights(first: Path, second: Path, atol: float) -> None:
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys()
    mlp_layers = [int(key.split(".")[2]) for key in a if re.fullmatch(r"decoder\.mlp\.\d+\.bias", key)]
    alpha_bias = f"decoder.mlp.{max(mlp_layers)}.bias" if mlp_layers else ""
    for key in a:
        keep = ~gradient_free(key, a[key], alpha_bias)
        torch.testing.assert_close(a[key][keep], b[key][keep], rtol=0, atol=atol, msg=key)


def losses_of(run_dir: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k.startswith(("loss_", "val_", "step"))} for row in MetricsLog.read(run_dir / "metrics.jsonl")]


def assert_same_rows(first: list[dict[str, float]], second: list[dict[str, float]]) -> None:
    """Losses agree to rounding; mask metrics to a pixel flip (argmax near ties)."""
    assert [row.keys() for row in first] == [row.keys() for row in second]
    for row, other in zip(first, second):
        for key in row:
            assert row[key] == pytest.approx(other[key], rel=1e-4, abs=1e-5 if key.startswith("loss_") else 5e-3), key


@pytest.mark.parametrize(
    ("method", "seeds", "overrides"),
    [("dinosaur-mlp", SEEDS, []), ("vvo-mlp-sa", (0, 1, 2), []), ("vvo-tfd", SEEDS, ["model.input_position=soft", "model.decoder.tfd.orders=9"]), ("vvo-dfz-sa", SEEDS, [])],
)
def test_fused_seeds_equal_separate_runs(method: str, seeds: tuple[int, ...], overrides: list[str], ocl_store: Path, tmp_path: Path) -> None:
    """OCLF's DINOSAUR (a shared Gaussian, sampled in evaluation too), VVO-Mlp with plain Slot Attention (per-slot
    Gaussians, codes+features), VVO-Tfd (BO-QSA with slot noise) with the input position embedding and nine token
    orders (an order per sample), VVO-Dfz (timesteps and noise)."""
    configs = seed_configs(method, seeds, overrides)
    fused_dirs = [tmp_path / f"fused-{seed}" for seed in seeds]
    results = train_ocl_fused_seeds(ocl_store, configs, fused_dirs, device="cpu", show_progress=False)
    assert [r.steps for r in results] == [4] * len(seeds)
    for config, fused_dir, result in zip(configs, fused_dirs, results):
        separate = tmp_path / f"separate-{config.train.seed}"
        single = train_ocl(ocl_store, config, separate, device="cpu", show_progress=False)
        # 5e-5: Adam divides by sqrt(v); where an element's gradient nearly cancels between steps, it magnifies the
        # float rounding that differs between the vmapped and the plain forward (one UNet element measured at 1.6e-5
        # after 4 steps, every other weight within 1.5e-6); a noise or order mismatch moves weights by 1e-3 or more.
        assert_same_weights(fused_dir, separate, atol=5e-5)
        fused_rows, separate_rows = losses_of(fused_dir), losses_of(separate)
        assert [row["step"] for row in fused_rows] == [1, 2, 4] and "val_fg_ari" in fused_rows[-1]
        assert_same_rows(fused_rows, separate_rows)
        assert result.first_losses == pytest.approx(single.first_losses, rel=1e-5)
        saved, info = read_run(fused_dir)
        assert from_dict(OCLTrainConfig, saved) == config and info["fused_seeds"] == list(seeds) and info["step"] == 4
    # Seeds really differ: their own initialisation and noise.
    assert not torch.equal(load_file(str(fused_dirs[0] / "model.safetensors"))["projection.0.weight"],
                           load_file(str(fused_dirs[1] / "model.safetensors"))["projection.0.weight"])


def test_fused_resume_equals_uninterrupted_and_folders_resume_separately(ocl_store: Path, tmp_path: Path) -> None:
    configs = seed_configs("dinosaur-mlp", seeds=(3, 5))
    whole = [tmp_path / f"whole-{c.train.seed}" for c in configs]
    parts = [tmp_path / f"parts-{c.train.seed}" for c in configs]
    train_ocl_fused_seeds(ocl_store, configs, whole, device="cpu", show_progress=False)
    train_ocl_fused_seeds(ocl_store, configs, parts, device="cpu", show_progress=False, stop_after=2)
    # A fused run folder is an ordinary run folder: train_ocl resumes seed 5's on its own (copy it first).
    separate_resume = tmp_path / "separate-resume"
    separate_resume.mkdir()
    for name in ("model.safetensors", "config.yaml", "run.json", "train_state.pt", "metrics.jsonl", "metrics.csv"):
        (separate_resume / name).write_bytes((parts[1] / name).read_bytes())
    train_ocl(ocl_store, configs[1], separate_resume, device="cpu", show_progress=False, resume=True)
    assert_same_weights(separate_resume, whole[1], atol=1e-5)
    # Fused resume is exact: same computation, same generator and Adam states.
    train_ocl_fused_seeds(ocl_store, configs, parts, device="cpu", show_progress=False, resume=True)
    for first, second in zip(whole, parts):
        assert_same_weights(first, second, atol=0.0)
        # The first part also validated where it stopped (step 2): compare the losses of every step.
        losses = [[{k: v for k, v in row.items() if not k.startswith("val_")} for row in losses_of(run)] for run in (first, second)]
        assert losses[0] == losses[1]


def test_per_seed_gradient_clipping_matches_clip_grad_norm(ocl_store: Path) -> None:
    """Stacked gradients clipped per seed equal each model's own clip_grad_norm_ (the independent reference)."""
    config = seed_configs("vvo-tfd")[0]
    codebook = torch.randn(8, 4)
    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        models.append(OCLModel(config.model, 16, (4, 4), codebook))
    fused = FusedSeeds([LoopRun(Path(f"r{i}"), model, {}, {}) for i, model in enumerate(models)], learning_rate=1e-3)
    generator = torch.Generator().manual_seed(0)
    for scale, (name, stacked) in enumerate(fused.params.items()):
        stacked.grad = torch.randn(stacked.shape, generator=generator) * (1 + scale % 3) * torch.tensor([0.001, 1.0, 10.0]).reshape(-1, *[1] * (stacked.ndim - 1))
        for index, model in enumerate(models):
            dict(model.named_parameters())[name].grad = stacked.grad[index].clone()
    fused.clip_gradients(0.5)
    for index, model in enumerate(models):
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        assert (norm < 0.5) == (index == 0)  # the first seed is under the limit, the others are clipped
        for name, parameter in model.named_parameters():
            torch.testing.assert_close(fused.params[name].grad[index], parameter.grad, rtol=1e-5, atol=1e-8)


def test_gru_update_equals_torch_gru_cell() -> None:
    torch.manual_seed(0)
    cell = torch.nn.GRUCell(16, 16)
    inputs, hidden = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    expected = cell(inputs.reshape(-1, 16), hidden.reshape(-1, 16)).reshape(2, 5, 16)
    torch.testing.assert_close(gru_update(cell, inputs, hidden), expected, rtol=1e-5, atol=1e-6)


def test_fused_run_folder_evaluates(ocl_store: Path, tmp_path: Path) -> None:
    configs = seed_configs("dinosaur-mlp", seeds=(0, 1), steps=2, validate_every=0)
    dirs = [tmp_path / "a", tmp_path / "b"]
    train_ocl_fused_seeds(ocl_store, configs, dirs, device="cpu", show_progress=False)
    result = evaluate_run(dirs[1], device="cpu", show_progress=False)
    assert json.loads((Path(result["output"]) / "eval.json").read_text())["metrics"]["fg_ari"] == result["metrics"]["fg_ari"]


@pytest.mark.parametrize(
    ("overrides", "second_changes", "message"),
    [
        ([], {"train.learning_rate": 1e-3}, r"differ only in train.seed; seed 0 and seed 1 also differ in: train.learning_rate \(0.0004 vs 0.001\)"),
        (["train.data_seed=null"], {}, "need a common train.data_seed"),
        (["model.projection_dropout=0.1"], {}, r"cannot reproduce dropout noise; set model.projection_dropout=0"),
        (["model.decoder.tfd.dropout=0.1"], {}, r"set model.decoder.tfd.dropout=0"),
        ([], {"train.seed": 0}, r"seeds must differ; got seeds \[0, 0\]"),
    ],
)
def test_bad_fused_input_fails_before_any_work(
    overrides: list[str], second_changes: dict[str, object], message: str, ocl_store: Path, tmp_path: Path
) -> None:
    first, second = seed_configs("vvo-tfd", seeds=(0, 1), overrides=overrides)
    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(ConfigError, match=message):
        train_ocl_fused_seeds(ocl_store, [first, merge(second, nest_keys(second_changes))], dirs, device="cpu", show_progress=False)
    assert not any(d.exists() for d in dirs)


def test_dropout_of_an_unused_decoder_does_not_block_fusing() -> None:
    config = seed_configs("dinosaur-mlp", seeds=(0,), overrides=["model.decoder.tfd.dropout=0.1"])[0]
    assert dropout_keys(config) == []
    assert dropout_keys(replace(config, model=replace(config.model, projection_dropout=0.2))) == ["model.projection_dropout"]


@pytest.mark.slow  # fused sweeps equal separate ones in the default suite: test_sweep.py::test_fused_seeds_give_the_separate_runs_results
def test_sweep_benchmark_sides_train_the_same_runs(ocl_store: Path, tmp_path: Path) -> None:
    """One tiny round of `featcache bench sweep`: the fused side's runs equal the sequential side's; figures add up."""
    from featcache.bench.sweep import time_sweep_sides
    from featcache.config import repo_root

    spec_file = repo_root() / "configs" / "ablations" / "decoders-tiny.yaml"
    figures = time_sweep_sides(spec_file, ocl_store, tmp_path, seeds=2, steps=2, rounds=1, device="cpu", eval_images=4)
    assert figures["runs"] == 4
    seconds = figures["seconds"]
    assert figures["sequential_over_fused"] == pytest.approx(seconds["sequential"] / seconds["fused"])
    assert figures["online_over_cached"] == pytest.approx(seconds["online"] / seconds["sequential"])
    for case in ("dinosaur-mlp", "vvo-tfd"):
        for seed in (0, 1):
            sequential, fused = (tmp_path / "round-0" / side / "runs" / case / f"seed{seed}" for side in ("sequential", "fused"))
            assert_same_weights(sequential, fused, atol=1e-5)


def test_explicit_noise_replaces_the_global_generator() -> None:
    """With draw_noise's output passed in, a training forward (slot noise + diffusion) ignores torch's global RNG."""
    config = seed_configs("vvo-dfz-sa")[0]
    torch.manual_seed(0)
    model = OCLModel(config.model, 16, (4, 4), torch.randn(8, 4)).train()
    features, tokens = torch.randn(2, 4, 4, 16), torch.randint(0, 8, (2, 4, 4))
    noise = model.draw_noise(2, torch.Generator().manual_seed(7), torch.device("cpu"))
    assert noise["aggregator"]["slots"].shape == (2, 8, 16) and noise["decoder"]["noise"].shape == (2, 4, 4, 4)
    losses = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        losses.append(model(features, tokens, noise).loss)
    assert torch.equal(losses[0], losses[1])
    torch.manual_seed(1)
    assert not torch.equal(model(features, tokens).loss, losses[0])  # without it, the global generator draws other noise
    assert model.eval().draw_noise(2, None, torch.device("cpu"))["aggregator"] == {}  # no slot noise in eval mode


def test_resuming_a_checkpoint_without_noise_state_is_refused(ocl_store: Path, tmp_path: Path) -> None:
    """A train_state.pt from before per-run noise generators cannot resume exactly: one-line error, folder untouched."""
    config = seed_configs("dinosaur-mlp", seeds=(0,), validate_every=0)[0]
    run = tmp_path / "run"
    train_ocl(ocl_store, config, run, device="cpu", show_progress=False, stop_after=2)
    state = torch.load(run / "train_state.pt", weights_only=False)
    del state["noise_rng"]
    torch.save(state, run / "train_state.pt")
    info = json.loads((run / "run.json").read_text())
    del info["checkpoint"]  # written before checkpoints recorded the train state's checksum
    (run / "run.json").write_text(json.dumps(info))
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    with pytest.raises(FeatcacheError, match=r"cannot resume .*run exactly: its train_state.pt has no noise generator state"):
        train_ocl(ocl_store, config, run, device="cpu", show_progress=False, resume=True)
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before
