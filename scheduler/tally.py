"""What the scheduler has done so far, counted: for `status()`, `/metrics` and the dashboard.

`Tally.step(instructions, records)` reads the instructions of one step of the core as they
come out of it: the commands sent (suspensions, resumptions, kills), the notes (executors
lost, policy switches, decisions refused) and the tasks that ended (per priority and
outcome, and a stream task's latency, submit to end as the scheduler saw them). Counts only
grow; the stream latencies are kept for a sliding window (`WINDOW_NS`, at most
`WINDOW_TASKS` of them) and as a histogram of every one, with Prometheus's cumulative
buckets.

Discussion: counted from the instructions, in one place, rather than where each decision is
made, so that nothing the core sends can go uncounted; a step costs a type check per
instruction (a step handles one report: one to three instructions, a results frame of 50
tasks: 50 notes).
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from tidal.runtime import batches
from tidal.runtime import protocol as p
from tidal.runtime.columns import Columns
from tidal.runtime.payloads import DATA_MIN_BYTES
from tidal.scheduler import events as ev
from tidal.scheduler.records import Records

__all__ = ["LATENCY_BUCKETS_S", "Tally", "refusal_kind"]

# The upper bounds of the stream latency histogram's buckets, in seconds (+Inf is implied).
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The sliding window of stream latencies whose percentiles `status()` shows: the last
# minute, or the last WINDOW_TASKS stream tasks if more ended in it.
WINDOW_NS = 60_000_000_000
WINDOW_TASKS = 4096

_COMMANDS = {p.Suspend: "suspensions", p.Resume: "resumptions", p.Kill: "kills"}
# What varies in a refusal's reason (counts, states in parentheses, a repr after a colon):
# cut, so that refusals are counted per kind and the kinds stay few.
_DETAIL = re.compile(r"\s*(\(.*|:.*)$")


def _data(payload: Any) -> int:
    """The bytes of a payload that count as task data (see DATA_MIN_BYTES)."""
    return len(payload) if type(payload) is bytes and len(payload) >= DATA_MIN_BYTES else 0


def refusal_kind(reason: str) -> str:
    """The kind of a refused decision's reason: `reason` without its details
    ("suspension cap reached (3 of 3)" -> "suspension cap reached")."""
    return _DETAIL.sub("", reason)[:120]


class Tally:
    """Counts of what the core did (see the module docstring)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # refused policy decisions, per kind of reason
        # Tasks ended since the scheduler started, per priority and outcome: retired jobs'
        # too, which the books no longer hold.
        self.ended: dict[str, Counter[str]] = {"stream": Counter(), "batch": Counter()}
        self._window: deque[tuple[int, int]] = deque(maxlen=WINDOW_TASKS)  # (ended at, ns)
        self._buckets = [0] * (len(LATENCY_BUCKETS_S) + 1)  # the last one: over every bound
        self._latency_sum_ns = 0
        # Task data that passed through the scheduler: payloads of DATA_MIN_BYTES or more in
        # submits and results (a reference counts its own few bytes, not what it names).
        self.data_bytes = 0
        # Launches of tasks with inputs kept on executors: on the one holding most of their
        # input bytes ("local") or elsewhere.
        self.placements: Counter[str] = Counter()

    def step(self, instructions: Iterable[Any], records: Records) -> None:
        """Count what one step of the core sent and decided."""
        counts = self.counts
        for instruction in instructions:
            kind = type(instruction)
            if kind is ev.TaskEnded:
                item = instruction.item
                self.data_bytes += _data(item[2])
                if type(item[4]) is dict and item[4].get("recomputed"):
                    counts["recomputations"] += 1
                    continue
                priority = "stream" if instruction.stream else "batch"
                self.ended[priority][item[1]] += 1
                if instruction.stream:
                    self._stream_ended(instruction.item[0], records)
            elif kind is ev.BatchEnded:
                result = instruction.result
                values = result.values
                ended = self.ended["stream" if instruction.stream else "batch"]
                ended["finished"] += batches.values_count(values) - len(result.errors)
                ended["failed"] += len(result.errors)
                if type(values) is not bytes:  # packed: none is DATA_MIN_BYTES (pack_batch)
                    self.data_bytes += sum(map(_data, values))
            elif kind is ev.JobAccepted:
                submit = instruction.submit
                self.data_bytes += sum(_data(t[1]) for t in submit.tasks)
                bulk, job = submit.bulk, records.jobs.get(submit.job_id)
                # (A map's payloads are nearly always small: the job knows its longest.
                # A columnar job's calls are each under DATA_MIN_BYTES as its client packs
                # them; another sender's are counted from the job's columns.)
                if bulk and (job is None or job.payload_max >= DATA_MIN_BYTES):
                    calls = job.payloads if job is not None else bulk
                    if isinstance(calls, Columns):
                        self.data_bytes += calls.data_bytes()
                    elif type(calls) is not bytes:
                        self.data_bytes += sum(map(_data, calls))
            elif kind is ev.ToExecutor:
                message = instruction.message
                name = _COMMANDS.get(type(message))
                if name is not None:
                    counts[name] += 1
                if type(message) is p.Launch and message.inputs:
                    task = records.tasks.get(message.task_id)
                    local = task is not None and task.local_to == instruction.executor_id
                    self.placements["local" if local else "remote"] += 1
            elif kind is ev.DecisionRefused:
                self.refused[refusal_kind(instruction.reason)] += 1
            elif kind is ev.ExecutorLost:
                counts["executor_losses"] += 1
            elif kind is ev.PolicyChanged:
                counts["policy_switches"] += 1

    def _stream_ended(self, task_id: str, records: Records) -> None:
        task = records.tasks.get(task_id)
        if task is None:
            return
        latency = max(0, records.now - task.submitted_at)
        self._window.append((records.now, latency))
        # The first bucket whose bound it does not exceed (the last: over every bound).
        self._buckets[bisect.bisect_left(LATENCY_BUCKETS_S, latency / 1e9)] += 1
        self._latency_sum_ns += latency

    def as_dict(self, now: int) -> dict[str, Any]:
        """The counts, the refusals per kind, and the stream latencies: the window's
        percentiles (ms; None without a task in the window) and the whole histogram."""
        window = [(at, ns) for at, ns in self._window if now - at <= WINDOW_NS]
        recent = sorted(ns for _, ns in window)

        def percentile(q: float) -> float | None:  # the nearest-rank percentile
            if not recent:
                return None
            return round(recent[max(0, math.ceil(q * len(recent)) - 1)] / 1e6, 3)

        cumulative, running = [], 0
        for count in self._buckets[:-1]:
            running += count
            cumulative.append(running)
        return {
            "suspensions": self.counts["suspensions"],
            "resumptions": self.counts["resumptions"],
            "kills": self.counts["kills"],
            "executor_losses": self.counts["executor_losses"],
            "policy_switches": self.counts["policy_switches"],
            "recomputations": self.counts["recomputations"],
            "data_bytes": self.data_bytes,
            "placements": {"local": self.placements["local"], "remote": self.placements["remote"]},
            "refused": dict(self.refused),
            "ended": {priority: dict(counts) for priority, counts in self.ended.items()},
            "stream_latency": {
                # The span the window covers: WINDOW_NS, or less when more than
                # WINDOW_TASKS stream tasks ended within it.
                "window_s": WINDOW_NS / 1e9
                if len(window) < WINDOW_TASKS
                else round((now - window[0][0]) / 1e9, 3),
                "count": len(recent),
                "p50_ms": percentile(0.5),
                "p90_ms": percentile(0.9),
                "p99_ms": percentile(0.99),
                "buckets_s": list(LATENCY_BUCKETS_S),
                "cumulative": cumulative,  # tasks at or under each bound
                "total": running + self._buckets[-1],
                "sum_s": self._latency_sum_ns / 1e9,
            },
        }
