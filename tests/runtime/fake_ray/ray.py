"""A stand-in for Ray with the calls Tidal's benchmarks make, over threads: tests only.

tests/runtime/test_bench.py's `fake_ray` fixture puts it in `sys.modules` and this folder
first on `sys.path`, so a process the benchmark spawns (the batch driver) imports it too.

Like Ray, where the benchmarks' code could go wrong: `init` once, and before any remote
call (real Ray would quietly start a cluster of every CPU instead); only plain functions
can be made remote; a call's function and arguments are pickled on the way, so whatever
Ray could not ship fails here too; references among a call's top-level arguments reach it
as their values; `get` takes one reference or a list, with a timeout; `shutdown` ends it.
Unlike Ray: tasks run on threads of the calling process, each driver has its own, an
`address` is only remembered, and nothing is started or left behind.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import itertools
import pickle
from typing import Any

__version__ = "0.0+fake"

HEAD_OPTIONS = {"include_dashboard", "_temp_dir"}  # what only a head's `init` may be given
DRIVER_OPTIONS = {"log_to_driver", "logging_level"}

# Every init and shutdown in this process, in order, for the tests to read.
history: list[tuple[str, dict[str, Any]]] = []
_driver: dict[str, Any] = {}  # the running driver: "pool", "objects", "address"
_ids = itertools.count()


class ObjectRef:
    """A task's result or a `put` value. Pickles as its id, as Ray's references do."""

    def __init__(self, object_id: int) -> None:
        self.object_id = object_id

    def future(self) -> concurrent.futures.Future:
        return _objects()[self.object_id]


class RemoteFunction:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> ObjectRef:
        shipped = pickle.dumps((self._fn, args, kwargs))
        ref = ObjectRef(next(_ids))
        _objects()[ref.object_id] = _running()["pool"].submit(_call, shipped)
        return ref


def _call(shipped: bytes) -> Any:
    fn, args, kwargs = pickle.loads(shipped)
    args = [_value(arg) for arg in args]
    kwargs = {name: _value(arg) for name, arg in kwargs.items()}
    return fn(*args, **kwargs)


def _value(arg: Any) -> Any:
    return arg.future().result() if isinstance(arg, ObjectRef) else arg


def _running() -> dict[str, Any]:
    if not _driver:
        raise RuntimeError(
            "a remote call before ray.init(): real Ray would start a cluster of every CPU"
        )
    return _driver


def _objects() -> dict[int, concurrent.futures.Future]:
    return _running()["objects"]


class Context:
    def __init__(self, address: str) -> None:
        self.address_info = {"gcs_address": address}


def init(address: str | None = None, *, num_cpus: int | None = None, **options: Any) -> Context:
    if _driver:
        raise RuntimeError("Maybe you called ray.init twice by accident?")
    allowed = DRIVER_OPTIONS | (HEAD_OPTIONS if address is None else set())
    if address is not None and num_cpus is not None:
        raise ValueError("When connecting to an existing cluster, num_cpus must not be provided.")
    if unknown := set(options) - allowed:
        raise TypeError(f"the fake ray.init takes no {sorted(unknown)} here")
    history.append(("init", {"address": address, "num_cpus": num_cpus, **options}))
    _driver.update(
        pool=concurrent.futures.ThreadPoolExecutor(num_cpus or 2, thread_name_prefix="fake-ray"),
        objects={},
        address=address or "127.0.0.1:6379",
    )
    return Context(_driver["address"])


def is_initialized() -> bool:
    return bool(_driver)


def remote(fn: Any) -> RemoteFunction:
    if not inspect.isfunction(fn):
        raise TypeError("The @ray.remote decorator must be applied to a function or a class.")
    return RemoteFunction(fn)


def put(value: Any) -> ObjectRef:
    ref = ObjectRef(next(_ids))
    stored: concurrent.futures.Future = concurrent.futures.Future()
    stored.set_result(pickle.loads(pickle.dumps(value)))
    _objects()[ref.object_id] = stored
    return ref


def get(refs: ObjectRef | list[ObjectRef], *, timeout: float | None = None) -> Any:
    if isinstance(refs, ObjectRef):
        return get([refs], timeout=timeout)[0]
    futures = [ref.future() for ref in refs]
    _done, pending = concurrent.futures.wait(futures, timeout=timeout)
    if pending:
        raise TimeoutError(f"{len(pending)} of {len(futures)} objects not ready in {timeout} s")
    return [future.result() for future in futures]


def shutdown() -> None:
    if _driver:
        _driver["pool"].shutdown(wait=True)
        _driver.clear()
    history.append(("shutdown", {}))
