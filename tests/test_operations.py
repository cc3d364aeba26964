"""Each operation is declared once: the command line and the pipeline stage kinds are generated from its params."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import typer
import typer.testing

from featcache.cli import _operation_command, app
from featcache.config import load_config
from featcache.errors import ConfigError, FeatcacheError
from featcache.operations import Operation, param, params_of
from featcache.pipelines import ALL_OPERATIONS, STAGE_KINDS
from featcache.pipelines.spec import load_pipeline
from featcache.stages.evaluate import EvalParams
from featcache.sweeps.spec import SweepSpec

ROOT = Path(__file__).resolve().parent.parent


def command_of(words: tuple[str, ...]) -> click.Command:
    command: Any = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]
    return command


def cli_options(command: click.Command) -> set[str]:
    return {option for parameter in command.params if parameter.param_type_name == "option" for option in parameter.opts if option != "--help"}


@pytest.mark.parametrize("operation", ALL_OPERATIONS, ids=[operation.name for operation in ALL_OPERATIONS])
def test_cli_options_are_the_declared_params(operation: Operation) -> None:
    command = command_of(operation.words)
    declared = {info.flag for info in operation.params() if not info.argument} | {
        "--" + name.replace("_", "-") for name in operation.config_options
    }
    assert cli_options(command) == declared
    arguments = [p.name for p in command.params if p.param_type_name == "argument"]
    assert arguments == [info.name for info in operation.params() if info.argument]
    assert command.help and command.help.strip() == operation.help


@pytest.mark.parametrize("operation", ALL_OPERATIONS, ids=[operation.name for operation in ALL_OPERATIONS])
def test_pipeline_kind_takes_exactly_the_declared_params(operation: Operation) -> None:
    """The stage kind is the operation itself: the same params dataclass, so a param exists in both or neither."""
    assert STAGE_KINDS.get(operation.name) is operation
    names = {info.name for info in params_of(operation.params_type)}
    with pytest.raises(ConfigError, match=r"unknown config key 'no_such_param'; valid keys: "):
        operation.make_params({"no_such_param": 1})
    for name in names:
        assert hasattr(operation.make_params({}), name)


def test_the_options_that_once_disagreed_exist_in_both() -> None:
    """`eval --masks` was CLI-only, `min_objects` pipeline-only: now each is one declared param."""
    assert "--masks" in cli_options(command_of(("eval",))) and "masks" in {i.name for i in STAGE_KINDS.get("eval").params()}
    assert {"--min-objects", "--max-objects"} <= cli_options(command_of(("data", "synth")))
    # Sweeps evaluate with the eval operation's own params.
    assert SweepSpec().eval == EvalParams()


@dataclass(frozen=True)
class _ToyParams:
    out: str = param("", help="Where to write.", role="out", required=True)
    count: int = param(3, help="How many.")
    fancy_flag: bool = param(False, help="A new option.")


class _Toy(Operation):
    """A toy operation."""

    name = "toy"
    params_type = _ToyParams

    def run(self, params: _ToyParams, resume: bool = False, show_progress: bool = True) -> str:
        Path(params.out).write_text(f"{params.count} {params.fancy_flag}")
        return "ok"


def test_a_new_param_appears_on_the_command_line_with_its_help(tmp_path: Path) -> None:
    toy = typer.Typer()
    toy.command("toy")(_operation_command(_Toy()))
    command = typer.main.get_command(toy)
    assert {"--out", "--count", "--fancy-flag"} <= cli_options(command)
    assert any(p.help == "A new option." for p in command.params)
    result = typer.testing.CliRunner().invoke(toy, ["--out", str(tmp_path / "x"), "--count", "5", "--fancy-flag"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x").read_text() == "5 True"
    result = typer.testing.CliRunner().invoke(toy, ["--count", "5"])
    assert result.exit_code != 0 and "--out" in result.output


def test_undeclared_fields_are_refused() -> None:
    @dataclass(frozen=True)
    class Bare:
        x: int = 0

    with pytest.raises(TypeError, match=r"Bare.x is not declared"):
        params_of(Bare)


def test_one_override_grammar_and_one_unknown_key_error(tmp_path: Path) -> None:
    """Files layered in order plus dotted key=value: the same merge and the same error for a run config,
    a pipeline stage's params and a sweep spec."""
    from featcache.sweeps.spec import load_sweep_spec
    from featcache.training.config import OCLTrainConfig

    with pytest.raises(ConfigError, match=r"unknown config key 'model.decoder.nme'; valid keys: model.decoder.dfz"):
        load_config(OCLTrainConfig, [ROOT / "configs/ocl/vvo-tfd.yaml"], ["model.decoder.nme=x"])
    with pytest.raises(ConfigError, match=r"unknown config key 'model.decoder.nme'; valid keys: model.decoder.dfz"):
        STAGE_KINDS.get("train-ocl").validate(STAGE_KINDS.get("train-ocl").make_params(
            {"store": "s", "out": "o", "config": "configs/ocl/vvo-tfd.yaml", "set": {"model.decoder.nme": "x"}}))
    with pytest.raises(ConfigError, match=r"unknown config key 'model.decoder.nme'; valid keys: model.decoder.dfz"):
        load_sweep_spec(ROOT / "configs/ablations/decoders-tiny.yaml", ["store=s.zarr", "set.model.decoder.nme=x"])
    with pytest.raises(FeatcacheError, match=r"unknown config key 'bogus'"):
        load_pipeline(ROOT / "pipelines/shapes.yaml", ["synth.bogus=1"], tmp_path)
    # Mapping fields update key by key: a grid key added by an override keeps the file's others.
    path = tmp_path / "spec.yaml"
    path.write_text("store: s.zarr\nbase: [configs/ocl/tiny.yaml, configs/ocl/dinosaur-mlp.yaml]\ngrid: {model.aggregator.num_slots: [4, 5]}\n")
    spec = load_sweep_spec(path, {"grid": {"model": {"aggregator": {"iterations": [2]}}}, "set": {"train.log_every": 3}})
    assert spec.grid == {"model.aggregator.num_slots": [4, 5], "model.aggregator.iterations": [2]} and spec.set == {"train.log_every": 3}


def test_config_options_are_a_shorthand_for_set(tmp_path: Path) -> None:
    """`extract --vfm X --set weights=random` builds the same typed config as `--set vfm=X --set weights=random`."""
    from featcache.cli import _cli_params

    extract = STAGE_KINDS.get("extract")
    values = {info.name: info.default for info in extract.params()} | {"data": "d", "out": "o", "set": ["weights=random"]}
    shorthand = _cli_params(extract, {**values, **{f"config__{k}": None for k in extract.config_options}, "config__vfm": "sam2-t16"})
    explicit = extract.make_params({"data": "d", "out": "o", "set": {"vfm": "sam2-t16", "weights": "random"}})
    assert extract.typed_config(shorthand) == extract.typed_config(explicit)


def test_choices_a_pipeline_or_sweep_makes_itself_are_refused_in_their_files(tmp_path: Path) -> None:
    from featcache.sweeps.spec import load_sweep_spec

    with pytest.raises(ConfigError, match=r"param 'resume' is a command-line choice; a pipeline decides it itself"):
        load_pipeline(ROOT / "pipelines/shapes.yaml", ["train-vq.resume=true"], tmp_path)
    with pytest.raises(ConfigError, match=r"eval.run is set by the sweep for every run"):
        load_sweep_spec(ROOT / "configs/ablations/decoders-tiny.yaml", ["store=s.zarr", "eval.run=elsewhere"])
