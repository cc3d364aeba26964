"""The command line: thin wrappers with one-line errors and info output (the quickstart pipeline: test_pipelines.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from featcache.cli import main


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["featcache", *args])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.filterwarnings("always::featcache.console.RandomWeightsWarning")
def test_extract_then_info(tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "cli.zarr"
    code, out, err = run_cli(
        monkeypatch, capsys, "extract", "--data", str(shapes_dir), "--out", str(store), "--weights", "random",
        "--resolution", "28", "--samples-per-chunk", "6", "--mask-size", "32", "--set", "image_size=32", "--device", "cpu",
    )
    assert code == 0, err
    assert "12 samples" in out and "store complete" in " ".join(out.split()) and "RANDOMLY INITIALISED" in err
    code, out, err = run_cli(monkeypatch, capsys, "info", str(store), "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["completeness"] == {
        "units_done": 2, "units_total": 2, "samples_written": 12, "samples_bad": 0, "samples_total": 12, "complete": True
    }
    assert summary["random_weights"] is True and summary["bytes_on_disk"]["total"] > summary["bytes_on_disk"]["features"] > 0
    assert "RANDOMLY INITIALISED" in err  # every command reading the store warns
    code, out, err = run_cli(monkeypatch, capsys, "info", str(store))
    assert code == 0 and "2/2 units" in out and "RANDOM" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["extract", "--data", "MISSING", "--out", "OUT"], "MISSING"),
        (["extract", "--data", "DATA", "--out", "OUT", "--vfm", "vit-huge", "--weights", "random"], "unknown VFM 'vit-huge'; known: dino2-b14"),
        (["extract", "--data", "DATA", "--out", "OUT", "--set", "crop=2"], "unknown config key 'crop'"),
        (["info", "MISSING"], "store MISSING does not exist"),
    ],
)
def test_bad_input_is_one_red_line(
    arguments: list[str], message: str, tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    replacements = {"MISSING": str(tmp_path / "missing"), "DATA": str(shapes_dir), "OUT": str(tmp_path / "o.zarr")}
    arguments = [replacements.get(a, a) for a in arguments]
    message = message.replace("MISSING", str(tmp_path / "missing"))
    code, _, err = run_cli(monkeypatch, capsys, *arguments)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1 and message in " ".join(err.split()), err
    assert "Traceback" not in err


def test_encoders_lists_the_registry(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "encoders")
    assert code == 0
    for name in ("dino2-s14", "dino2-b14", "dino2-s14-reg4", "sam2-t16"):
        assert name in out


def test_vq_commands_from_the_cli(tmp_path: Path, shapes_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.zarr"
    assert run_cli(
        monkeypatch, capsys, "extract", "--data", str(shapes_dir), "--out", str(store), "--weights", "random",
        "--resolution", "56", "--samples-per-chunk", "6", "--mask-size", "32", "--set", "image_size=32", "--device", "cpu",
    )[0] == 0
    config = Path(__file__).parent.parent / "configs" / "vq" / "tiny.yaml"
    run = tmp_path / "vq"
    code, _, err = run_cli(
        monkeypatch, capsys, "train-vq", "--store", str(store), "--config", str(config), "--out", str(run), "--device", "cpu",
        "--set", "train.steps=12", "--set", "decoder.image_size=32", "--set", "quantizer.codebok_size=8",
    )
    assert code == 2 and "unknown config key 'quantizer.codebok_size'" in err
    code, _, err = run_cli(  # a training key at its old top-level place: the error names where it went
        monkeypatch, capsys, "train-vq", "--store", str(store), "--config", str(config), "--out", str(run), "--device", "cpu",
        "--set", "steps=12",
    )
    assert code == 2 and "unknown config key 'steps' (moved: train.steps); valid keys:" in err and not run.exists()
    code, _, err = run_cli(
        monkeypatch, capsys, "train-vq", "--store", str(store), "--config", str(config), "--out", str(run), "--device", "cpu",
        "--set", "train.steps=12", "--set", "decoder.image_size=32", "--set", "train.log_every=4",
    )
    assert code == 0, err
    assert (run / "reconstructions.png").is_file() and (run / "metrics.csv").is_file()
    code, out, err = run_cli(monkeypatch, capsys, "tokenize", "--store", str(store), "--vq", str(run), "--name", "t", "--device", "cpu")
    assert code == 0 and "token set 't'" in out, err
    code, _, err = run_cli(monkeypatch, capsys, "tokenize", "--store", str(store), "--vq", str(run), "--name", "t")
    assert code == 2 and "--overwrite" in err
    code, out, _ = run_cli(monkeypatch, capsys, "analyze", "codes", "--store", str(store), "--tokens", "t", "--out", str(tmp_path / "codes"))
    assert code == 0 and "used codes" in out and (tmp_path / "codes" / "code_statistics.json").is_file()
    csv_path = tmp_path / "sep.csv"
    code, out, _ = run_cli(
        monkeypatch, capsys, "analyze", "separability", "--store", str(store), "--tokens", "t", "--csv", str(csv_path)
    )
    assert code == 0 and "kMeans" in out
    assert len(csv_path.read_text().strip().splitlines()) == 4  # header + last_block, final_norm, tokens
