"""What a client's job is on the wire: the checks of a submission and of a result.

Pure functions for runtime/client.py and runtime/bulk.py: a submission's options with its
`@task` defaults applied and checked, each task's entry in `submit.tasks`, the TypeError that
names the argument msgpack cannot carry, the frame's size limit; and the check of each
`results` item from the scheduler (ProtocolError naming what is wrong).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tidal.runtime import protocol as p
from tidal.runtime.task import TaskFunction

__all__ = [
    "OUTCOMES",
    "check_frame_size",
    "is_error",
    "job_options",
    "map_parts",
    "parse_result",
    "task_entry",
    "unencodable",
]

OUTCOMES = ("finished", "failed", "cancelled")


# ---- submitting ------------------------------------------------------------------------------


def job_options(
    fn: Callable[..., Any], priority: str | None, order: int, max_suspensions: int | None
) -> tuple[str, int, int | None]:
    """Apply `@task` defaults to a submission's options and check them."""
    if isinstance(fn, TaskFunction):
        priority = fn.priority if priority is None else priority
        max_suspensions = fn.max_suspensions if max_suspensions is None else max_suspensions
    priority = "batch" if priority is None else priority
    if not isinstance(priority, str) or priority not in p.PRIORITY_CLASSES:
        raise ValueError(
            f"unknown priority {priority!r}: use one of "
            + ", ".join(repr(name) for name in p.PRIORITY_CLASSES)
        )
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an int (lower runs first), not {type(order).__name__}")
    if max_suspensions is not None and (
        type(max_suspensions) is bool or not isinstance(max_suspensions, int) or max_suspensions < 0
    ):
        raise ValueError(
            f"max_suspensions must be None (the cluster's cap) or an int >= 0, "
            f"not {max_suspensions!r}"
        )
    return priority, int(order), None if max_suspensions is None else int(max_suspensions)


def task_entry(
    task_id: str, payload: bytes, preferred: Any, inputs: list[list[Any]] | None = None
) -> list[Any]:
    """One item of `submit.tasks`: [task_id, payload], with its options if it has any
    (`inputs`: [[path, task_id], ...], other tasks' kept results, runtime/kept.py)."""
    options: dict[str, Any] = {}
    if preferred:
        if isinstance(preferred, str) or not all(isinstance(x, str) for x in preferred):
            raise TypeError(
                f"preferred must be a list of node labels or executor ids, not {preferred!r}"
            )
        options["preferred"] = list(preferred)
    if inputs:
        options["inputs"] = inputs
    return [task_id, payload, options] if options else [task_id, payload]


def map_parts(partitions: list[Any], kwargs: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """A map's arguments by name, for naming one msgpack cannot carry."""
    yield from ((f"partition {i}", partition) for i, partition in enumerate(partitions))
    yield from ((f"keyword argument {name!r}", value) for name, value in kwargs.items())


def unencodable(fn: str, parts: Iterable[tuple[str, Any]], exc: Exception) -> TypeError:
    """The TypeError for a submission of `fn` msgpack could not carry, naming the first of
    `parts` (`(name, value)`: "partition 3", "keyword argument 'x'", ...) at fault."""
    # Only now walk the arguments (they may be large) to name the one at fault.
    for path, value in parts:
        where = p.find_unencodable(value, path)
        if where:
            return TypeError(f"cannot submit {fn}: {where}")
    return TypeError(f"cannot submit {fn}: {exc}")


def check_frame_size(fn: str, frame: bytes) -> None:
    """ValueError if a job's submit frame is over the frame limit."""
    if len(frame) > p.MAX_FRAME_BYTES:
        raise ValueError(
            f"cannot submit {fn}: its job is {len(frame):,} bytes packed, over the "
            f"{p.MAX_FRAME_BYTES:,}-byte limit of a frame (submit fewer tasks at a time)"
        )


# ---- results ---------------------------------------------------------------------------------


def parse_result(item: Any) -> tuple[str, str, Any, list[str] | None, dict[str, Any]]:
    """Check one `results` item; raise ProtocolError naming what is wrong."""
    if type(item) is not list or len(item) != 5:
        raise p.ProtocolError("a result must be [task_id, outcome, value, error, stats]")
    task_id, outcome, value, error, stats = item
    if type(task_id) is not str:
        raise p.ProtocolError(f"a result's task_id must be str, got {type(task_id).__name__}")
    if outcome not in OUTCOMES:
        raise p.ProtocolError(f"result for {task_id} has unknown outcome {str(outcome)[:40]!r}")
    if error is not None and not is_error(error):
        raise p.ProtocolError(f"result for {task_id}: error must be [type, message, traceback]")
    if outcome == "failed" and error is None:
        raise p.ProtocolError(f"result for {task_id} failed without an error")
    if outcome == "finished" and type(value) is not bytes:
        raise p.ProtocolError(
            f"result for {task_id}: a finished value must be a payload (bytes), "
            f"got {type(value).__name__}"
        )
    if stats is None:
        stats = {}
    if type(stats) is not dict:
        raise p.ProtocolError(f"result for {task_id}: stats must be a map")
    return task_id, outcome, value, error, stats


def is_error(error: Any) -> bool:
    """A task's error as the scheduler reports it: [error_type, message, traceback]."""
    return type(error) is list and len(error) == 3 and all(type(e) is str for e in error)
