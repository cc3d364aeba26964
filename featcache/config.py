"""Typed configs: YAML files and ``key=value`` overrides merged onto dataclasses.

One config object per stage is the single source of truth: it is resolved once, validated here (an
unknown key or a wrong type fails at load time, naming the key and the valid ones) and saved with
every artifact the stage writes, so training and evaluation never drift apart.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from featcache.errors import ConfigError

C = TypeVar("C")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert where it is lossless (int -> float, list -> tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(f"config key {key!r}: {value!r} does not match {tp}")
    if origin is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return merge(tp(), value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key {key!r}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r}")
    return value


#: Config classes with variants selected by one field (see :func:`variants`): class -> (field, kind -> class).
_VARIANTS: dict[type, tuple[str, dict[str, type]]] = {}


def variants(key: str, classes: dict[str, type]) -> None:
    """Declare config classes that one field ``key`` selects between (e.g. ``quantizer.kind``: vvo | msf).

    Merging ``{key: kind}`` onto any of ``classes`` converts the config to ``classes[kind]`` first (the fields
    both have are carried over, the others take their defaults), so a YAML file can say
    ``quantizer: {kind: msf, num_scales: 3}`` and a saved config rebuilds as the class it was saved from.
    """
    for cls in classes.values():
        _VARIANTS[cls] = (key, dict(classes))


def _as_variant(base: C, updates: dict[str, Any], prefix: str) -> C:
    """``base`` converted to the variant that ``updates`` selects (``base`` itself when it selects none)."""
    entry = _VARIANTS.get(type(base))
    if entry is None or entry[0] not in updates:
        return base
    key, classes = entry
    kind = updates[key]
    if kind not in classes:
        raise ConfigError(f"config key {prefix + key!r}: {kind!r} is not one of {sorted(classes)}")
    target = classes[kind]
    if target is type(base):
        return base
    names = {f.name for f in dataclasses.fields(target) if f.init} - {key}
    return target(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name in names})  # type: ignore[arg-type]


def _variant_hint(base: Any, key: str, prefix: str) -> str:
    """`` (a key of kind: K; set PREFIX.FIELD: K first)`` when another variant of ``base`` has ``key``."""
    entry = _VARIANTS.get(type(base))
    if entry is None:
        return ""
    field, classes = entry
    kinds = [kind for kind, cls in classes.items() if cls is not type(base) and key in {f.name for f in dataclasses.fields(cls)}]
    return f" (a key of {field}: {kinds[0]}; set {prefix}{field}: {kinds[0]} first)" if kinds else ""


def merge(base: C, updates: dict[str, Any], prefix: str = "") -> C:
    """Return a copy of dataclass ``base`` with ``updates`` applied; unknown keys fail naming the valid ones."""
    base = _as_variant(base, updates, prefix)
    hints = get_type_hints(type(base))
    fields = {f.name for f in dataclasses.fields(base)}  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    for key, value in updates.items():
        if key not in fields:
            moved = _MOVED_KEYS.get(type(base), {}).get(key)
            hint = f" (moved: {prefix}{moved})" if moved else _variant_hint(base, key, prefix)
            raise ConfigError(
                f"unknown config key {prefix + key!r}{hint}; valid keys: {', '.join(sorted(prefix + f for f in fields))}"
            )
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, prefix=f"{prefix}{key}.")
        elif get_origin(hints[key]) is dict and isinstance(current, dict) and isinstance(value, dict):
            # Mapping fields (a sweep's set/grid, an operation's set) hold dotted keys, updated key by key.
            changes[key] = {**flatten_keys(current), **flatten_keys(value)}
        else:
            changes[key] = _coerce(value, hints[key], prefix + key)
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


def deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``updates`` merged in, mappings recursively (plain dicts, before they become configs)."""
    merged = dict(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=3", "name=x"]`` into a nested dict; values are parsed as YAML scalars/lists."""
    flat: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        dotted, raw = item.split("=", 1)
        flat[dotted.strip()] = yaml.safe_load(raw) if raw != "" else ""
    return nest_keys(flat)


def nest_keys(flat: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> the nested mapping :func:`merge` takes (later keys win)."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted!r} conflicts with the override of {part!r} = {child!r}")
            node = child
        node[parts[-1]] = value
    return nested


def repo_root() -> Path:
    """featcache's source checkout: the folder holding the package and the shipped ``configs/`` and ``pipelines/``."""
    return Path(__file__).resolve().parent.parent


def find_config_file(path: str | Path) -> Path:
    """``path`` when it exists from the current directory (or is absolute), else the shipped file at that
    relative path in featcache's source checkout, so ``configs/ocl/tiny.yaml`` works from any directory."""
    file = Path(path).expanduser()
    if file.is_absolute() or file.exists():
        return file
    shipped = repo_root() / file
    return shipped if shipped.exists() else file


def load_config(
    cls: type[C], path: str | Path | list[str | Path] | list[Path] | None = None, overrides: list[str] | None = None
) -> C:
    """Build ``cls()`` defaults, merge the YAML file(s) at ``path`` in order, then the ``key=value`` overrides.

    Several files layer: a method config first, then e.g. a size preset (``configs/ocl/tiny.yaml``).
    Relative paths are looked up with :func:`find_config_file` (current directory first, then the shipped configs).
    """
    config = cls()
    paths = [] if path is None else list(path) if isinstance(path, list) else [path]
    for entry in paths:
        file = find_config_file(entry)
        if not file.is_file():
            raise ConfigError(f"config file {file} does not exist")
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {file} is not valid YAML: {str(error).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level")
        try:
            config = merge(config, data)
        except ConfigError as error:
            raise ConfigError(f"{file}: {error}") from None
    if overrides:
        config = merge(config, parse_overrides(overrides))
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-friendly dict of a dataclass config (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


#: Per config class, its keys that moved into a section: old top-level key -> new dotted key (see :func:`moved_keys`).
_MOVED_KEYS: dict[type, dict[str, str]] = {}


def _field_path_exists(cls: type, dotted: str) -> bool:
    """Whether ``dotted`` (``train.steps``) names a field of dataclass ``cls``, through nested dataclass fields."""
    *sections, name = dotted.split(".")
    for section in sections:
        hint = get_type_hints(cls).get(section) if _is_dataclass_type(cls) else None
        if not _is_dataclass_type(hint):
            return False
        cls = hint
    return _is_dataclass_type(cls) and name in {f.name for f in dataclasses.fields(cls)}


def moved_keys(cls: type, moves: dict[str, str]) -> None:
    """Declare keys of ``cls`` that moved: each old key (a top-level field name ``cls`` no longer has) -> its new
    dotted key (``{"steps": "train.steps"}``), registered next to the class.

    Configs saved before the move (config.yaml in run folders) load through :func:`from_dict`, which moves the
    old keys to their new place; a config file or override that still uses an old key fails as an unknown key
    whose error names the new one (``unknown config key 'steps' (moved: train.steps); valid keys: ...``).
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    for old, new in moves.items():
        if "." in old or old in fields:
            raise ValueError(f"moved_keys({cls.__name__}): old key {old!r} must be a top-level name {cls.__name__} no longer has")
        if not _field_path_exists(cls, new):
            raise ValueError(f"moved_keys({cls.__name__}): new key {new!r} is not a field of {cls.__name__}")
    _MOVED_KEYS.setdefault(cls, {}).update(moves)


def moved_key(cls: type, key: str) -> str | None:
    """Where the old top-level ``key`` of ``cls`` moved (its new dotted key), or None when it did not move."""
    return _MOVED_KEYS.get(cls, {}).get(key)


def _move_saved_keys(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a saved config of ``cls``) with its old keys moved to their :func:`moved_keys` places."""
    moves = _MOVED_KEYS.get(cls)
    if not moves or not any(key in data for key in moves):
        return data
    moved = {key: value for key, value in data.items() if key not in moves}
    for old, new in moves.items():
        if old not in data:
            continue
        *sections, name = new.split(".")
        node = moved
        for section in sections:
            child = node.get(section)
            child = dict(child) if isinstance(child, dict) else {}
            node[section] = child
            node = child
        if name in node:
            raise ConfigError(f"saved config holds both {old!r} and its new key {new!r}")
        node[name] = data[old]
    return moved


#: Per config class, the values of fields added after run folders were first written (see :func:`saved_before`).
_SAVED_BEFORE: dict[type, Callable[[dict[str, Any]], dict[str, Any]]] = {}


def saved_before(cls: type, values: dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Declare what a config saved before ``cls`` had some fields meant: ``values`` (or a function of the saved
    mapping, for values that depended on another field) for each field a saved config lacks.

    Saved configs are complete (``to_dict`` writes every field), so a missing field means the run was written
    before it existed; it gets the value that reproduces what featcache did then, not today's default.
    """
    _SAVED_BEFORE[cls] = values if callable(values) else (lambda saved, fixed=dict(values): fixed)


def _fill_saved_before(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its moved keys in their new places (:func:`moved_keys`) and the fields it lacks filled as
    declared by :func:`saved_before`, nested configs included."""
    filled = dict(_move_saved_keys(cls, data))
    legacy = _SAVED_BEFORE.get(cls)
    if legacy is not None:
        for key, value in legacy(data).items():
            filled.setdefault(key, value)
    hints = get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if _is_dataclass_type(hints[field.name]) and isinstance(filled.get(field.name), dict):
            filled[field.name] = _fill_saved_before(hints[field.name], filled[field.name])
    return filled


def from_dict(cls: type[C], data: dict[str, Any]) -> C:
    """Rebuild a config saved with :func:`to_dict` (strict: a key the class lacks fails; a key that moved since
    the config was saved is read at its :func:`moved_keys` place; a field the saved config lacks, because it was
    written before the field existed, gets its :func:`saved_before` value)."""
    return merge(cls(), _fill_saved_before(cls, data))


def flatten_keys(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"decoder": {"name": "tfd"}}, "steps": 5}`` -> ``{"model.decoder.name": "tfd", "steps": 5}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_keys(value, prefix=f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
