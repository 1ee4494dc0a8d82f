"""`tidal status`: a scheduler's status snapshot, summed up for a terminal.

`render(snapshot)` gives one rich renderable: a summary line (policy, executors, tasks by
state, what the scheduler did, stream latency), the executors, and the jobs that are not
done, one row each, with the finished ones summed up per function and priority (a stream
application submits a job per micro-batch: thousands of finished one-task jobs are one
row). `tasks=True` adds what each executor holds, task by task. `tidal status --watch`
redraws it live.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tidal.runtime.functions import short_name

__all__ = ["render"]


def _short(fn: str | None) -> str:
    return "-" if not fn else short_name(fn)


def _count(n: int) -> str:
    return f"{n:,}"


def _memory(e: dict[str, Any]) -> str:
    if not e.get("rss_bytes"):
        return "-"
    used = f"{e['rss_bytes'] / 2**20:,.0f} MiB"
    limit = e.get("memory_limit_bytes")
    return f"{used} / {limit / 2**20:,.0f} MiB" if limit else used


def summary(snapshot: dict[str, Any]) -> Text:
    """The header: policy, executors, tasks by state, counters, stream latency."""
    executors = snapshot["executors"]
    alive = sum(e["state"] == "alive" and not e["busy"] for e in executors)
    busy = sum(e["state"] == "alive" and e["busy"] for e in executors)
    lost = sum(e["state"] != "alive" for e in executors)
    totals: dict[str, int] = {}
    for states in snapshot.get("tasks", {}).values():
        for state, n in states.items():
            totals[state] = totals.get(state, 0) + n
    counters = snapshot.get("counters", {})
    refused = sum(counters.get("refused", {}).values())
    text = Text()
    text.append("policy ", style="dim")
    text.append(str(snapshot["policy"]), style="bold")
    text.append(f" (suspension cap {snapshot['max_suspensions']})   ", style="dim")
    text.append(f"executors: {alive} alive")
    if busy:
        text.append(f", {busy} busy", style="yellow")
    if lost:
        text.append(f", {lost} lost", style="red")
    text.append("\ntasks: ")
    text.append(
        ", ".join(
            f"{_count(totals.get(state, 0))} {state}"
            for state in ("running", "queued", "pending", "suspended", "finished", "failed")
        )
    )
    text.append(
        f"\ndone so far: {_count(counters.get('suspensions', 0))} suspensions, "
        f"{_count(counters.get('resumptions', 0))} resumptions, "
        f"{_count(counters.get('kills', 0))} kills, {_count(snapshot.get('steals', 0))} steals, "
        f"{_count(counters.get('executor_losses', 0))} executors lost, "
    )
    text.append(f"{_count(refused)} decisions refused", style="yellow" if refused else "")
    latency = counters.get("stream_latency", {})
    if latency.get("count"):
        text.append(
            f"\nstream latency, last {latency['window_s']:.0f} s ({latency['count']} tasks): "
            f"p50 {latency['p50_ms']:.1f} ms, p90 {latency['p90_ms']:.1f} ms, "
            f"p99 {latency['p99_ms']:.1f} ms"
        )
    return text


def executors_table(snapshot: dict[str, Any], tasks: bool) -> Table:
    table = Table(title="executors", title_justify="left")
    for column in ("executor", "node", "state", "running", "queued", "suspended", "memory"):
        table.add_column(column, overflow="fold")
    for e in snapshot["executors"]:
        state = e["state"] if e["state"] != "alive" else "busy (in C)" if e["busy"] else "alive"
        running = "-"
        if e["running"]:
            what = e.get("running_function")
            running = f"{_short(what)} ({e.get('running_priority')})"
            if tasks:
                running += f"\n{e['running']}"
        suspended = str(len(e["suspended"]))
        if tasks and e["suspended"]:
            suspended += "\n" + "\n".join(e["suspended"])
        table.add_row(  # peers' and users' strings as Text: never read as rich markup
            Text(e["executor_id"]),
            Text(e["node"]),
            Text(state, style={"lost": "red", "busy (in C)": "yellow"}.get(state, "")),
            Text(running),
            str(e["queued"]),
            Text(suspended),
            _memory(e),
        )
    return table


def jobs_table(snapshot: dict[str, Any]) -> Table:
    """The jobs not done, one row each, as the scheduler lists them (the oldest ones; the
    rest in one row); then the done ones, one row per function and priority."""
    table = Table(title="jobs", title_justify="left")
    for column in ("job", "function", "priority", "done / total", "suspended", "failed"):
        table.add_column(column, overflow="fold")
    for j in snapshot["jobs"]:
        ended = j["finished"] + j["failed"] + j["cancelled"]
        if ended >= j["total"]:
            continue  # summed up below
        table.add_row(
            Text(j["job_id"]),
            Text(_short(j.get("function"))),
            j["priority"],
            f"{_count(ended)} / {_count(j['total'])} ({ended / max(1, j['total']):.0%})",
            str(j.get("suspended", 0)),
            Text(str(j["failed"]), style="red" if j["failed"] else ""),
        )
    more = snapshot.get("more_jobs", {})
    if more.get("jobs"):
        table.add_row(
            f"... {_count(more['jobs'])} more",
            "",
            "",
            f"{_count(more['ended'])} / {_count(more['total'])}",
            "",
            "",
        )
    for group in snapshot.get("done_jobs", []):
        jobs = group["jobs"]
        table.add_row(
            Text(f"{_count(jobs)} done job{'s' if jobs != 1 else ''}", style="dim"),
            Text(_short(group["function"])),
            group["priority"],
            f"{_count(group['tasks'])} / {_count(group['tasks'])}",
            "0",
            Text(str(group["failed"]), style="red" if group["failed"] else ""),
        )
    return table


def refused_table(snapshot: dict[str, Any]) -> Table | None:
    refused = snapshot.get("counters", {}).get("refused", {})
    if not refused:
        return None
    table = Table(title="refused policy decisions", title_justify="left")
    table.add_column("reason", overflow="fold")
    table.add_column("count", justify="right")
    for reason, count in sorted(refused.items(), key=lambda kv: -kv[1]):
        table.add_row(Text(reason), _count(count))
    return table


def render(snapshot: dict[str, Any], *, tasks: bool = False) -> RenderableType:
    """The whole view of `snapshot` (`tasks`: each executor's tasks by id too)."""
    parts: list[RenderableType] = [
        summary(snapshot),
        executors_table(snapshot, tasks),
        jobs_table(snapshot),
    ]
    refused = refused_table(snapshot)
    if refused is not None:
        parts.append(refused)
    for failure in snapshot.get("policy_failures", [])[-3:]:
        parts.append(Text(f"policy failure: {failure}", style="red"))
    return Group(*parts)
