"""Typed configs: YAML merged onto dataclasses, overrides, and load-time failures naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import yaml

from featcache.config import flatten_keys, from_dict, load_config, moved_key, moved_keys, parse_overrides, to_dict
from featcache.errors import ConfigError
from featcache.extraction import ExtractConfig
from featcache.training.config import OCLTrainConfig, VQTrainConfig, with_seed


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


# ----------------------------------------------------------------------------- moved keys
@dataclass(frozen=True)
class Section:
    size: int = 3
    rate: float = 0.5


@dataclass(frozen=True)
class Moved:
    """``size`` and ``speed`` used to be top-level fields; they moved into ``section`` (``speed`` renamed ``rate``)."""

    name: str = "a"
    section: Section = field(default_factory=Section)


moved_keys(Moved, {"size": "section.size", "speed": "section.rate"})


@dataclass(frozen=True)
class Holder:
    moved: Moved = field(default_factory=Moved)


def test_saved_configs_with_moved_keys_load_at_their_new_place() -> None:
    assert from_dict(Moved, {"name": "b", "size": 4, "speed": 2.0}) == Moved(name="b", section=Section(size=4, rate=2.0))
    assert from_dict(Moved, {"size": 4, "section": {"rate": 1.0}}) == Moved(section=Section(size=4, rate=1.0))
    assert from_dict(Holder, {"moved": {"size": 5}}) == Holder(Moved(section=Section(size=5)))  # nested configs too
    assert from_dict(Moved, to_dict(Moved(section=Section(size=9)))) == Moved(section=Section(size=9))  # new layout as is
    assert moved_key(Moved, "size") == "section.size" and moved_key(Moved, "name") is None
    with pytest.raises(ConfigError, match=r"saved config holds both 'size' and its new key 'section.size'"):
        from_dict(Moved, {"size": 4, "section": {"size": 5}})


def test_an_old_key_in_a_file_or_override_fails_naming_where_it_went(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("size: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown config key 'size' \(moved: section.size\); valid keys: name, section$"):
        load_config(Moved, path)
    with pytest.raises(ConfigError, match=r"^unknown config key 'speed' \(moved: section.rate\); valid keys: name, section$"):
        load_config(Moved, None, ["speed=2"])
    with pytest.raises(ConfigError, match=r"unknown config key 'moved.size' \(moved: moved.section.size\)"):
        load_config(Holder, None, ["moved.size=2"])
    with pytest.raises(ConfigError, match=r"^unknown config key 'sise'; valid keys"):  # no hint for a plain typo
        load_config(Moved, None, ["sise=2"])


def test_moved_keys_are_checked_when_declared() -> None:
    with pytest.raises(ValueError, match="old key 'name' must be a top-level name Moved no longer has"):
        moved_keys(Moved, {"name": "section.size"})
    with pytest.raises(ValueError, match="new key 'section.sise' is not a field of Moved"):
        moved_keys(Moved, {"old": "section.sise"})


SAVED_CONFIGS = Path(__file__).parent / "fixtures" / "saved-configs"


@pytest.mark.parametrize(("name", "config_class"), [("ocl-flat.yaml", OCLTrainConfig), ("vq-flat.yaml", VQTrainConfig)])
def test_training_configs_saved_flat_load_to_the_same_values(name: str, config_class: type) -> None:
    """config.yaml files written before the `train` section (real ones, from that code) load with every value kept."""
    saved = yaml.safe_load((SAVED_CONFIGS / name).read_text())
    assert "steps" in saved and "train" not in saved
    config = from_dict(config_class, saved)
    loaded = flatten_keys(to_dict(config))
    for key, value in flatten_keys(saved).items():
        assert loaded[moved_key(config_class, key) or key] == value, key
    assert config.train.steps == saved["steps"] and config.train.seed == saved["seed"] and config.train.amp is False
    if config_class is OCLTrainConfig:
        assert config.train.data_seed == 5 and config.train.resolved_data_seed == 5 and config.validate_every == 22
    else:  # VQ configs had no data_seed: the batch order followed the seed, as it still does
        assert config.train.data_seed is None and config.train.resolved_data_seed == 2
    assert from_dict(config_class, to_dict(config)) == config  # saved again, in the new layout


def test_training_configs_name_the_new_place_of_a_flat_key() -> None:
    for config_class in (OCLTrainConfig, VQTrainConfig):
        with pytest.raises(ConfigError, match=r"unknown config key 'steps' \(moved: train.steps\)"):
            load_config(config_class, None, ["steps=100"])
        assert load_config(config_class, None, ["train.steps=100"]).train.steps == 100
    with pytest.raises(ConfigError, match=r"unknown config key 'data_seed' \(moved: train.data_seed\)"):
        load_config(OCLTrainConfig, None, ["data_seed=1"])
    assert load_config(OCLTrainConfig, None, ["validate_every=5"]).validate_every == 5  # OCL-only keys stay top-level


def test_each_training_config_keeps_its_own_defaults() -> None:
    vq, ocl = VQTrainConfig().train, OCLTrainConfig().train
    assert (vq.steps, vq.batch_size, vq.learning_rate) == (30000, 64, 2e-3)
    assert (ocl.steps, ocl.batch_size, ocl.learning_rate) == (50000, 32, 2e-4)
    assert replace(vq, steps=1, batch_size=1, learning_rate=1) == replace(ocl, steps=1, batch_size=1, learning_rate=1)
    assert (ocl.warmup_fraction, ocl.final_lr_ratio, ocl.lr_schedule, ocl.warmup_steps, ocl.lr_half_life) == (0.05, 1e-3, "cosine", None, 100000)
    assert (ocl.grad_clip, ocl.seed, ocl.data_seed, ocl.amp, ocl.log_every, ocl.checkpoint_every, ocl.loader) == (1.0, 0, None, True, 50, 1000, "auto")
    assert (OCLTrainConfig().validate_every, OCLTrainConfig().validation_images) == (1000, 64)
    # A YAML section merges onto the config's own defaults: VQ keeps its learning rate when only steps are given.
    assert load_config(VQTrainConfig, None, ["train.steps=5"]).train == replace(vq, steps=5)
    assert with_seed(OCLTrainConfig(), 4).train == replace(ocl, seed=4)
