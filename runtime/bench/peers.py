"""The peers the benchmarks compare against, when installed: Dask distributed.

`pip install "tidal[bench]"` installs `dask[distributed]`. Without it, a benchmark with a
peer reports why it skipped the peer (`dask_missing()`), and still runs Tidal's side.

The peer is set up as its documentation recommends and as close to Tidal's set-up as it
allows: a `distributed.LocalCluster` of single-thread worker processes (one per Tidal
executor), its HTTP server on a free port, its logs kept to errors, and the workers'
statistical profiler off (it samples every running task's stack every 10 ms; with it, the
unified benchmark's CPU-bound Python tasks ran up to ~1.5x slower on Dask's workers than
alone). Priorities are Dask's own: an integer per submission, higher first
(`STREAM_PRIORITY` for stream work, `BATCH_PRIORITY` for batch). Everything else is Dask's default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "BATCH_PRIORITY",
    "STREAM_PRIORITY",
    "DaskStreamClient",
    "dask_cluster",
    "dask_missing",
    "dask_versions",
]

STREAM_PRIORITY = 10
BATCH_PRIORITY = 0
INSTALL_HINT = 'pip install "tidal[bench]"'


def dask_missing() -> str | None:
    """Why the Dask peer cannot run here, or None if it can."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        return f"dask[distributed] is not installed ({exc}); {INSTALL_HINT} to compare"
    return None


def dask_versions() -> dict[str, str]:
    import dask
    import distributed

    return {"dask": dask.__version__, "distributed": distributed.__version__}


@contextmanager
def dask_cluster(workers: int) -> Iterator[Any]:
    """A Dask client on a fresh LocalCluster of `workers` single-thread processes."""
    import dask
    import distributed

    with (
        dask.config.set({"distributed.worker.profile.enabled": False}),
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # its HTTP server on a free port: runs never collide
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


class DaskStreamClient:
    """The calls the stream driver makes (`submit`, `gather`), on a Dask client, every
    submission at the stream priority, so that Tidal's driver code runs unchanged."""

    def __init__(self, client: Any, priority: int = STREAM_PRIORITY) -> None:
        self.client = client
        self.priority = priority

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.client.submit(fn, *args, priority=self.priority, pure=False, **kwargs)

    def gather(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]:
        import distributed

        distributed.wait(list(futures), timeout=timeout)
        return self.client.gather(list(futures))
