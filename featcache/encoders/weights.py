"""Where encoder weights come from: the model hub, a local checkpoint file, or an explicit random init.

Every failure is one ``WeightsError`` line naming the model or file and what was expected, and random
weights are only ever produced for ``weights="random"``, so a cache can never silently hold features of an
untrained network.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlparse

import torch
from torch import nn

from featcache.errors import WeightsError

T = TypeVar("T")

WeightsSource = Literal["hub", "file", "random"]

#: Suffixes of checkpoint files the file loader reads.
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")

#: Wrapper keys that hold the actual state dict inside training or release checkpoints.
_WRAPPER_KEYS = ("teacher", "model", "state_dict")

#: Seconds to wait for a TCP connection to the hub before treating it as unreachable.
_HUB_PROBE_TIMEOUT_S = 3.0

_HUB_HINT = (
    "pass --weights PATH to a local checkpoint (official DINOv2/SAM2 .pth/.pt or a timm state dict, "
    ".pth/.safetensors) or --weights random for explicitly random-initialised weights"
)


def weights_source(weights: str) -> WeightsSource:
    """Classify the ``--weights`` value: ``"hub"``, ``"random"`` or anything else as a checkpoint path."""
    if weights == "hub":
        return "hub"
    if weights == "random":
        return "random"
    return "file"


# ----------------------------------------------------------------------------------------------- checksums


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the sorted (name, dtype, shape, bytes) of ``module``'s state dict.

    Identical weights give the identical digest whether they came from the hub, a file or a seed, so two
    stores can be compared by this value alone.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        # view as bytes: works for every dtype (bfloat16 included) and 0-dim tensors after the flatten
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ checkpoint files


def checkpoint_path(weights: str) -> Path:
    """The checkpoint file named by ``weights``; fails when it is missing or has an unknown suffix."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file {path} does not exist; expected a checkpoint path ({', '.join(CHECKPOINT_SUFFIXES)}), "
            "'hub' or 'random'"
        )
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise WeightsError(f"weights file {path} has suffix {path.suffix!r}; expected one of {', '.join(CHECKPOINT_SUFFIXES)}")
    return path


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pt``/``.pth`` file into a flat name -> tensor dict on the CPU.

    Pickled checkpoints are read with ``weights_only=True`` (no arbitrary code) and unwrapped from the
    ``teacher``/``model``/``state_dict`` wrappers that DINOv2 and SAM2 releases and training runs use.
    """
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own SafetensorError for corrupt headers
            raise WeightsError(f"could not read safetensors file {path}: {_short_reason(error)}") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types; all mean the same to the user
        raise WeightsError(f"could not read checkpoint {path} with torch.load(weights_only=True): {_short_reason(error)}") from None
    return _unwrap(loaded, path)


def _unwrap(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    """Descend into wrapper dicts until a dict of tensors remains; non-tensor entries are dropped."""
    while isinstance(loaded, Mapping):
        wrapped = next((key for key in _WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)), None)
        if wrapped is None:
            break
        loaded = loaded[wrapped]
    if not isinstance(loaded, Mapping):
        raise WeightsError(f"checkpoint {path} holds a {type(loaded).__name__}; expected a state dict (name -> tensor)")
    tensors = {str(key): value for key, value in loaded.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise WeightsError(
            f"checkpoint {path} holds no tensors (keys: {_first_keys(loaded.keys())}); expected a state dict, "
            f"optionally wrapped in one of {', '.join(_WRAPPER_KEYS)}"
        )
    return tensors


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keep only the keys under the first prefix that any key carries, without that prefix.

    Used for checkpoints that wrap the backbone (``teacher.backbone.``, ``backbone.``, DDP's ``module.``).
    """
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in state_dict):
            return {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    return dict(state_dict)


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` with missing/unexpected/mis-shaped keys reported in one line.

    ``module`` may live on the meta device: every tensor is replaced by the checkpoint's.
    """
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [
        f"{key} {tuple(state_dict[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({_first_keys(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({_first_keys(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches ({_first_keys(mismatched)})")
    if problems:
        raise WeightsError(f"checkpoint {path} does not fit {what}: {'; '.join(problems)}")
    # assign=True so modules built on the meta device (no wasted random init) receive real tensors; cast to
    # the module's dtypes first so a half-precision file still gives the float32 model
    cast = {key: state_dict[key].to(dtype=expected[key].dtype) for key in expected}
    module.load_state_dict(cast, strict=True, assign=True)
    if any(tensor.is_meta for tensor in module.state_dict().values()):
        raise RuntimeError(f"{what} still holds uninitialised (meta) tensors after loading {path}")


def convert_checkpoint(
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]],
    state_dict: dict[str, torch.Tensor],
    path: Path,
    what: str,
) -> dict[str, torch.Tensor]:
    """Run a timm checkpoint filter; its failures (odd shapes, missing keys) become one WeightsError line."""
    try:
        return convert(dict(state_dict))
    except (RuntimeError, ValueError, KeyError, IndexError, AssertionError) as error:
        raise WeightsError(f"checkpoint {path} could not be converted for {what}: {_short_reason(error)}") from None


# ------------------------------------------------------------------------------------------------------ hub


def from_hub(hub_id: str, load: Callable[[], T]) -> T:
    """Run ``load`` (a hub download) so that an unreachable hub fails fast with one WeightsError line.

    ``HF_HUB_OFFLINE`` is honoured even when set after ``huggingface_hub`` was imported, and when the hub
    host cannot be reached within a few seconds only the local cache is consulted, instead of
    huggingface_hub's minute of retries.
    """
    with _hub_session() as offline_reason:
        try:
            return load()
        except Exception as error:
            if not _is_download_error(error):
                raise
            reason = _short_reason(error)
            if offline_reason is not None:
                reason = offline_reason if _looks_like_missing_cache(error) else f"{offline_reason}; {reason}"
            raise WeightsError(f"could not download {hub_id} from the model hub ({reason}); {_HUB_HINT}") from None


@contextmanager
def _hub_session() -> Iterator[str | None]:
    """Switch huggingface_hub to cache-only mode while offline; yields why it is offline, or None."""
    try:
        from huggingface_hub import constants
    except ImportError:  # without huggingface_hub timm falls back to plain URL downloads
        yield None
        return
    reason: str | None = None
    if _is_true(os.environ.get("HF_HUB_OFFLINE")) or constants.HF_HUB_OFFLINE:
        reason = "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    else:
        unreachable = _probe_hub(constants.ENDPOINT)
        if unreachable is not None:
            reason = f"{unreachable}, and the weights are not in the local cache"
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = reason is not None
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = previous


def _probe_hub(endpoint: str) -> str | None:
    """Try one TCP connection to the hub endpoint; returns why it failed, or None when reachable.

    Skipped (None) behind a proxy, where the local resolver may not know the hub host at all.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    parsed = urlparse(endpoint)
    host = parsed.hostname or endpoint
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as error:
        return f"cannot reach {host}:{port}: {error.strerror or error}"


def _is_download_error(error: BaseException) -> bool:
    """Network, file-system and hub client errors; anything else (a bug) keeps its traceback."""
    package = type(error).__module__.split(".")[0]
    return isinstance(error, OSError) or package in ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3")


def _looks_like_missing_cache(error: BaseException) -> bool:
    """Whether an error raised in cache-only mode just says the file is not cached."""
    return type(error).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled") or "offline" in str(error).lower()


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _short_reason(error: BaseException) -> str:
    """First line of an exception message, capped, prefixed with its type."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _first_keys(keys: object, count: int = 4) -> str:
    """The first ``count`` keys, comma separated, with an ellipsis when there are more."""
    items = [str(key) for key in keys]  # type: ignore[union-attr]
    shown = ", ".join(items[:count])
    return shown + (", ..." if len(items) > count else "")
