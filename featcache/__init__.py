"""featcache: run frozen vision foundation models once, cache their features in zarr, train OCL models from the cache."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("featcache")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
