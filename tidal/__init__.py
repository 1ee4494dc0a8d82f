"""Tidal: suspendable tasks for unified stream/batch applications, in one import.

Everything a program needs is here: `from tidal import Client, LocalCluster, task`. The code
lives in three subpackages (the repository's `runtime/`, `scheduler/` and `workloads/`):
`tidal.runtime` (tasks, the record gate, the executor's kernel, the wire protocol, the
client and the CLI), `tidal.scheduler` (the scheduler core, its policies and its server) and
`tidal.workloads` (the demo's stream and batch jobs). tests/test_layers.py holds which of them
may import which.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

# Discussion: the public names load when first used (PEP 562), not on `import tidal`: every
# `tidal` command and every executor process imports this package first, and the client
# and cluster alone cost ~0.1-0.2 s to import, which `tidal status` or an executor's start
# should not pay. `from tidal import Client` works the same either way.
_HOMES = {
    "AuthenticationFailed": "tidal.runtime.auth",
    "Client": "tidal.runtime.client",
    "LocalCluster": "tidal.runtime.cluster",
    "DataUnavailable": "tidal.runtime.datastore",
    "FunctionNotFound": "tidal.runtime.functions",
    "MemoryLimitExceeded": "tidal.runtime.futures",
    "TaskError": "tidal.runtime.futures",
    "TaskFuture": "tidal.runtime.futures",
    "as_completed": "tidal.runtime.futures",
    "gather": "tidal.runtime.futures",
    "Kernel": "tidal.runtime.kernel",
    "KeptFuture": "tidal.runtime.kept_futures",
    "TaskKilled": "tidal.runtime.kernel",
    "progress": "tidal.runtime.progress",
    "PROTOCOL_VERSION": "tidal.runtime.protocol",
    "ProtocolError": "tidal.runtime.protocol",
    "Partition": "tidal.runtime.task",
    "TaskContext": "tidal.runtime.task",
    "current_context": "tidal.runtime.task",
    "task": "tidal.runtime.task",
    "RedisCountSink": "tidal.runtime.redis_streams",
    "RedisSource": "tidal.runtime.redis_streams",
    "Sink": "tidal.runtime.streams",
    "Source": "tidal.runtime.streams",
    "StreamDriver": "tidal.runtime.streams",
    "Kill": "tidal.scheduler.decisions",
    "Launch": "tidal.scheduler.decisions",
    "Resume": "tidal.scheduler.decisions",
    "Suspend": "tidal.scheduler.decisions",
    "AssignOnChange": "tidal.scheduler.policies.base",
    "Policy": "tidal.scheduler.policies.base",
}

if TYPE_CHECKING:
    from tidal.runtime.auth import AuthenticationFailed
    from tidal.runtime.client import Client
    from tidal.runtime.cluster import LocalCluster
    from tidal.runtime.datastore import DataUnavailable
    from tidal.runtime.functions import FunctionNotFound
    from tidal.runtime.futures import (
        MemoryLimitExceeded,
        TaskError,
        TaskFuture,
        as_completed,
        gather,
    )
    from tidal.runtime.kept_futures import KeptFuture
    from tidal.runtime.kernel import Kernel, TaskKilled
    from tidal.runtime.progress import progress
    from tidal.runtime.protocol import PROTOCOL_VERSION, ProtocolError
    from tidal.runtime.redis_streams import RedisCountSink, RedisSource
    from tidal.runtime.streams import Sink, Source, StreamDriver
    from tidal.runtime.task import Partition, TaskContext, current_context, task
    from tidal.scheduler.decisions import Kill, Launch, Resume, Suspend
    from tidal.scheduler.policies.base import AssignOnChange, Policy


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tidal' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once loaded, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])


__all__ = [
    "PROTOCOL_VERSION",
    "AssignOnChange",
    "AuthenticationFailed",
    "Client",
    "DataUnavailable",
    "FunctionNotFound",
    "KeptFuture",
    "Kernel",
    "Kill",
    "Launch",
    "LocalCluster",
    "MemoryLimitExceeded",
    "Partition",
    "Policy",
    "ProtocolError",
    "RedisCountSink",
    "RedisSource",
    "Resume",
    "Sink",
    "Source",
    "StreamDriver",
    "Suspend",
    "TaskContext",
    "TaskError",
    "TaskFuture",
    "TaskKilled",
    "__version__",
    "as_completed",
    "current_context",
    "gather",
    "progress",
    "task",
]
