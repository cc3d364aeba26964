"""User-facing errors: each carries one line that names the file, key or value and what was expected.

The CLI prints ``FeatcacheError`` messages without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class FeatcacheError(Exception):
    """A problem with the user's input (path, config, store, dataset) described in one line."""


class ConfigError(FeatcacheError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


class DatasetError(FeatcacheError):
    """A dataset path, layout, image or mask is missing or unreadable."""


class StoreError(FeatcacheError):
    """A store is missing, from a newer schema, incomplete, or mismatched with the requested run."""


class WeightsError(FeatcacheError):
    """Encoder weights could not be loaded from the hub or a checkpoint file."""


class RunsFailed(FeatcacheError):
    """Some runs of a sweep failed (each recorded with its error); the others finished. The CLI exits 1, not 2."""

    exit_code = 1
