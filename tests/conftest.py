"""Shared tiny fixtures: a synthetic dataset and the extraction config every store test uses.

Sizes are chosen so extraction of the whole fixture takes about a second on 2 CPU cores:
12 images of 64 px, DINOv2 ViT-S/14 with random weights at 28 px (2 x 2 patches), 4 samples per unit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from featcache.datasets import open_dataset, write_synthetic
from featcache.extraction import ExtractConfig, extract


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic images with masks, in the folder layout."""
    return write_synthetic(tmp_path_factory.mktemp("data") / "shapes", images=12, seed=0, size=64)


@pytest.fixture()
def tiny_config() -> ExtractConfig:
    return ExtractConfig(
        vfm="dino2-s14",
        weights="random",
        resolution=28,
        image_size=32,
        mask_size=48,
        samples_per_chunk=4,
        batch_size=8,
    )


#: The OCL tests' extraction: 56 px gives a 4 x 4 patch grid.
OCL_EXTRACT = ExtractConfig(vfm="dino2-s14", weights="random", resolution=56, image_size=32, mask_size=32, samples_per_chunk=4, batch_size=8)


@pytest.fixture()
def ocl_extract_config() -> ExtractConfig:
    return OCL_EXTRACT


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread: more only adds synchronisation (and oversubscribes shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


#: Processes the tests start (the CLI in a subprocess) read these at start-up; dask workers get them from distributed.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")


@pytest.fixture(scope="session", autouse=True)
def _one_thread_for_the_session() -> Iterator[None]:
    """Every test runs torch and the BLAS/OpenMP pools (numpy's OpenBLAS, faiss) on one thread: the suite's arrays are
    tiny, and on a 2-core machine shared with anything else (another test process, CI neighbours) two threads made a
    20-step OCL run ~20x slower (9.5 s vs 0.45 s) and numpy's eigh of a 384 x 384 covariance 6x slower (measured).
    Tests that need more threads set them themselves."""
    from threadpoolctl import threadpool_limits

    with single_torch_thread(), threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For modules of tiny training runs: ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    with single_torch_thread():
        yield


@pytest.fixture(scope="session")
def ocl_store(tmp_path_factory: pytest.TempPathFactory, shapes_dir: Path) -> Path:
    """A 4x4-grid store with two token sets named as the shipped OCL configs expect (vvo-c256, vvo-c4).

    Session-scoped and read-only: the OCL stage, sweep and report tests share it.
    """
    from featcache.quantize import QuantizerConfig, VQDecoderConfig
    from featcache.training.config import TrainSettings, VQTrainConfig
    from featcache.training.tokenize import tokenize_store
    from featcache.training.vq import train_vq

    root = tmp_path_factory.mktemp("ocl")
    out = root / "store.zarr"
    with single_torch_thread():
        extract(open_dataset(str(shapes_dir)), out, OCL_EXTRACT, device="cpu", show_progress=False)
        for name, code_dim in (("vvo-c256", 8), ("vvo-c4", 4)):
            vq = VQTrainConfig(
                quantizer=QuantizerConfig(codebook_size=16, code_dim=code_dim, template_dim=8, encoder_layers=1, encoder_channels=16),
                decoder=VQDecoderConfig(target="pixels", channels=8, image_size=32),
                train=TrainSettings(steps=10, batch_size=8, learning_rate=2e-3, log_every=5, checkpoint_every=10, loader="memory"),
            )
            train_vq(out, vq, root / f"vq-{name}", device="cpu", show_progress=False)
            tokenize_store(out, root / f"vq-{name}", name, device="cpu", show_progress=False)
    return out


# ----------------------------------------------------------------------------- dask
#: What every ``workers=2`` call in featcache asks of LocalCluster (extraction and sweeps alike).
DASK_WORKERS = 2


@pytest.fixture(scope="session")
def _session_dask_cluster() -> Iterator[object]:
    """One real LocalCluster of 2 single-threaded worker processes for the whole session.

    Starting one costs ~10-20 s on 2 cores (each spawned worker imports torch, timm and featcache) plus ~3 s to close;
    the dask tests share this one instead of each paying that."""
    from dask.distributed import LocalCluster

    cluster = LocalCluster(n_workers=DASK_WORKERS, threads_per_worker=1, processes=True, dashboard_address=":0")
    try:
        yield cluster
    finally:
        cluster.close()


class _BorrowedCluster:
    """The session's cluster as featcache's own ``LocalCluster(...)`` call returns it: ``close()`` is the session's."""

    def __init__(self, cluster: object) -> None:
        self._cluster = cluster

    def __getattr__(self, name: str) -> object:
        return getattr(self._cluster, name)

    def close(self, *args: object, **kwargs: object) -> None:
        pass


@pytest.fixture(params=["shared", pytest.param("own", marks=pytest.mark.slow)])
def dask_local_cluster(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """For tests of featcache's ``workers=N`` path (it starts ``dask.distributed.LocalCluster(...)`` itself).

    "shared" (default suite): that call is answered with the session's real 2-worker cluster (real processes, real
    scheduling; only the start and close are shared). "own" (``-m slow``): featcache starts and closes its own cluster,
    unchanged. Returns the keyword arguments of every LocalCluster call, for the test to check."""
    import dask.distributed
    import distributed

    calls: list[dict[str, object]] = []
    real = distributed.LocalCluster
    if request.param == "own":

        def recording(*args: object, **kwargs: object) -> object:
            calls.append(kwargs)
            return real(*args, **kwargs)

        factory = recording
    else:
        shared = request.getfixturevalue("_session_dask_cluster")

        def borrowed(*args: object, **kwargs: object) -> object:
            calls.append(kwargs)
            assert not args and kwargs.get("n_workers") == DASK_WORKERS, f"the shared cluster has {DASK_WORKERS} workers: {kwargs}"
            return _BorrowedCluster(shared)

        factory = borrowed
    monkeypatch.setattr(distributed, "LocalCluster", factory)
    monkeypatch.setattr(dask.distributed, "LocalCluster", factory)
    return calls
