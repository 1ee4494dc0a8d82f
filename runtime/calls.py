"""A job's calls packed for `submit.tasks`: futures among the arguments become inputs,
kwargs a map's calls share are packed (and spooled) once, big payloads are spooled.

Client.submit and Client.map (runtime/client.py) pack through `pack_tasks`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tidal.runtime import kept, payloads
from tidal.runtime.datastore import DATA_THRESHOLD
from tidal.runtime.futures import TaskFuture
from tidal.runtime.jobs import task_entry
from tidal.runtime.kept_futures import KeptFuture
from tidal.runtime.results import Traffic

__all__ = ["pack_tasks"]


def pack_tasks(
    job_id: str,
    calls: list[tuple[list[Any], dict[str, Any]]],
    preferred: list[Any],
    client_id: str,
    spool: Callable[[bytes], bytes],
    traffic: Traffic,
    scan: bool = True,
) -> list[list[Any]]:
    """`submit.tasks` for these calls. Calls that share one kwargs dict (`map`) share its
    packed bytes too; a payload of DATA_THRESHOLD bytes or more is handed to `spool`,
    which returns the reference to send instead. A future among a call's arguments
    becomes one of the task's `inputs` (runtime/kept.py): TypeError if it cannot be.

    Discussion: `scan` False skips the walk through the arguments (a map of partitions of
    records costs ~1-2 ms a call for it) when the client holds no kept future, the only
    kind an argument may be: then only a future at the top is looked for, to say why it
    cannot be one; one deeper fails to encode, naming its place."""
    tasks = []
    packed_kwargs: dict[int, bytes] = {}  # id(kwargs) -> its packed bytes
    for i, ((args, kwargs), prefs) in enumerate(zip(calls, preferred, strict=True)):
        shared = id(kwargs)  # a map's calls share theirs (futures in it too)
        if scan:
            args, kwargs, found = kept.find_inputs(args, kwargs, _is_future)
        else:  # no kept future exists: only one at the top is worth a clear word
            found = [[[i], a] for i, a in enumerate(args) if isinstance(a, TaskFuture)]
            found += [[[k], v] for k, v in kwargs.items() if isinstance(v, TaskFuture)]
        inputs = [[path, _input_id(client_id, future, path)] for path, future in found]
        if shared not in packed_kwargs:
            packed = payloads.pack_payload(kwargs, "kwargs")
            if len(packed) >= DATA_THRESHOLD and len(calls) > 1:
                traffic.sent(len(packed))  # once: the calls hold its reference
                # Shared by the map's calls: spooled once, not once per call.
                packed = payloads.pack_payload(spool(packed))
            packed_kwargs[shared] = packed
        payload = payloads.pack_call(args, kwargs, packed_kwargs=packed_kwargs[shared])
        traffic.sent(len(payload))
        if len(payload) >= DATA_THRESHOLD:
            payload = spool(payload)
        tasks.append(task_entry(f"{job_id}/{i}", payload, prefs, inputs))
    return tasks


def _is_future(value: Any) -> bool:
    return isinstance(value, TaskFuture)


def _input_id(client_id: str, future: TaskFuture, path: list[Any]) -> str:
    """The task id of a future passed as an argument; TypeError if it cannot be one."""
    where = "argument" if type(path[0]) is int else "keyword argument"
    if not isinstance(future, KeptFuture):
        raise TypeError(
            f"the {where} at {path} is the future of task {future.task_id}, which was not "
            "submitted with keep=True: submit it with keep=True to pass it to another "
            "task, or pass future.result()"
        )
    if future.job_id.rpartition("-")[0] != client_id:
        raise TypeError(f"the {where} at {path} is another client's future")
    return future.task_id
