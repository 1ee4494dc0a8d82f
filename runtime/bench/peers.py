"""The peers the benchmarks compare against, when installed: Dask distributed and Ray.

`pip install "tidal[bench]"` installs `dask[distributed]` and `ray`. Without one, a
benchmark with peers reports why it skipped that peer (`dask_missing()`, `ray_missing()`),
and still runs Tidal's side and the other peer's.

Each peer is set up as its documentation recommends and as close to Tidal's set-up as it
allows: two single-CPU task slots (one per Tidal executor) on this host, the same task
code, the peer's own way to put stream work first where it has one.

Dask: a `distributed.LocalCluster` of single-thread worker processes, its HTTP server on a
free port, its logs kept to errors, and the workers' statistical profiler off (it samples
every running task's stack every 10 ms; with it, the unified benchmark's CPU-bound Python
tasks ran up to ~1.5x slower on Dask's workers than alone). Priorities are Dask's own: an
integer per submission, higher first (`STREAM_PRIORITY` for stream work, `BATCH_PRIORITY`
for batch). Everything else is Dask's default.

Ray: `ray.init(num_cpus=2)` starts a head node on this host whose tasks take one CPU each
(Ray's default), so two run at once, each in a worker process of Ray's. Ray has no task
priorities: stream and batch tasks are submitted alike. The settings beyond the defaults,
each with its reason where it is set: single-host mode (`RAY_SINGLE_HOST`: loopback only),
no dashboard process, worker output not streamed to the driver, logs kept to errors, and a
temporary directory of the run's own for Ray's session files. The object store keeps its
default size (30% of memory, ~7 GiB here, reserved lazily; the benchmarks put tens of MB in
it). The benchmark starts Ray, and `ray.shutdown()` stops it with every process it started.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = [
    "BATCH_PRIORITY",
    "STREAM_PRIORITY",
    "DaskStreamClient",
    "RayClient",
    "dask_cluster",
    "dask_missing",
    "dask_versions",
    "ray_cluster",
    "ray_connect",
    "ray_missing",
    "ray_versions",
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


# ---- Dask ----------------------------------------------------------------------------------


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


# ---- Ray -----------------------------------------------------------------------------------

# Ray's switch for a cluster on one host only, its default on macOS and Windows: every Ray
# process listens and connects on loopback, as Tidal's and Dask's local clusters do. On
# Linux Ray otherwise advertises the host's network address and listens on all interfaces.
# Read when Ray is imported, in each process (its own start-up reads it from the environment).
RAY_SINGLE_HOST = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# Every driver's options, the head's and those that connect to it.
RAY_DRIVER_OPTIONS: dict[str, Any] = {
    # The tasks print nothing; streaming worker logs to the driver adds a subscriber
    # thread to the process that times stream results.
    "log_to_driver": False,
    # Ray's INFO lines on stderr, kept to errors as Dask's are (`silence_logs`).
    "logging_level": logging.ERROR,
}
# The head's alone (a driver that connects may not give them).
RAY_HEAD_OPTIONS: dict[str, Any] = {
    # The dashboard is a process of its own that polls the cluster; nothing reads it here,
    # and on two cores it would take CPU from the two workers. (Tidal's and Dask's
    # dashboards run on a thread of their scheduler and are idle without a browser.)
    "include_dashboard": False,
}


def ray_missing() -> str | None:
    """Why the Ray peer cannot run here, or None if it can."""
    # Looked up, not imported: Ray must be imported after `RAY_SINGLE_HOST` is set.
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError) as exc:  # a finder that refuses it; a broken entry
        return f"ray cannot be imported ({exc}); {INSTALL_HINT} to compare"
    return None if found else f"ray is not installed; {INSTALL_HINT} to compare"


def ray_versions() -> dict[str, str]:
    return {"ray": _import_ray().__version__}


def _import_ray() -> Any:
    """The `ray` module, imported in single-host mode unless this process imported it
    before (then Ray keeps the mode it was imported with: one mode for all its processes)."""
    if "ray" not in sys.modules:
        os.environ.update(RAY_SINGLE_HOST)
    import ray

    return ray


def run_task(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call `fn` in a Ray worker. Ray makes remote functions only of plain functions, and
    Tidal's tasks are `TaskFunction` objects (pickled by reference, as for Dask): each is
    called through this one, so the task code is the same on every backend."""
    return fn(*args, **kwargs)


class RayClient:
    """The calls the benchmarks make on a Ray driver: `submit` and `gather` for the stream
    driver (Tidal's code runs unchanged on them), `map` and `put` for batch jobs."""

    def __init__(self, ray: Any, address: str) -> None:
        self.ray = ray
        self.address = address  # the head's, for another driver to connect to
        self._run_task = ray.remote(run_task)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One task; a `concurrent.futures.Future` of its result."""
        return self._run_task.remote(fn, *args, **kwargs).future()

    def gather(self, futures: Sequence[Any], timeout: float | None = None) -> list[Any]:
        _done, pending = concurrent.futures.wait(futures, timeout=timeout)
        if pending:
            raise TimeoutError(f"{len(pending)} Ray tasks had no result after {timeout} s")
        return [future.result() for future in futures]

    def map(
        self, fn: Callable[..., Any], items: Iterable[Any], timeout: float = 600, **kwargs: Any
    ) -> list[Any]:
        """`fn(item, **kwargs)` for each item, one task each, submitted at once; the results.
        A keyword's `put` reference reaches the task as its value."""
        refs = [self._run_task.remote(fn, item, **kwargs) for item in items]
        return self.ray.get(refs, timeout=timeout)

    def map_refs(self, fn: Callable[..., Any], items: Iterable[Any], **kwargs: Any) -> list[Any]:
        """`map`, but the results stay in Ray's object store: their references (a reference
        among a later call's top-level arguments reaches it as its value)."""
        return [self._run_task.remote(fn, item, **kwargs) for item in items]

    def put(self, value: Any) -> Any:
        """`value` in Ray's object store, once, for many tasks (Ray's advice for a large
        argument that many tasks share)."""
        return self.ray.put(value)


@contextmanager
def ray_cluster(workers: int) -> Iterator[RayClient]:
    """A Ray head on this host with `workers` single-CPU task slots, this process its first
    driver; on exit `ray.shutdown()` stops it with every process it started."""
    ray = _import_ray()

    # Ray keeps its sockets, logs and session files under a temporary directory
    # (/tmp/ray by default, left there after shutdown): this one goes with the run.
    with tempfile.TemporaryDirectory(prefix="tidal-ray-", ignore_cleanup_errors=True) as temp:
        context = ray.init(
            num_cpus=workers, _temp_dir=temp, **RAY_HEAD_OPTIONS, **RAY_DRIVER_OPTIONS
        )
        try:
            yield RayClient(ray, context.address_info["gcs_address"])
        finally:
            ray.shutdown()


@contextmanager
def ray_connect(address: str) -> Iterator[RayClient]:
    """Another driver (a process of its own) on the Ray head at `address`."""
    ray = _import_ray()
    ray.init(address=address, **RAY_DRIVER_OPTIONS)
    try:
        yield RayClient(ray, address)
    finally:
        ray.shutdown()
