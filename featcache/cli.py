"""The `featcache` command line: parse arguments, call library functions, print results.

The operations' commands (synth, extract, train-vq, tokenize, train-ocl, eval, analyze, import-vvo, sweep,
report) are generated from their declared params (featcache.operations): one option per param, with its
help text; nothing about them is written here. The other commands (info, encoders, bench, run, quickstart)
only adapt arguments to a library function. A ``FeatcacheError`` becomes one red line and exit code 2.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Union, get_args, get_origin, get_type_hints

import typer

from featcache.console import RandomWeightsWarning, console, error_console
from featcache.errors import FeatcacheError
from featcache.operations import Operation, ParamInfo, overrides_mapping

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0] if __doc__ else None)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate synthetic scenes.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks measured side by side in one run.")
analyze_app = typer.Typer(no_args_is_help=True, help="Diagnostics of features and codes.")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(analyze_app, name="analyze")
probe_app = typer.Typer(no_args_is_help=True, help="Probes of what slots encode (set prediction).")
app.add_typer(probe_app, name="probe")


def _write_json(path: Path | None, result: dict[str, Any]) -> None:
    """Write a benchmark's figures to ``path`` when given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    if issubclass(category, RandomWeightsWarning):
        error_console.print(f"[bold yellow]WARNING[/]: {message}")
    else:
        error_console.print(f"[yellow]{category.__name__}[/]: {message}")


# ----------------------------------------------------------------------------- operations, generated
def _cli_type(info: ParamInfo) -> Any:
    """The type typer parses an operation param as (``set`` and ``config`` params are repeatable strings)."""
    path = info.role in ("input", "out", "config")  # shown as <path>; handed to the operation as a string
    if info.role == "set" or (info.role == "config" and not info.argument):
        return list[Path] if path else list[str]
    origin, args = get_origin(info.type), [arg for arg in get_args(info.type) if arg is not type(None)]
    if origin in (Union, types.UnionType):
        return Optional[Path if path and args[0] is str else args[0]]
    if origin is list:
        return list[Path] if path else list[args[0]] if args else list[str]
    return Path if path and info.type is str else info.type


def _cli_parameter(info: ParamInfo, name: str | None = None) -> inspect.Parameter:
    if info.argument:
        default: Any = typer.Argument(... if info.required else info.default, help=info.help)
    elif info.type is bool and not info.required:
        default = typer.Option(info.default, info.flag if not info.default else f"{info.flag}/--no-{info.flag[2:]}", help=info.help)
    else:
        value = ... if info.required else ([] if isinstance(info.default, (list, dict)) else info.default)
        default = typer.Option(value, info.flag, help=info.help, show_default=value is not ... and value not in ([], None, ""))
    return inspect.Parameter(name or info.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=_cli_type(info))


def _config_option_infos(operation: Operation) -> list[ParamInfo]:
    """``extract --vfm`` and friends: fields of the operation's typed config offered as options (a shorthand for --set)."""
    if not operation.config_options:
        return []
    hints = get_type_hints(operation.config_class())
    return [
        ParamInfo(field, Optional[hints[field]], None, text, "value", False, "--" + field.replace("_", "-"), False)
        for field, text in operation.config_options.items()
    ]


def _cli_params(operation: Operation, values: dict[str, Any]) -> Any:
    """The operation's typed params from parsed command-line values (config options join the ``set`` overrides)."""
    shorthand = {field: values.pop(f"config__{field}") for field in operation.config_options}
    fields = {info.name: info for info in operation.params()}
    params: dict[str, Any] = {}
    for name, value in values.items():
        info = fields[name]
        if info.role == "set":
            value = overrides_mapping(list(value or []))
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, list):
            value = [str(item) if isinstance(item, Path) else item for item in value]
        params[name] = value
    set_field = operation.roles("set")
    given = {field: value for field, value in shorthand.items() if value is not None}
    if given:
        params[set_field[0]] = {**given, **params.get(set_field[0], {})}  # an explicit --set wins over the shorthand
    return operation.make_params(params)


def _operation_command(operation: Operation) -> Callable[..., None]:
    """A typer command whose options are the operation's declared params."""
    infos = operation.params()
    parameters = [_cli_parameter(info) for info in infos if info.argument]
    parameters += [_cli_parameter(info) for info in infos if not info.argument]
    parameters += [_cli_parameter(info, f"config__{info.name}") for info in _config_option_infos(operation)]

    def command(**values: Any) -> None:
        params = _cli_params(operation, values)
        operation.validate(params)
        note = operation.run(params, resume=False, show_progress=True)
        if note:
            console.print(note)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    command.__name__ = operation.name.replace("-", "_")
    command.__doc__ = operation.help
    return command


def _add_operation_commands() -> None:
    from featcache.pipelines.kinds import ALL_OPERATIONS

    groups = {"data": data_app, "analyze": analyze_app, "probe": probe_app}
    for operation in ALL_OPERATIONS:
        *group, name = operation.words
        target = groups[group[0]] if group else app
        target.command(name, help=operation.help)(_operation_command(operation))


_add_operation_commands()

@app.command()
def info(
    store: Path = typer.Argument(..., help="A featcache store."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
) -> None:
    """Summarise a store: provenance, layout, completeness and bytes on disk."""
    from featcache.store.summary import print_store_summary, store_summary

    summary = store_summary(store)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_store_summary(summary)


@app.command()
def encoders() -> None:
    """List the registered VFMs with their default configs."""
    from featcache.encoders.table import print_encoders

    print_encoders()


@bench_app.command("extract")
def bench_extract(
    images: int = typer.Option(96, help="Images to extract (each gives 2 views)."),
    resolution: int = typer.Option(224, help="Model input side."),
    batch_size: int = typer.Option(16, help="Images per forward pass."),
    vfm: str = typer.Option("dino2-s14", help="VFM (random weights)."),
    work_dir: Path = typer.Option(Path("cache/bench"), help="Scratch folder (re-created)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Extraction images/s vs the bare model forward, store bytes/image, random-batch read throughput."""
    from featcache.bench.extract import print_extract_benchmark, run_extract_benchmark

    result = run_extract_benchmark(work_dir, images=images, resolution=resolution, batch_size=batch_size, vfm=vfm)
    print_extract_benchmark(result)
    _write_json(json_out, result)


@bench_app.command("vq")
def bench_vq(
    config: Path = typer.Option(Path("configs/vq/tiny.yaml"), help="VQ config used by both sides."),
    images: int = typer.Option(64, help="Synthetic images extracted into the benchmark store."),
    resolution: int = typer.Option(224, help="VFM input side."),
    steps: int = typer.Option(10, help="Training steps per round and side."),
    rounds: int = typer.Option(2, help="Alternating rounds; the best of each side counts."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    work_dir: Path = typer.Option(Path("cache/bench-vq"), help="Scratch folder (re-created)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """VQ pre-training samples/s from the cache vs online VFM features, same config, same run."""
    from featcache.bench.vq import print_vq_benchmark, run_vq_benchmark

    result = run_vq_benchmark(work_dir, config, images=images, resolution=resolution, steps=steps, rounds=rounds, device=device)
    print_vq_benchmark(result)
    _write_json(json_out, result)


@bench_app.command("ocl")
def bench_ocl(
    configs: Path = typer.Option(Path("configs/ocl"), help="Folder with the OCL configs (vvo-tfd, dinosaur-mlp, tiny)."),
    images: int = typer.Option(64, help="Synthetic images extracted into the benchmark store."),
    resolution: int = typer.Option(224, help="VFM input side."),
    steps: int = typer.Option(10, help="Training steps per round and side."),
    rounds: int = typer.Option(2, help="Alternating rounds; the best of each side counts."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    work_dir: Path = typer.Option(Path("cache/bench-ocl"), help="Scratch folder (re-created)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
    video: bool = typer.Option(False, "--video", help="Temporal configs (vvo-tfdt, videosaur-mlp + tiny-video) on synthetic clips."),
) -> None:
    """OCL training samples/s from the cache vs online, for vvo-tfd and dinosaur-mlp (--video: vvo-tfdt, videosaur-mlp), same run."""
    from featcache.bench.ocl import print_ocl_benchmark, run_ocl_benchmark

    result = run_ocl_benchmark(work_dir, configs, images=images, resolution=resolution, steps=steps, rounds=rounds, device=device, video=video)
    print_ocl_benchmark(result)
    _write_json(json_out, result)


@bench_app.command("sweep")
def bench_sweep(
    configs: Path = typer.Option(Path("configs/ocl"), help="Folder with the OCL configs (its ../ablations holds decoders-tiny.yaml)."),
    seeds: int = typer.Option(3, help="Seeds per decoder."),
    images: int = typer.Option(64, help="Synthetic images extracted into the benchmark store."),
    resolution: int = typer.Option(224, help="VFM input side."),
    steps: int = typer.Option(20, help="Training steps per run."),
    rounds: int = typer.Option(2, help="Alternating rounds; the best of each side counts."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    work_dir: Path = typer.Option(Path("cache/bench-sweep"), help="Scratch folder."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Wall time of the tiny decoder sweep with seeds one after another, fused, and online, same run."""
    from featcache.bench.sweep import print_sweep_benchmark, run_sweep_benchmark

    result = run_sweep_benchmark(work_dir, configs, seeds=seeds, images=images, resolution=resolution, steps=steps, rounds=rounds, device=device)
    print_sweep_benchmark(result)
    _write_json(json_out, result)


@bench_app.command("known-answer")
def bench_known_answer(
    method: list[str] = typer.Option([], "--method", help="perfect-slots/dinosaur-mlp | segments/dinosaur-mlp | tokens/vvo-tfd (repeatable; default all)."),
    seeds: int = typer.Option(3, help="Seeds 0..N-1 of every method."),
    config: list[Path] = typer.Option([], "--config", help="Config file layered after the method config and configs/ocl/known-answer.yaml (repeatable)."),
    set_: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE for every method (repeatable), e.g. train.lr_schedule=constant."),
    train_images: int = typer.Option(1024, help="Scenes in the training store."),
    validation_images: int = typer.Option(256, help="Held-out scenes every method is scored on."),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    out: Path = typer.Option(Path("runs/known-answer"), help="Work folder (stores, runs, table, curves); finished seeds with the same settings are reused."),
) -> None:
    """Known-answer learning suite: FG-ARI on synthetic stores whose segmentation is known, against each task's bar."""
    from featcache.bench.known_answer import featcache_methods, print_summary, run_suite, write_summary

    methods = featcache_methods(list(method) or None, list(config), list(set_), device)
    summary = run_suite(out, methods, list(range(seeds)), train_images=train_images, validation_images=validation_images)
    paths = write_summary(summary, out)
    print_summary(summary)
    console.print(f"wrote {paths['csv']}, {paths['json']}, {paths['curves']} and {paths['png']}")


@app.command("run")
def run_command(
    pipeline: Path = typer.Argument(..., help="Pipeline YAML (pipelines/); shipped ones are found from any directory."),
    workdir: Optional[Path] = typer.Option(None, help="Folder for outputs and stage records; default the file's workdir or runs/pipelines/<name>."),
    set_: list[str] = typer.Option([], "--set", help="Stage param override STAGE.PARAM=VALUE, e.g. train-vq.set.train.steps=100 (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and show what would run, without running anything."),
    force: list[str] = typer.Option([], "--force", help="Re-run this stage (and everything downstream) even if done (repeatable)."),
) -> None:
    """Run a declarative pipeline: stages in order, skipping those done with the same inputs (by fingerprint)."""
    from featcache.pipelines import load_pipeline, print_pipeline_result, run_pipeline

    loaded = load_pipeline(pipeline, list(set_), workdir)
    result = run_pipeline(loaded, force=list(force), dry_run=dry_run)
    print_pipeline_result(result)
    if result.error is not None:
        raise FeatcacheError(result.error)


@app.command()
def quickstart(
    out: Optional[Path] = typer.Option(None, help="Workdir for everything it writes; default runs/pipelines/quickstart."),
    set_: list[str] = typer.Option([], "--set", help="Stage param override STAGE.PARAM=VALUE (as for `featcache run`)."),
) -> None:
    """Synthetic scenes -> extract (random weights) -> VQ -> tokens -> two OCL decoders -> report, in minutes on a CPU."""
    from featcache.pipelines import print_pipeline_result, run_quickstart

    result = run_quickstart(out, list(set_))
    print_pipeline_result(result)
    if result.error is not None:
        raise FeatcacheError(result.error)
    console.print(f"report: {result.output('report', 'report')} (and report.html next to it)")


def main() -> None:
    """Console-script entry point: one-line errors for bad input, tracebacks only for bugs."""
    warnings.showwarning = _show_warning
    try:
        app()
    except FeatcacheError as error:
        error_console.print(f"[bold red]error[/]: {error}", soft_wrap=True)
        sys.exit(getattr(error, "exit_code", 2))


if __name__ == "__main__":
    main()
