"""How the kernel runs a span chunk: a range of a bulk job's tasks (runtime/kernel.py).

A span chunk's subtasks are bare payloads (`launch_chunk.span`); their results go out in
batches (`chunk_batch`: one list of values, the failures apart), the batch being filled
kept on the span (`Span.values`) so that the hub can report it when it suspends the chunk.
A run of a map's calls, `[[x], kwargs]` of one scalar and the same kwargs
(`QuickCalls.take_run`), goes through `map(fn, GatedIterator(xs))`: the calls in C, each a
record boundary of the gate. Any other subtask runs alone, as a task would.

`SpanRunner` is a part of `Kernel`, which has the gate, the checkpoint, the emit and the
general ways to unpack and call a task that these use.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import greenlet

from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.runstate import TaskKilled, TaskRecord
from tidal.runtime.task import QuickCalls
from tidal.runtime.tracebacks import describe_failure

__all__ = [
    "CHUNK_REPORT_EVERY",
    "CHUNK_REPORT_NS",
    "NOT_A_RESULT",
    "SPAN_RUN_NS",
    "SpanRunner",
]

# A chunk reports its subtasks' results every this many subtasks or this often, whichever
# comes first: few messages for tiny subtasks, prompt results for slow ones.
CHUNK_REPORT_EVERY = 512
CHUNK_REPORT_NS = 20_000_000
# A span chunk runs a map's calls in runs of about this much work (at most
# CHUNK_REPORT_EVERY): a run's results join the batch at its end, so this bounds what a
# suspension holds back and how long a stolen-from chunk keeps what it took.
SPAN_RUN_NS = 1_000_000
# What a task function's call may return that is not its result as it is (`_call_result`).
NOT_A_RESULT = (types.GeneratorType, types.CoroutineType)


class SpanRunner:
    """The span-chunk part of `Kernel` (see the module docstring)."""

    def _run_span(self, record: TaskRecord, fn: Callable[..., Any]) -> None:
        """Run a span chunk's subtasks in order; report their results in batches
        (`chunk_batch`: one list of values, the failures apart). The batch being filled is
        the span's (`Span.values`): the hub reports it when it suspends the chunk.

        A run of a map's calls (`QuickCalls.take_run`) goes through `map` over a gated
        iterator: the calls in C, each a record boundary of the gate; any other subtask
        runs alone (`_run_subtask`). Runs are sized toward SPAN_RUN_NS of work."""
        span, chunk, gate, clock = record.span, record.chunk, self.gate, self._clock
        quick = QuickCalls(fn, payloads.DATA_THRESHOLD)
        span.batch_started = clock()
        run_size = 1
        try:
            while chunk:
                run = quick.take_run(chunk, run_size)
                if run is None:
                    self._run_subtask(record, fn, quick, chunk.popleft())
                else:
                    began = clock()
                    self._run_calls(record, quick, *run)
                    each_ns = max(1, (clock() - began) // max(1, len(run[0])))  # a steal may
                    # have taken every call of the run before the first began
                    run_size = max(1, min(CHUNK_REPORT_EVERY, SPAN_RUN_NS // each_ns))
                now = clock()
                if (
                    len(span.values) >= CHUNK_REPORT_EVERY
                    or now - span.batch_started >= CHUNK_REPORT_NS
                ):
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
        span.run, span.run_errors, span.run_start, span.quick = [], {}, span.next, quick
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
        results, errors, quick, start = span.run, span.run_errors, span.quick, span.run_start
        if results is None:
            return
        if ending:
            span.run = span.run_xs = None
        packed = None if errors else quick.pack_all(results)
        if packed is not None:
            taken = len(results)
            span.values.extend(packed)
        else:
            taken = self._take_slowly(record, results, errors, drive)
        if not ending:
            del results[:taken]
            span.run_start = start + taken
            span.run_errors = {k - taken: error for k, error in errors.items() if k >= taken}
        span.next = start + taken

    def _take_slowly(
        self,
        record: TaskRecord,
        results: list[Any],
        errors: dict[int, list[str]],
        drive: Callable[..., Any] | None,
    ) -> int:
        """`_take_run` one result at a time, from the run's `run_start`; how many it took."""
        span = record.span
        quick, start = span.quick, span.run_start
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
        return len(results)

    def _run_subtask(
        self, record: TaskRecord, fn: Callable[..., Any], quick: QuickCalls, payload: bytes
    ) -> None:
        """Run one subtask of a span chunk the general way; its result joins the batch."""
        span = record.span
        index = span.next
        span.next += 1
        try:
            call = quick.args_of(payload)
            if call is None:
                call = self._unpack(payload, fn)
                result = self._call_task(fn, *call)
            else:
                result = quick.fn(*call[0], **call[1])
                if type(result) in NOT_A_RESULT:  # a generator task, say
                    result = self._call_result(fn, result)
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

    def _report_span(self, record: TaskRecord) -> None:
        """Send a span chunk's batch, if it has results, and start the next."""
        span = record.span
        values = span.values
        now = self._clock()
        if values:
            start, running_ns = span.reported, now - span.batch_started
            self._emit(
                p.ChunkBatch(record.task_id, span.job_id, start, values, span.errors, running_ns)
            )
            span.reported = start + len(values)  # after the emit, as for `_tasks` above
            span.values, span.errors = [], []
            self._flush()
        span.batch_started = now
