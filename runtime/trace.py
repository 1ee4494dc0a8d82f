"""A scheduling event log as a Chrome trace, to open in Perfetto (ui.perfetto.dev) or
chrome://tracing.

`chrome_trace(events)` turns an event log's records (scheduler/eventlog.py, as
`read_events` returns them) into a trace in the Trace Event Format (a JSON object);
`write_chrome_trace(events, path)` writes one. `tidal timeline LOG --chrome-trace OUT.json`
is the command line. It reads records only, never the scheduler, so it imports nothing of
Tidal; docs/eventlog.md describes both the log and this trace.

The trace is one process, the cluster, with a track (a thread, `tid`) per executor in the
order the log names them, after a first track, "scheduler", for what belongs to no executor.

* A task's run slices are complete events ("X") on its executor's track: a slice runs from
  `started` or `resumed` to `suspended`, `finished`, `failed` or `killed` (or to
  `executor_lost`, or the log's end), the running stretches `tidal timeline` draws, so a
  suspended task's run is split at each suspension. A slice is named after the task's
  function where the log says it, else its job (else the task id); its category is the
  priority; its args hold the task id, job, priority, attempt and how the slice ended.
* The time a task sat suspended is an async slice ("b"/"e", category "suspended"): several
  tasks may sit parked on one executor at once, which one thread track cannot show.
* Instant events ("i") mark suspensions, failed suspensions, kills, steals, refusals (an
  executor's of a command, the core's of a policy's decision) and executors joining, being
  lost, busy or back, on their executor's track; jobs submitted or refused on the
  scheduler's; policy switches across every track (global scope).

`ts` and `dur` are whole microseconds from the log's first record (`otherData.origin_s` is
that record's time on the scheduler's clock), so a slice ends exactly where the next begins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

__all__ = ["chrome_trace", "write_chrome_trace"]

Record = dict[str, Any]

PID = 1
SCHEDULER_TID = 0

# Reports that end a run slice, and how.
RUN_ENDS = ("suspended", "finished", "failed", "killed")
# Events shown as instants on their executor's track: the event -> the instant's name and
# the record's fields it carries as args.
EXECUTOR_INSTANTS = {
    "suspended": ("suspended", ("task", "latency_us", "records")),
    "suspend_failed": ("suspend failed", ("task", "reason")),
    "killed": ("killed", ("task", "attempt", "work_lost_ms")),
    "steal": ("steal", ("task", "count", "thief")),
    "stolen": ("stolen", ("task", "count")),
    "refused": ("refused", ("task", "command", "reason")),
    "decision_refused": ("decision refused", ("decision", "task", "policy", "reason")),
    "executor_joined": ("executor joined", ("node", "hostname")),
    "executor_lost": ("executor lost", ("reason",)),
    "executor_busy": ("executor busy", ("reason",)),
    "executor_back": ("executor back", ("reason",)),
}
# Events shown on the scheduler's track; policy switches cross every track ("g").
SCHEDULER_INSTANTS = {
    "submitted": ("submitted", ("job", "priority", "order", "tasks", "client"), "t"),
    "submit_refused": ("submit refused", ("job", "client", "reason"), "t"),
    "policy": ("policy", ("policy", "previous", "reason"), "g"),
    "adaptive_switch": ("adaptive switch", ("policy", "previous", "reason"), "g"),
}


def chrome_trace(events: Iterable[Record]) -> dict[str, Any]:
    """The trace of an event log's records (see the module docstring for what is in it)."""
    events = list(events)
    builder = _TraceBuilder(min((event["t"] for event in events), default=0.0))
    for event in events:
        builder.add(event)
    builder.finish(max((event["t"] for event in events), default=0.0))
    started = _log_started(events)
    return {
        "traceEvents": builder.metadata(started.get("policy")) + builder.out,
        "displayTimeUnit": "ms",
        "otherData": {"source": "tidal event log", "origin_s": builder.origin, **started},
    }


class _TraceBuilder:
    """Reads a log's records in order into trace events (`out`), keeping what the log said
    of each task and which slice is open on each executor."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.out: list[Record] = []
        self.tracks: dict[str, int] = {}  # executor -> tid, in the order the log names them
        self.nodes: dict[str, str] = {}
        self.about: dict[str, dict[str, Any]] = {}  # task -> job, priority, function, tasks
        self.functions: dict[str, str] = {}  # job -> function, where the log says it
        self.attempts: dict[tuple[str, str], Any] = {}  # (executor, task) -> attempt there
        self.running: dict[str, tuple[str, int]] = {}  # executor -> (task, start): its slice
        self.parked: dict[tuple[str, str], tuple[int, int]] = {}  # -> (start, number)
        self.suspensions = 0

    def us(self, t: float) -> int:
        return round((t - self.origin) * 1e6)

    def track(self, executor: str) -> int:
        return self.tracks.setdefault(executor, len(self.tracks) + 1)

    def add(self, event: Record) -> None:
        name, t = event["event"], self.us(event["t"])
        executor, task = event.get("executor"), event.get("task")
        if executor is not None:
            self.track(executor)
        # -- 1. What the log says of executors, tasks and jobs (the first word stands).
        if name == "executor_joined" and event.get("node") is not None:
            self.nodes[executor] = str(event["node"])
        if name == "submitted" and event.get("function"):
            self.functions[event["job"]] = event["function"]
        if name in ("launch", "started") and task is not None:
            known = self.about.setdefault(task, {})
            for field in ("job", "priority", "function", "tasks"):
                if known.get(field) is None and event.get(field) is not None:
                    known[field] = event[field]
            if event.get("attempt") is not None:
                self.attempts[(executor, task)] = event["attempt"]
        # -- 2. Instants (on the scheduler's track if the record names no executor).
        if name in EXECUTOR_INSTANTS:
            label, fields = EXECUTOR_INSTANTS[name]
            tid = SCHEDULER_TID if executor is None else self.track(executor)
            self.out.append(_instant(label, t, tid, "t", event, fields))
        elif name in SCHEDULER_INSTANTS:
            label, fields, scope = SCHEDULER_INSTANTS[name]
            self.out.append(_instant(label, t, SCHEDULER_TID, scope, event, fields))
        # -- 3. Slices: an executor lost ends all of its own; a start opens one, an end
        #       closes it; a suspension opens the task's parked stretch.
        if name == "executor_lost":
            if executor in self.running:
                self.end_slice(executor, t, "lost")
            for key in [k for k in self.parked if k[0] == executor]:
                self.end_park(key, t, "lost")
            return
        if executor is None or task is None:
            return
        key = (executor, task)
        open_task = self.running.get(executor, (None, 0))[0]
        if name in ("started", "resumed"):
            if key in self.parked:
                self.end_park(key, t, "resumed")
            if open_task == task:
                return  # a duplicate start does not restart the slice
            if open_task is not None:
                # Discussion: an executor runs one task at a time, and reports in order, so
                # a start while another slice is open means the log lost that slice's end
                # (a report never sent). Ending it here keeps the track's slices apart.
                self.end_slice(executor, t, "no end logged")
            self.running[executor] = (task, t)
        elif name in RUN_ENDS:
            if open_task == task:
                self.end_slice(executor, t, name, event.get("error") if name == "failed" else None)
            if name == "suspended" and key not in self.parked:
                self.suspensions += 1
                self.parked[key] = (t, self.suspensions)
            elif name == "killed" and key in self.parked:
                self.end_park(key, t, "killed")

    def finish(self, last_t: float) -> None:
        """End what is still open at the log's last record, and put events in time order."""
        end = self.us(last_t)
        for executor in list(self.running):
            self.end_slice(executor, end, "running")
        for key in list(self.parked):
            self.end_park(key, end, "suspended")
        self.out.sort(key=lambda record: record["ts"])  # stable: a step's stay in log order

    def end_slice(self, executor: str, end: int, how: str, error: str | None = None) -> None:
        task, start = self.running.pop(executor)
        known = self.about.get(task, {})
        job = known.get("job")
        args = {
            "task": task,
            "job": job,
            "priority": known.get("priority"),
            "attempt": self.attempts.get((executor, task)),
            "ended": how,
        }
        if known.get("tasks") is not None:
            args["tasks"] = known["tasks"]  # a chunk: how many tasks it holds
        if error is not None:
            args["error"] = error
        self.out.append(
            {
                "ph": "X",
                "name": known.get("function") or self.functions.get(job) or job or task,
                "cat": known.get("priority") or "task",
                "pid": PID,
                "tid": self.track(executor),
                "ts": start,
                "dur": end - start,
                "args": args,
            }
        )

    def end_park(self, key: tuple[str, str], end: int, how: str) -> None:
        start, number = self.parked.pop(key)
        common = {"cat": "suspended", "name": f"{key[1]} suspended", "pid": PID}
        common |= {"tid": self.track(key[0]), "id": f"{key[0]}/{key[1]}/{number}"}
        self.out.append({**common, "ph": "b", "ts": start, "args": {"task": key[1]}})
        self.out.append({**common, "ph": "e", "ts": end, "args": {"ended": how}})

    def metadata(self, policy: str | None) -> list[Record]:
        """The names of the process and of its tracks, and the tracks' order."""
        process = "Tidal cluster" + (f" (policy {policy})" if policy else "")
        names = {SCHEDULER_TID: "scheduler"}
        for executor, tid in self.tracks.items():
            node = self.nodes.get(executor)
            names[tid] = f"executor {executor}" + (f" (node {node})" if node else "")
        out: list[Record] = [
            {"ph": "M", "name": "process_name", "pid": PID, "tid": 0, "args": {"name": process}}
        ]
        for tid, name in names.items():
            common = {"ph": "M", "pid": PID, "tid": tid}
            out.append({**common, "name": "thread_name", "args": {"name": name}})
            out.append({**common, "name": "thread_sort_index", "args": {"sort_index": tid}})
        return out


def write_chrome_trace(events: Iterable[Record], path: str | os.PathLike[str]) -> int:
    """Write `events`' trace to `path` as JSON; return how many trace events it holds."""
    trace = chrome_trace(events)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(trace, file, separators=(",", ":"))
    return len(trace["traceEvents"])


def _instant(
    label: str, ts: int, tid: int, scope: str, event: Record, fields: Iterable[str]
) -> Record:
    args = {field: event.get(field) for field in fields if event.get(field) is not None}
    return {"ph": "i", "name": label, "s": scope, "pid": PID, "tid": tid, "ts": ts, "args": args}


def _log_started(events: list[Record]) -> dict[str, Any]:
    """The log's format, policy and cap, from its first record, if it is `log_started`."""
    first = events[0] if events else {}
    if first.get("event") != "log_started":
        return {}
    return {k: first.get(k) for k in ("format", "policy", "max_suspensions")}
