"""How the kernel runs chunks (runtime/kernel.py): a plain chunk's subtasks one after the
other, their results reported in batches (`chunk_results`), and span chunks.

A span chunk is a range of a bulk job's tasks. Its subtasks are bare payloads
(`launch_chunk.span`); their results go out in batches (`chunk_batch`: one list of
values, the failures apart), the batch being filled kept on the span (`Span.values`) so
that the hub can report it when it suspends the chunk.
A run of a map's calls, `[[x], kwargs]` of one scalar and the same kwargs
(`QuickCalls.take_run`), goes through `map(fn, GatedIterator(xs))`: the calls in C, each a
record boundary of the gate. Any other subtask runs alone, as a task would.

`SpanRunner` is a part of `Kernel`, which has the gate, the checkpoint, the emit and the
general ways to unpack and call a task that these use.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import types
from collections import deque
from collections.abc import Callable
from typing import Any

import greenlet
import msgpack

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.columns import LaunchColumns
from tidal.runtime.runstate import Span, TaskKilled, TaskRecord
from tidal.runtime.task import TaskFunction
from tidal.runtime.tracebacks import describe_failure

__all__ = [
    "CHUNK_REPORT_EVERY",
    "CHUNK_REPORT_NS",
    "NOT_A_RESULT",
    "SPAN_REPORT_EVERY",
    "SPAN_RUN_NS",
    "QuickCalls",
    "SpanRunner",
    "give_up_tail",
]

# A chunk reports its subtasks' results every this many subtasks or this often, whichever
# comes first: few messages for tiny subtasks, prompt results for slow ones.
CHUNK_REPORT_EVERY = 512
CHUNK_REPORT_NS = 20_000_000
# A span chunk's batch (chunk_batch) of small successes goes out at this many results
# (others at CHUNK_REPORT_EVERY: `_batch_full`), or CHUNK_REPORT_NS. Discussion: a batch of
# tiny results travels packed as one array (payloads.pack_batch), which the scheduler never
# opens, so its cost there is per batch, not per result: at 512 a map of 200,000 no-ops
# cost the scheduler ~1.4 us a task, at 4,096 ~0.7, and ran ~30% faster (`bench chunking`).
# A chunk_results (plain chunks) is opened item by item, and keeps CHUNK_REPORT_EVERY.
SPAN_REPORT_EVERY = 4096
# A span chunk runs a map's calls in runs of about this much work (at most
# SPAN_REPORT_EVERY): a run's results join the batch at its end, so this bounds what a
# suspension holds back and how long a stolen-from chunk keeps what it took.
SPAN_RUN_NS = 1_000_000
# The kernel's files: a subtask's traceback starts below their frames (`describe_failure`).
KERNEL_FILES = (__file__, os.path.join(os.path.dirname(__file__), "kernel.py"))
# What a task function's call may return that is not its result as it is (`_call_result`).
NOT_A_RESULT = (types.GeneratorType, types.CoroutineType)


def _batch_full(span: Span) -> bool:
    """Whether a span's batch must go out now: at SPAN_REPORT_EVERY results, or at
    CHUNK_REPORT_EVERY unless every one is a success under DATA_MIN_BYTES (then it is
    packed). A frame holds 64 MiB: a batch of results of up to 64 KiB each must stay near
    1,000 of them; 4,096 small ones make ~4 MB at most. (`Span.big` is kept as values join:
    a pass over them here cost ~3% of a no-op map's executor time.)"""
    count = len(span.values)
    return count >= SPAN_REPORT_EVERY or (
        count >= CHUNK_REPORT_EVERY and (span.big or bool(span.errors))
    )


class SpanRunner:
    """The chunk-running part of `Kernel`: plain chunks and span chunks (see the module
    docstring)."""

    def _run_chunk(self, record: TaskRecord, fn: Callable[..., Any]) -> None:
        """Run a chunk's subtasks in order; report their results in batches."""
        results: list[list[Any]] = []
        flushed_at = self._clock()
        try:
            while record.chunk:
                task_id, *call = record.chunk.popleft()
                record.running_subtask = task_id
                started = self._clock()
                value, outcome, error = None, "failed", None
                try:
                    args, kwargs = self._unpack(call[0], fn) if len(call) == 1 else call
                    result = self._call_task(fn, args, kwargs)
                except TaskKilled:
                    if record.fail_error is not None:  # this subtask is the one that pays
                        stats = {"running_ns": self._clock() - started}
                        results.append([task_id, "failed", None, record.fail_error, stats])
                    raise
                except greenlet.GreenletExit:
                    raise
                except BaseException as exc:  # a task's error belongs to its result
                    error = describe_failure(exc, KERNEL_FILES)
                else:
                    try:  # packed here, so that a result msgpack cannot carry fails alone
                        value = payloads.pack_result(
                            result, f"result of {task_id}", self._spool_result
                        )
                        outcome = "finished"
                    except p.EncodeError as exc:
                        error = ["EncodeError", f"the result cannot be sent: {exc}", ""]
                now = self._clock()
                results.append([task_id, outcome, value, error, {"running_ns": now - started}])
                if (
                    self.gate.requested
                    or len(results) >= CHUNK_REPORT_EVERY
                    or now - flushed_at >= CHUNK_REPORT_NS
                ):
                    # Report before parking too: those subtasks are done whatever comes next.
                    self._report_chunk(record, results)
                    results, flushed_at = [], now
                    if self.gate.requested:
                        self._checkpoint()  # between subtasks: a suspension point
        finally:
            if results:  # also when killed: these subtasks did complete
                self._report_chunk(record, results)

    def _report_chunk(self, record: TaskRecord, results: list[list[Any]]) -> None:
        # Values are payloads already (packed as each subtask ended), so this always encodes.
        self._emit(p.ChunkResults(record.task_id, results))
        if record.unreported is not None:  # after the emit, as for `_tasks` above
            for item in results:
                record.unreported.pop(item[0], None)
        self._flush()

    def _run_span(self, record: TaskRecord, fn: Callable[..., Any]) -> None:
        """Run a span chunk's subtasks in order; report their results in batches
        (`chunk_batch`: the values packed as one array, or a list with the failures apart).
        The batch being filled is the span's (`Span.values`): the hub reports it when it
        suspends the chunk.

        A run of a map's calls (`QuickCalls.take_run`) goes through `map` over a gated
        iterator: the calls in C, each a record boundary of the gate; any other subtask
        runs alone (`_run_subtask`). Runs are sized toward SPAN_RUN_NS of work."""
        span, chunk, gate, clock = record.span, record.chunk, self.gate, self._clock
        quick = QuickCalls(fn, payloads.DATA_THRESHOLD)
        columns = span.columns
        shared = None if columns is None else quick.shared_kwargs(columns.kwargs)
        span.batch_started = clock()
        run_size = 1
        try:
            while chunk:
                if columns is None:
                    run = quick.take_run(chunk, run_size)
                    if run is None:
                        self._run_subtask(record, fn, quick, chunk.popleft())
                else:
                    run = quick.take_columns(chunk, columns, run_size, shared)
                    if run is None:  # not a scalar (or no runs for this function): alone
                        x = columns.window(chunk.popleft(), 1)[0]
                        self._run_subtask(record, fn, quick, None, x)
                if run is not None:
                    began = clock()
                    self._run_calls(record, quick, *run)
                    each_ns = max(1, (clock() - began) // max(1, len(run[0])))  # a steal may
                    # have taken every call of the run before the first began
                    # At most CHUNK_REPORT_EVERY calls: a run's results join the batch at
                    # once, before `_batch_full` looks, and may be big even after small ones.
                    run_size = max(1, min(CHUNK_REPORT_EVERY, SPAN_RUN_NS // each_ns))
                now = clock()
                if _batch_full(span) or now - span.batch_started >= CHUNK_REPORT_NS:
                    self._report_span(record)
                if gate.requested:
                    self._checkpoint()  # between subtasks: a suspension point
        finally:
            self._report_span(record)  # also when killed: these subtasks did complete

    def _run_calls(
        self, record: TaskRecord, quick: QuickCalls, xs: list[Any], kwargs: dict[str, Any]
    ) -> None:
        """Run a span's calls `fn(x, **kwargs)` for each x, in order, in C (`map`), each a
        record boundary; a call that raises fails alone and the next ones run. The run's
        results so far are the span's (`Span.run`): the hub takes them into the batch when
        it suspends the chunk (`_take_run`)."""
        span = record.span
        call = functools.partial(quick.fn, **kwargs) if kwargs else quick.fn
        span.run, span.run_errors, span.quick = [], {}, quick
        span.run_xs, span.run_first = xs, span.next
        calls = map(call, self._gated_iterator(xs, self.gate))
        try:
            while True:
                results = span.run
                try:
                    results.extend(calls)  # what ran stays in `results` if one raises
                    if span.unstarted_in_run():
                        # A call raised StopIteration, which ends `extend` as if the calls
                        # had: it fails alone (as PEP 479 makes it in a generator).
                        error = RuntimeError("a task raised StopIteration")
                        span.run_errors[len(results)] = describe_failure(error, __file__)
                        results.append(None)
                        continue
                    break
                except (TaskKilled, greenlet.GreenletExit):
                    # Only ever at the boundary between two calls (a call's argument is a
                    # scalar, no gated input): none of them is running, none pays for it.
                    raise
                except BaseException as exc:  # a task's error belongs to its result
                    span.run_errors[len(results)] = describe_failure(exc, __file__)
                    results.append(None)
        except BaseException:
            self._take_run(record, drive=None, ending=True)
            raise
        self._take_run(record, drive=quick.fn, ending=True)

    def _take_run(self, record: TaskRecord, drive: Callable[..., Any] | None, ending: bool) -> None:
        """Put the results of a span's run so far in its batch, packed, the failures apart;
        the run carries on from there (when the hub takes them at a suspension), or is done
        (`ending`: then it is the span's no more, before anything here may hand over).

        A generator returned is driven (its records are the result) if `drive`, the function
        that returned it, is given; else (the hub, or a run being killed) it and the rest
        stay: taken at the run's end, or dropped as not run if `ending`."""
        span = record.span
        results, errors, quick, start = span.run, span.run_errors, span.quick, span.next
        if results is None:
            return
        if ending:
            span.run = span.run_xs = None
        quick.small = False  # until pack_all says otherwise
        packed = None if errors else quick.pack_all(results)
        if packed is not None:
            taken = len(results)
            span.values.extend(packed)
            span.big = span.big or not quick.small
        else:
            taken = self._take_slowly(record, start, results, errors, drive)
        if not ending:
            del results[:taken]
            span.run_errors = {k - taken: error for k, error in errors.items() if k >= taken}
        span.next = start + taken

    def _take_slowly(
        self,
        record: TaskRecord,
        start: int,
        results: list[Any],
        errors: dict[int, list[str]],
        drive: Callable[..., Any] | None,
    ) -> int:
        """`_take_run` one result at a time, the first task `start`; how many it took."""
        span = record.span
        quick = span.quick
        for offset, result in enumerate(results):
            index = start + offset
            error = errors.get(offset)
            if error is None and type(result) in NOT_A_RESULT:
                if drive is None:
                    return offset
                span.next = index + 1  # the one running now, for `Span.running`
                try:
                    result = self._call_result(drive, result)  # may hand over to the hub
                except (TaskKilled, greenlet.GreenletExit):
                    raise
                except BaseException as exc:
                    error = describe_failure(exc, __file__)
            value = None
            if error is None:
                try:
                    value = quick.pack(result) or payloads.pack_result(
                        result, f"result of {span.job_id}/{index}", self._spool_result
                    )
                except p.EncodeError as exc:
                    error = ["EncodeError", f"the result cannot be sent: {exc}", ""]
            span.values.append(value)
            if error is not None:
                span.errors.append([index, error])
            elif len(value) >= payloads.DATA_MIN_BYTES:
                span.big = True
        return len(results)

    def _run_subtask(
        self,
        record: TaskRecord,
        fn: Callable[..., Any],
        quick: QuickCalls,
        payload: bytes | None,
        x: Any = None,
    ) -> None:
        """Run one subtask of a span chunk the general way; its result joins the batch.
        `payload` None: the call of a columnar span's `x` (runtime/columns.py)."""
        span = record.span
        index = span.next
        span.next += 1
        try:
            if payload is None:
                result = self._call_column(fn, span.columns, x)
            else:
                result = self._call_payload(fn, quick, payload)
            value = quick.pack(result)
            if value is None:
                where = f"result of {span.job_id}/{index}"
                value = payloads.pack_result(result, where, self._spool_result)
        except TaskKilled:
            if record.fail_error is not None:  # this subtask is the one that pays
                span.values.append(None)
                span.errors.append([index, record.fail_error])
            raise
        except greenlet.GreenletExit:
            raise
        except p.EncodeError as exc:
            span.values.append(None)
            span.errors.append([index, ["EncodeError", f"the result cannot be sent: {exc}", ""]])
        except BaseException as exc:  # a task's error belongs to its result
            span.values.append(None)
            span.errors.append([index, describe_failure(exc, __file__)])
        else:
            span.values.append(value)
            span.big = span.big or len(value) >= payloads.DATA_MIN_BYTES

    def _call_payload(self, fn: Callable[..., Any], quick: QuickCalls, payload: bytes) -> Any:
        """A span subtask's call from its payload: a plain one directly, any other the
        general way (`_unpack`, gated inputs)."""
        call = quick.args_of(payload)
        if call is None:
            return self._call_task(fn, *self._unpack(payload, fn))
        result = quick.fn(*call[0], **call[1])
        return self._call_result(fn, result) if type(result) in NOT_A_RESULT else result

    def _call_column(self, fn: Callable[..., Any], columns: LaunchColumns, x: Any) -> Any:
        """A columnar span's call of one x the general way, as its payload would have been
        (its kwargs its own, gated inputs). Its x packs under 1 KiB: unlike a payload's
        data, it is not worth moving out of the collector's way (`_payload_unpacked`)."""
        args, kwargs = columns.call(x)
        return self._call_task(fn, args, kwargs)

    def _report_span(self, record: TaskRecord) -> None:
        """Send a span chunk's batch, if it has results, and start the next."""
        span = record.span
        values = span.values
        now = self._clock()
        if values:
            start, running_ns = span.reported, now - span.batch_started
            packed = None if span.errors else payloads.pack_batch(values)
            self._emit(
                p.ChunkBatch(
                    record.task_id,
                    span.job_id,
                    start,
                    values if packed is None else packed,
                    span.errors,
                    running_ns,
                )
            )
            span.reported = start + len(values)  # after the emit, as for `_tasks` above
            span.values, span.errors, span.big = [], [], False
            self._flush()
        span.batch_started = now


# Argument types `gate_arguments` never wraps (nor a task's `inputs` would: not iterables).
_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def give_up_tail(record: TaskRecord, count: int) -> list[str]:
    """Take up to `count` subtasks that have not started from the end of a chunk (a span
    chunk's own tail first, then its run's): their ids, in order (none for a plain task)."""
    span = record.span
    if span is not None:
        from_chunk = min(count, len(record.chunk))
        from_run = min(count - from_chunk, span.unstarted_in_run())
        for _ in range(from_chunk):
            record.chunk.pop()
        span.give_up_in_run(from_run)
        count = from_chunk + from_run
        taken = span.ids(span.end - count, span.end)
        span.end -= count
        return taken
    if record.chunk is None:
        return []
    taken = [record.chunk.pop()[0] for _ in range(min(count, len(record.chunk)))]
    taken.reverse()
    return taken


def _plain_prefix(xs: list[Any]) -> int:
    """How many of `xs`, from the first, are of the _PLAIN types (C loops)."""
    plain = list(map(_PLAIN.__contains__, map(type, xs)))
    return plain.index(False) if False in plain else len(xs)


def _plain_kwargs(kwargs: dict[str, Any]) -> bool:
    """Whether every value of `kwargs` is of the _PLAIN types: the calls of a run share one
    kwargs, so only values none of them can change."""
    return all(map(_PLAIN.__contains__, map(type, kwargs.values())))


class QuickCalls:
    """The common case of a chunk's tasks, done with less Python per task: a call whose
    payload is a plain `[args, kwargs]` of scalars, to a function that gates no keyword
    input, and a small result. `args_of` and `pack` answer None for anything else, which
    then takes the general path (payloads.open_task_call, gate_arguments,
    payloads.pack_result), so the two always agree.

    Discussion: for a no-op task the general path costs ~7 us on this project's VMs (the
    payload opened piece by piece, each argument tested for gating, a Packer made per
    result); `args_of` ~1.5 us, a run (`take_run`) ~0.6 us. One Packer is reused: the
    kernel's task thread is its only user.
    """

    def __init__(self, fn: Callable[..., Any], result_limit: int) -> None:
        self.usable = not (isinstance(fn, TaskFunction) and fn.inputs is not None)
        # What to call: a @task's own function (its wrapper only calls it).
        self.fn = fn.fn if isinstance(fn, TaskFunction) else fn
        self._packer = msgpack.Packer(use_bin_type=True)
        self._result_limit = result_limit
        self.small = False  # whether `pack_all`'s last values each packed under DATA_MIN_BYTES

    def args_of(self, payload: bytes) -> tuple[list[Any], dict[str, Any]] | None:
        """(args, kwargs) of a plain call's payload, or None."""
        if not self.usable or payload[:1] != b"\x92":  # not [args, kwargs] (blocked, spooled)
            return None
        try:
            # msgpack's defaults are stricter than the general path's options (str keys
            # only; an extension comes back as an ExtType, which is not plain): whatever
            # they refuse, that path decodes or explains. Options cost ~0.25 us a call.
            args, kwargs = msgpack.unpackb(payload)
        except Exception:  # malformed, or not a pair: the general path says what is wrong
            return None
        if type(args) is not list or type(kwargs) is not dict:
            return None
        plain = _PLAIN
        for arg in args:
            if type(arg) not in plain:
                return None
        for key in kwargs:
            if type(key) is not str:
                return None
        return args, kwargs

    def take_run(self, chunk: deque[bytes], limit: int) -> tuple[list[Any], dict[str, Any]] | None:
        """Take from the front of `chunk` (payloads) the longest run, up to `limit`, of calls
        `[[x], kwargs]` of one argument, a scalar, and the same kwargs (a map's calls):
        (their xs, the kwargs). None, taking nothing, if the first is not one.

        Discussion: checked and decoded with C loops (`map` over bytes methods, one unpackb
        for the whole run), so that the kernel can run them with `map` over a gated
        iterator: ~0.6 us a no-op task in the kernel, against ~1.5 one at a time.
        """
        if not self.usable or not chunk:
            return None
        first = chunk[0]
        call = self.args_of(first)
        if call is None or len(call[0]) != 1:
            return None
        kwargs = call[1]
        if not _plain_kwargs(kwargs):
            return None  # the calls of a run share one kwargs: only values none can change
        suffix, head = msgpack.packb(kwargs), payloads.ONE_ARGUMENT_CALL
        if not first.endswith(suffix) or not first.startswith(head):
            return None  # packed another way than this module would: one at a time
        calls = list(itertools.islice(chunk, limit))
        fits = list(
            map(
                operator.and_,
                map(bytes.endswith, calls, itertools.repeat(suffix)),
                map(bytes.startswith, calls, itertools.repeat(head)),
            )
        )
        count = fits.index(False) if False in fits else len(calls)
        cut = slice(len(head), -len(suffix))
        pieces = list(map(operator.getitem, calls[:count], itertools.repeat(cut)))
        try:
            xs = msgpack.unpackb(msgpack.Packer().pack_array_header(count) + b"".join(pieces))
        except Exception:  # a malformed one among them: one at a time finds it
            return None
        count = _plain_prefix(xs)
        del xs[count:]
        # Each piece must be exactly its x: concatenated, two pieces could decode as other
        # values (a kwargs map split across them, say). msgpack packs a scalar one way only,
        # so packing each x again gives its piece back, or the run is not what it seemed.
        if not count or list(map(self._packer.pack, xs)) != pieces[:count]:
            return None
        for _ in range(count):
            chunk.popleft()
        return xs, kwargs

    def shared_kwargs(self, packed: bytes) -> dict[str, Any] | None:
        """A columnar span's kwargs (runtime/columns.py), if its runs may share one copy: a
        map of str keys to scalars, for a function that gates no keyword input. None if
        not: each call then decodes its own (`LaunchColumns.call`)."""
        if not self.usable:
            return None
        try:
            kwargs = msgpack.unpackb(packed)  # stricter than the general path, as in args_of
        except Exception:
            return None
        if type(kwargs) is not dict or not all(type(key) is str for key in kwargs):
            return None
        return kwargs if _plain_kwargs(kwargs) else None

    def take_columns(
        self, chunk: deque[int], columns: LaunchColumns, limit: int, kwargs: dict[str, Any] | None
    ) -> tuple[list[Any], dict[str, Any]] | None:
        """`take_run` for a columnar span, whose chunk holds positions in its launch: the
        longest run, up to `limit`, of xs from the front that are scalars, decoded a window
        at a time, and their `kwargs` (from `shared_kwargs`). None, taking nothing, if the
        first is not a scalar or `kwargs` is None."""
        if kwargs is None:
            return None
        xs = columns.window(chunk[0], min(limit, len(chunk)))
        count = _plain_prefix(xs)
        if not count:
            return None
        del xs[count:]
        for _ in range(count):
            chunk.popleft()
        return xs, kwargs

    def pack_all(self, values: list[Any]) -> list[bytes] | None:
        """Each of `values` packed (as `pack`), or None if any is not small or packable.
        `small` says whether each was under DATA_MIN_BYTES."""
        packer, limit = self._packer, self._result_limit
        self.small = False
        try:
            packed = list(map(packer.pack, values))
        except Exception:
            packer.reset()
            return None
        longest = max(map(len, packed), default=0)
        self.small = longest < payloads.DATA_MIN_BYTES
        return packed if longest < limit else None

    def pack(self, value: Any) -> bytes | None:
        """`value` packed, if it is small (under `result_limit` bytes); else None."""
        packer = self._packer
        try:
            packed = packer.pack(value)
        except Exception:
            packer.reset()
            return None
        return packed if len(packed) < self._result_limit else None
