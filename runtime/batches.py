"""What a batch of results holds, and what a submit that did not decode names.

A span chunk's batch (`chunk_batch`, then `batch_results`) carries its `values` as a list of
payloads or, since protocol 12, as one bytes: the payloads behind one msgpack array header
(runtime/payloads.py `pack_batch`). `values_count` and `batch_payloads` read either form,
`batch_items` turns a batch into result items. `submit_ids` reads the ids of the submits in
a frame that did not decode, so that the scheduler can fail their tasks at the client.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack

from tidal.runtime import protocol as p

__all__ = ["batch_items", "batch_payloads", "submit_ids", "values_count"]


def batch_items(
    job_id: str, start: int, values: list[Any] | bytes, errors: list[Any], stats: dict[str, Any]
) -> list[list[Any]]:
    """A batch's results (chunk_batch, batch_results: tasks start, start + 1, ... of a bulk
    job) as result items, one per task, as `results` carries them: [task_id, outcome,
    value, error, stats]. Raises ProtocolError for a packed array that does not split."""
    failed = dict(errors)
    return [
        [f"{job_id}/{i}", "failed", None, failed[i], stats]
        if i in failed
        else [f"{job_id}/{i}", "finished", value, None, stats]
        for i, value in enumerate(batch_payloads(values), start)
    ]


def values_count(values: list[Any] | bytes) -> int:
    """How many results a batch's `values` hold: a list's length, or a packed array's
    (read from its header). Raises ProtocolError for bytes that are not one."""
    if type(values) is not bytes:
        return len(values)
    unpacker = msgpack.Unpacker()
    unpacker.feed(values)
    try:
        count = unpacker.read_array_header()
    except Exception as exc:  # msgpack raises several types for bytes that are not one
        raise p.ProtocolError(
            f"a batch's packed values do not start with an array: {exc}"
        ) from None
    if count > len(values) - unpacker.tell():  # a value is one byte at least
        raise p.ProtocolError(f"a batch's packed values claim {count} in {len(values)} bytes")
    return count


def batch_payloads(values: list[Any] | bytes) -> list[Any]:
    """A batch's `values` as a list, one payload per task: a packed array split (by walking
    its values, ~0.3 us each: for the rare paths only), a list as it is. Raises
    ProtocolError for bytes that do not split into exactly the array's values."""
    if type(values) is not bytes:
        return values
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(values), 1))
    unpacker.feed(values)
    try:
        count = unpacker.read_array_header()
        bounds = [unpacker.tell()]
        for _ in range(count):
            unpacker.skip()
            bounds.append(unpacker.tell())
    except Exception as exc:  # msgpack raises several types for malformed bytes
        raise p.ProtocolError(f"a batch's packed values do not split: {exc}") from None
    if bounds[-1] != len(values):
        raise p.ProtocolError(f"a batch's packed values end at {bounds[-1]} of {len(values)} bytes")
    return [values[a:b] for a, b in itertools.pairwise(bounds)]


def submit_ids(
    frame: bytes, *, most_ids: int = 10_000, most_submits: int = 64
) -> list[tuple[str, list[str] | None]]:
    """The job and task ids of the submits in a frame that did not decode, as far as they
    can be read: one if it is a submit, one per submit item if it is a batch (a batch within
    a batch, one level down, too); [] for anything else. A bulk job's ids are None: its
    tasks are the whole job (one `job_refused` answers them all). For the scheduler to fail
    those tasks at their client rather than leave their futures waiting. Bounded:
    `most_submits` submits and `most_ids` ids in all (a bigger classic job's other tasks are
    not named; a bulk job counts as one); ids over p.MAX_ID_CHARS are not read. The caller
    bounds the frame's size."""
    found: list[tuple[str, list[str] | None]] = []
    room = [most_ids]
    frames = [(frame, 2)]  # (frame, batch levels it may still hold)
    while frames and room[0] > 0 and len(found) < most_submits:
        item, levels = frames.pop(0)
        try:
            value = p.unpack_value(item)
        except Exception:  # not msgpack, or too deep: nothing to read
            continue
        if type(value) is not list or len(value) < 2:
            continue
        if value[0] == p.Batch.op and type(value[1]) is list and levels > 1:
            inner = value[1][: p.MAX_BATCH_ITEMS]
            frames[:0] = [(f, levels - 1) for f in inner if type(f) is bytes]
            continue
        ids = _ids_of_submit(value, room[0])
        if ids is not None:
            room[0] -= 1 if ids[1] is None else len(ids[1])
            found.append(ids)
    return found


def _ids_of_submit(value: list[Any], most: int) -> tuple[str, list[str] | None] | None:
    job_id = value[1]
    if value[0] != p.Submit.op or type(job_id) is not str or not 0 < len(job_id) <= p.MAX_ID_CHARS:
        return None
    fields = dict(zip((name for name, _, _ in p.Submit._checks), value[1:], strict=False))
    tasks, bulk = fields.get("tasks"), fields.get("bulk")
    if type(bulk) in (list, bytes) and bulk:  # a bulk job (columns too): the whole job
        return job_id, None
    ids = [
        t[0]
        for t in (tasks if type(tasks) is list else ())[:most]
        if type(t) is list and t and type(t[0]) is str and len(t[0]) <= p.MAX_ID_CHARS
    ]
    return (job_id, ids) if ids else None
