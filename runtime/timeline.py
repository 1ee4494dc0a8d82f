"""Draw a scheduling event log as a timeline: per executor, when each task ran, when it sat
suspended, and how each stretch ended.

`segments(events)` reads a log (the records of scheduler/eventlog.py, e.g. from
`read_events`) into stretches per executor; it is pure, and the tests check it on hand-made
logs. `plot_timeline(events, path)` draws them as a PNG with matplotlib, imported only there
(`pip install "tidal[demo]"` installs it). `tidal timeline LOG` is the command line for both.

A running stretch is what the executors reported: from `started` or `resumed` to
`suspended`, `finished`, `failed` or `killed` (or to `executor_lost`, or the log's end). A
suspended stretch runs from `suspended` to the task's next `resumed` (or `started`: a task
suspended before it ever ran reports its first start then), `killed`, `executor_lost` or the
log's end. Times are the scheduler's clock when the report arrived, not the executor's.
A chunk is one task here: its own stretches, under its chunk id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PlottingUnavailable", "Segment", "new_figure", "plot_timeline", "segments"]

# How a running stretch ended; "running": still running when the log ends.
RUN_ENDINGS = ("suspended", "finished", "failed", "killed", "lost", "running")
# How a suspended stretch ended; "suspended": still suspended when the log ends.
PARK_ENDINGS = ("resumed", "killed", "lost", "suspended")


@dataclass(frozen=True, slots=True)
class Segment:
    """One stretch of one task on one executor; times in seconds of the log's clock."""

    task: str
    job: str | None
    priority: str | None  # "stream", "batch", or None if the log never said
    start: float
    end: float
    ended: str  # RUN_ENDINGS for a running stretch, PARK_ENDINGS for a suspended one
    suspended: bool = False  # True: the task sat suspended (its state parked), not running


def segments(events: Iterable[dict[str, Any]]) -> dict[str, list[Segment]]:
    """Each executor's stretches, in start order; executors in the order the log names them."""
    events = list(events)
    about: dict[str, tuple[str | None, str | None]] = {}  # task -> (job, priority)
    running: dict[tuple[str, str], float] = {}  # (executor, task) -> start
    parked: dict[tuple[str, str], float] = {}
    rows: dict[str, list[Segment]] = {}

    def close(stretches: dict[tuple[str, str], float], key: tuple[str, str], end: float, how: str):
        start = stretches.pop(key)
        job, priority = about.get(key[1], (None, None))
        rows[key[0]].append(
            Segment(key[1], job, priority, start, end, how, suspended=stretches is parked)
        )

    for event in events:
        name, t = event["event"], event["t"]
        executor = event.get("executor")
        if name == "executor_joined":
            rows.setdefault(executor, [])
            continue
        if name in ("launch", "started") and event.get("priority") is not None:
            about.setdefault(event["task"], (event.get("job"), event["priority"]))
        if name == "executor_lost":
            for stretches in (running, parked):
                for key in [k for k in stretches if k[0] == executor]:
                    close(stretches, key, t, "lost")
            continue
        if name not in ("started", "resumed", "suspended", "finished", "failed", "killed"):
            continue
        rows.setdefault(executor, [])
        key = (executor, event["task"])
        if name in ("started", "resumed"):
            if key in parked:
                close(parked, key, t, "resumed")
            running.setdefault(key, t)  # a duplicate start does not restart the stretch
            continue
        if key in running:
            close(running, key, t, name)
        if name == "suspended":
            parked.setdefault(key, t)
        elif name == "killed" and key in parked:
            close(parked, key, t, "killed")
    end = max((event["t"] for event in events), default=0.0)
    for key in list(running):
        close(running, key, end, "running")
    for key in list(parked):
        close(parked, key, end, "suspended")
    for stretches in rows.values():
        stretches.sort(key=lambda s: (s.start, s.suspended, s.task))
    return rows


# ---- drawing ----------------------------------------------------------------------------------

COLOURS = {"stream": "#e8710a", "batch": "#1a73e8", None: "#80868b"}
# Batch bars alternate with this lighter shade task by task, so that one task's stretches
# between suspensions read as one task and the next task as another.
BATCH_SHADE = "#6ea2f0"
PARKED_COLOUR = "#bdc1c6"
# Discussion: a 2 ms stream task on a 30 s axis is a twentieth of a pixel; every bar is
# drawn at least this share of the axis wide, so each one shows (500 of them merge into a
# band where they come thick and fast, which is what happened).
MIN_WIDTH_SHARE = 0.001
# A running bar at least this share of the axis wide gets its task id written in it.
LABEL_WIDTH_SHARE = 0.06


class PlottingUnavailable(RuntimeError):
    """matplotlib is not installed; the message says how to install it."""


def new_figure(**options: Any) -> Any:
    """A matplotlib Figure on its own Agg canvas (`options` as for Figure), or
    PlottingUnavailable saying how to install matplotlib.

    Discussion: the Agg canvas directly, not pyplot: drawing switches no global backend in
    the caller's process and leaves no figure registered there."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlottingUnavailable(
            'plots need matplotlib: pip install "tidal[demo]" installs it'
        ) from None
    figure = Figure(**options)
    FigureCanvasAgg(figure)
    return figure


def plot_timeline(
    events: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str | None = None
) -> str:
    """Draw `events` (an event log's records) as a PNG at `path`; return the path.

    One row per executor: stream tasks in the row's upper band, batch tasks (and chunks) in
    the middle band, the time a task sat suspended as a hatched grey bar in the lower band,
    and kills as red crosses. The x axis is seconds from the log's first event.
    """
    rows = segments(events)
    figure = new_figure(figsize=(12, 1.6 + 0.9 * max(1, len(rows))), dpi=150)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    path = os.fspath(path)
    origin = min((event["t"] for event in events), default=0.0)
    span = max((event["t"] for event in events), default=0.0) - origin or 1.0
    min_width = span * MIN_WIDTH_SHARE
    axes = figure.add_subplot()
    names = list(rows)
    counts = {"tasks": set(), "suspensions": 0, "kills": 0}
    for index, executor in enumerate(names):
        y = len(names) - 1 - index  # the first executor on top
        bands: dict[str, list[tuple[float, float]]] = {
            "stream": [],
            "batch": [],
            "shade": [],
            "unknown": [],
            "parked": [],
        }
        batch_tasks: dict[str, int] = {}  # task -> its place among this row's batch tasks
        kills: list[float] = []
        for segment in rows[executor]:
            start = segment.start - origin
            bar = (start, max(segment.end - segment.start, min_width))
            counts["tasks"].add(segment.task)
            if segment.ended == "killed":
                kills.append(segment.end - origin)
            if segment.suspended:
                bands["parked"].append(bar)
                counts["suspensions"] += 1
                continue
            if segment.priority == "stream":
                bands["stream"].append(bar)
            elif segment.priority == "batch":
                place = batch_tasks.setdefault(segment.task, len(batch_tasks))
                bands["shade" if place % 2 else "batch"].append(bar)
            else:
                bands["unknown"].append(bar)
            if segment.priority != "stream" and bar[1] >= span * LABEL_WIDTH_SHARE:
                axes.text(
                    start + bar[1] / 2,
                    y - 0.07,
                    segment.task,
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white",
                    clip_on=True,
                )
        # Stream bars have no edge (a thin bar would be all edge); batch bars a white one,
        # so that stretches run back to back stay apart.
        axes.broken_barh(bands["stream"], (y + 0.12, 0.3), facecolors=COLOURS["stream"])
        for band, colour in (
            ("batch", COLOURS["batch"]),
            ("shade", BATCH_SHADE),
            ("unknown", COLOURS[None]),
        ):
            axes.broken_barh(
                bands[band], (y - 0.22, 0.3), facecolors=colour, edgecolor="white", lw=0.4
            )
        axes.broken_barh(
            bands["parked"],
            (y - 0.42, 0.14),
            facecolors=PARKED_COLOUR,
            edgecolor="#5f6368",
            hatch="////",
            lw=0.3,
        )
        if kills:
            axes.scatter(kills, [y - 0.07] * len(kills), marker="x", color="#d93025", zorder=3)
            counts["kills"] += len(kills)

    axes.set_yticks(range(len(names)), list(reversed(names)))
    axes.set_ylim(-0.6, max(1, len(names)) - 0.4)
    axes.set_xlim(0, span * 1.01)
    axes.set_xlabel("seconds from the first event")
    axes.grid(axis="x", alpha=0.3)
    if not names:
        axes.text(0.5, 0.5, "no executor in this log", ha="center", transform=axes.transAxes)
    axes.set_title(
        f"{title or _default_title(events)}\n{len(counts['tasks'])} tasks or chunks, "
        f"{counts['suspensions']} suspensions, {counts['kills']} kills",
        fontsize=10,
    )
    axes.legend(
        handles=[
            Patch(color=COLOURS["stream"], label="stream task running"),
            Patch(color=COLOURS["batch"], label="batch task (or chunk) running"),
            Patch(facecolor=PARKED_COLOUR, edgecolor="#5f6368", hatch="////", label="suspended"),
            Line2D([], [], marker="x", color="#d93025", linestyle="none", label="killed"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18 if len(names) > 1 else -0.35),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    figure.tight_layout()
    figure.savefig(path)
    return path


def _default_title(events: Sequence[dict[str, Any]]) -> str:
    """'Tidal timeline: policy lb' (policies in the order the log used them)."""
    policies: list[str] = []
    for event in events:
        policy = event.get("policy") if event["event"] in ("log_started", "policy") else None
        if policy is not None and (not policies or policies[-1] != str(policy)):
            policies.append(str(policy))
    if not policies:
        return "Tidal timeline"
    return f"Tidal timeline: policy {' -> '.join(policies)}"
