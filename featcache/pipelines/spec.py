"""Pipeline files: a named list of stages, validated whole before anything runs.

A pipeline YAML holds ``name``, an optional ``workdir`` and ``description``, and ``stages``: a list of
``{name, kind, params, needs}``. A stage points at an upstream output with a reference
``${stages.NAME.OUTPUT}`` (e.g. ``${stages.extract.store}``); a reference is also a dependency, so
``needs`` is only for order without data (rarely needed). ``${workdir}`` is the pipeline's workdir.

Paths: outputs (``out``) that are relative resolve against the workdir (default
``runs/pipelines/<name>``, itself relative to the current directory); input paths (data, stores named
directly) resolve against the current directory, like every other featcache command; config files
(and pipeline files) are looked up from the current directory first, then among featcache's shipped
files (:func:`featcache.config.find_config_file`), so ``configs/ocl/tiny.yaml`` works from anywhere.

Loading checks every stage kind, every parameter against the kind's typed params (and the typed config
the params name, e.g. an OCL config plus its ``set`` overrides), every ``needs``/reference name, cycles,
and that no two stages write the same output; errors name the file and the stage.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from featcache.config import deep_update, find_config_file, parse_overrides, repo_root
from featcache.errors import ConfigError, FeatcacheError
from featcache.operations import Operation
from featcache.pipelines.kinds import STAGE_KINDS

STAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
VARIABLE = re.compile(r"\$\{([^}]*)\}")
STAGE_REFERENCE = re.compile(r"^stages\.([A-Za-z0-9][A-Za-z0-9_-]*)\.([A-Za-z0-9_]+)$")
PIPELINE_KEYS = ("name", "description", "workdir", "stages")
STAGE_KEYS = ("name", "kind", "params", "needs")
DEFAULT_WORKDIR = Path("runs") / "pipelines"


@dataclass(frozen=True)
class StageSpec:
    """One validated stage: its typed params (references resolved, paths absolute) and the outputs it writes."""

    name: str
    kind: str
    params: Any
    #: Upstream stages: the explicit ``needs`` plus every stage a reference points at, in file order.
    needs: tuple[str, ...]
    outputs: dict[str, str]

    @property
    def stage_kind(self) -> Operation:
        return STAGE_KINDS.get(self.kind)


@dataclass(frozen=True)
class Pipeline:
    """A loaded pipeline: stages in an order where every stage follows the stages it needs."""

    name: str
    path: Path
    workdir: Path
    stages: tuple[StageSpec, ...]
    description: str = ""

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise FeatcacheError(f"pipeline {self.name!r} has no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(
            f"pipeline file {path} is not valid YAML{where}: {problem} (inside [...] or {{...}}, quote values holding ${{...}})"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"pipeline file {path} must hold a mapping with {', '.join(PIPELINE_KEYS)}")
    return data


def _unknown_keys(found: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(found) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")


def _strings(value: Any) -> list[str]:
    """Every string inside nested params (where references may appear)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item)]
    return []


def _referenced_stages(params: dict[str, Any], where: str) -> list[str]:
    names: list[str] = []
    for text in _strings(params):
        for variable in VARIABLE.findall(text):
            match = STAGE_REFERENCE.match(variable.strip())
            if match and match[1] not in names:
                names.append(match[1])
            elif not match and variable.strip() != "workdir":
                raise ConfigError(f"{where}: unknown variable ${{{variable}}}; valid: ${{stages.NAME.OUTPUT}}, ${{workdir}}")
    return names


def _substitute(value: Any, variables: dict[str, str], outputs: dict[str, dict[str, str]], where: str) -> Any:
    """``value`` with every ``${...}`` replaced: upstream outputs and ``workdir``."""
    if isinstance(value, dict):
        return {key: _substitute(item, variables, outputs, where) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, variables, outputs, where) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        variable = match[1].strip()
        if variable in variables:
            return variables[variable]
        reference = STAGE_REFERENCE.match(variable)
        assert reference is not None  # checked by _referenced_stages
        stage, output = reference[1], reference[2]
        if output not in outputs[stage]:
            raise ConfigError(f"{where}: ${{{variable}}}: stage {stage!r} has no output {output!r}; outputs: {', '.join(outputs[stage])}")
        return outputs[stage][output]

    return VARIABLE.sub(replace, value)


def _find_cycle(order: list[str], needs: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of stage names (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for upstream in needs[name]:
            if state.get(upstream) == 1:
                return path[path.index(upstream) :] + [upstream]
            if upstream not in state and (cycle := visit(upstream)) is not None:
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in order:
        if name not in state and (cycle := visit(name)) is not None:
            return cycle
    return None


def _topological(order: list[str], needs: dict[str, list[str]]) -> list[str]:
    """Stages sorted so needs come first; ties keep the file order."""
    placed: list[str] = []
    remaining = list(order)
    while remaining:
        ready = next(name for name in remaining if all(upstream in placed for upstream in needs[name]))
        placed.append(ready)
        remaining.remove(ready)
    return placed


def _absolute(path: str, base: Path) -> str:
    expanded = Path(os.path.expanduser(path))
    return os.path.abspath(expanded if expanded.is_absolute() else base / expanded)


def _resolve_paths(kind: Operation, params: Any, stage_name: str, workdir: Path) -> Any:
    """Inputs absolute against the current directory, config files found as :func:`find_config_file` does,
    ``out`` (default: the stage name) against the workdir."""
    changes: dict[str, Any] = {}
    for keys, locate in ((kind.roles("input"), str), (kind.roles("config"), lambda path: str(find_config_file(path)))):
        for key in keys:
            value = getattr(params, key)
            if isinstance(value, str) and value:
                changes[key] = _absolute(locate(value), Path.cwd())
            elif isinstance(value, (list, tuple)):
                changes[key] = type(value)(_absolute(locate(item), Path.cwd()) for item in value)
    if kind.writes_out:
        changes["out"] = _absolute(params.out or stage_name + kind.out_suffix, workdir)
    return dataclasses.replace(params, **changes)


def _refuse_cli_only(kind: Operation, params: dict[str, Any]) -> None:
    """Command-line-only params (``resume``, ``overwrite``) are the runner's decision in a pipeline."""
    for name in kind.roles("cli"):
        if name in params:
            raise ConfigError(f"param {name!r} is a command-line choice; a pipeline decides it itself (stages resume and set aside outputs)")


def shipped_pipeline(name: str) -> Path:
    """The path of ``pipelines/<name>.yaml`` in featcache's source checkout (where `pip install -e .` points)."""
    path = repo_root() / "pipelines" / f"{name}.yaml"
    if not path.is_file():
        raise FeatcacheError(
            f"shipped pipeline {path} not found: featcache's pipelines/ and configs/ live in its source checkout; "
            "install with `pip install -e .` from a clone of the repository"
        )
    return path


def _read_stages(raw_stages: Any, path: Path) -> dict[str, dict[str, Any]]:
    """name -> {kind, params, needs} of the file's stages, each checked for its keys, name and kind."""
    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError(f"pipeline file {path}: 'stages' must be a non-empty list of {{name, kind, params, needs}}")
    stages: dict[str, dict[str, Any]] = {}
    for position, raw in enumerate(raw_stages):
        where = f"pipeline file {path}, stage {position + 1}"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {', '.join(STAGE_KEYS)}")
        stage_name = raw.get("name")
        if not isinstance(stage_name, str) or not STAGE_NAME.match(stage_name):
            raise ConfigError(f"{where}: 'name' must be a word of letters, digits, '-' or '_', got {stage_name!r}")
        where = f"pipeline file {path}, stage {stage_name!r}"
        _unknown_keys(raw, STAGE_KEYS, where)
        if stage_name in stages:
            raise ConfigError(f"{where}: the name is used by two stages")
        if "kind" not in raw:
            raise ConfigError(f"{where}: no 'kind'; known kinds: {', '.join(STAGE_KINDS.names())}")
        try:
            STAGE_KINDS.get(str(raw["kind"]))
        except FeatcacheError as error:
            raise ConfigError(f"{where}: {error}") from None
        params = raw.get("params") or {}
        needs = raw.get("needs") or []
        if not isinstance(params, dict):
            raise ConfigError(f"{where}: 'params' must be a mapping, got {params!r}")
        if not isinstance(needs, list) or not all(isinstance(item, str) for item in needs):
            raise ConfigError(f"{where}: 'needs' must be a list of stage names, got {needs!r}")
        stages[stage_name] = {"kind": str(raw["kind"]), "params": copy.deepcopy(params), "needs": list(needs)}
    return stages


def _apply_overrides(stages: dict[str, dict[str, Any]], overrides: list[str], pipeline_name: str) -> None:
    """``--set STAGE.PARAM=VALUE`` merged into the stages' raw params (nested mappings merge key by key)."""
    for stage_name, updates in parse_overrides(overrides).items():
        if stage_name not in stages:
            raise ConfigError(f"--set {stage_name}.PARAM: pipeline {pipeline_name!r} has no stage {stage_name!r}; stages: {', '.join(stages)}")
        if not isinstance(updates, dict):
            raise ConfigError(f"--set {stage_name}={updates!r}: expected --set {stage_name}.PARAM=VALUE")
        stages[stage_name]["params"] = deep_update(stages[stage_name]["params"], updates)


def _dependencies(stages: dict[str, dict[str, Any]], path: Path) -> dict[str, list[str]]:
    """Each stage's upstream stages (``needs`` plus references), checked for unknown names and cycles."""
    needs: dict[str, list[str]] = {}
    for stage_name, raw in stages.items():
        where = f"pipeline file {path}, stage {stage_name!r}"
        upstream = raw["needs"] + _referenced_stages(raw["params"], where)
        for name in upstream:
            if name not in stages:
                raise ConfigError(f"{where}: needs unknown stage {name!r}; stages: {', '.join(stages)}")
        needs[stage_name] = list(dict.fromkeys(upstream))
    cycle = _find_cycle(list(stages), needs)
    if cycle is not None:
        raise ConfigError(f"pipeline file {path}: stages form a cycle: {' -> '.join(cycle)}")
    return needs


def load_pipeline(path: str | Path, overrides: list[str] | None = None, workdir: str | Path | None = None) -> Pipeline:
    """Read, resolve and validate a pipeline file; ``overrides`` are ``stage.param=value`` (``--set``)."""
    path = find_config_file(path)
    data = _read_yaml(path)
    _unknown_keys(data, PIPELINE_KEYS, f"pipeline file {path}")
    name = data.get("name")
    if not isinstance(name, str) or not STAGE_NAME.match(name):
        raise ConfigError(f"pipeline file {path}: 'name' must be a word of letters, digits, '-' or '_', got {name!r}")
    stages = _read_stages(data.get("stages"), path)
    _apply_overrides(stages, list(overrides or []), name)
    needs = _dependencies(stages, path)
    chosen_workdir = workdir if workdir is not None else data.get("workdir") or DEFAULT_WORKDIR / name
    root = Path(os.path.abspath(os.path.expanduser(str(chosen_workdir))))

    variables = {"workdir": str(root)}
    outputs: dict[str, dict[str, str]] = {}
    specs: list[StageSpec] = []
    owners: dict[str, str] = {}
    for stage_name in _topological(list(stages), needs):
        raw = stages[stage_name]
        where = f"pipeline file {path}, stage {stage_name!r} ({raw['kind']})"
        kind = STAGE_KINDS.get(raw["kind"])
        resolved = _substitute(raw["params"], variables, outputs, where)
        try:
            _refuse_cli_only(kind, resolved)
            params = kind.make_params(resolved)
            params = _resolve_paths(kind, params, stage_name, root)
            kind.validate(params)
        except FeatcacheError as error:
            raise ConfigError(f"{where}: {error}") from None
        outputs[stage_name] = kind.outputs(params)
        for owned in kind.owned(params):
            if owned in owners:
                raise ConfigError(f"{where}: writes {owned}, which stage {owners[owned]!r} writes too")
            owners[owned] = stage_name
        specs.append(StageSpec(stage_name, raw["kind"], params, tuple(needs[stage_name]), outputs[stage_name]))
    return Pipeline(name=name, path=path.resolve(), workdir=root, stages=tuple(specs), description=str(data.get("description") or ""))
