"""Typed configs: YAML merged onto dataclasses, overrides, and load-time failures naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from featcache.config import from_dict, load_config, parse_overrides, to_dict
from featcache.errors import ConfigError
from featcache.extraction import ExtractConfig


@dataclass(frozen=True)
class Inner:
    size: int = 3
    rate: float = 0.5


@dataclass(frozen=True)
class Outer:
    name: str = "a"
    inner: Inner = field(default_factory=Inner)
    tags: tuple[str, ...] = ()
    maybe: int | None = None


def test_yaml_and_overrides_merge_onto_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: b\ninner:\n  size: 5\ntags: [x, y]\n")
    config = load_config(Outer, path, ["inner.rate=2", "maybe=7"])
    assert config == Outer(name="b", inner=Inner(size=5, rate=2.0), tags=("x", "y"), maybe=7)
    assert from_dict(Outer, to_dict(config)) == config


def test_unknown_key_names_it_and_the_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  szie: 5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.szie'.*inner.rate, inner.size"):
        load_config(Outer, path)


def test_wrong_type_fails_at_load_time() -> None:
    with pytest.raises(ConfigError, match="inner.size.*expected an integer"):
        load_config(Outer, None, ["inner.size=big"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothere.yaml does not exist"):
        load_config(Outer, tmp_path / "nothere.yaml")


def test_every_shipped_extract_config_loads() -> None:
    configs = sorted((Path(__file__).parent.parent / "configs" / "extract").glob("*.yaml"))
    assert configs, "configs/extract/ ships no config"
    for path in configs:
        config = load_config(ExtractConfig, path)
        assert config.vfm
