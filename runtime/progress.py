"""`tidal.progress(futures)`: a progress bar over futures, in a terminal or in a notebook.

    futures = client.map(word_count, partitions)
    tidal.progress(futures)  # draws the bar, returns once every task is done

The bar shows how many tasks are done of how many, how many of those failed (or were
cancelled), the rate since the bar started, the time elapsed and an estimate of the time
left. In a terminal it is drawn with rich; in a Jupyter kernel it is an HTML bar updated in
place (IPython's `display(..., display_id=True)` and the handle's `update`). `progress`
takes one future, a list (or any iterable) of them, or what `Client.map` returns, a
MapFutures too.

Threads and why. The bar learns of outcomes from the futures themselves: each TaskFuture's
done callback, and for a whole MapFutures its progress callback, which runs once per batch
of results and makes no future per task. Those callbacks run on the client's IO thread, so
they only count, under one lock (`Tally`), and wake the drawer. The drawer is the thread
that called `progress` (or, with `block=False`, a thread of the bar's own): it waits for a
change, draws, and then waits at least 1/REFRESH_PER_S before drawing again, so a flood of
results costs a few draws a second. While nothing changes it draws every TICK_S, to move the
elapsed time on. Nothing sleeps to wait for an outcome: the last one wakes the drawer.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import html
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tidal.runtime.functions import short_name
from tidal.runtime.futures import MapFutures

__all__ = ["ProgressBar", "ProgressState", "in_notebook", "progress", "progress_html"]

# At most this many draws a second, however fast results come.
REFRESH_PER_S = 10
# With no result coming, the bar is drawn again this often (the elapsed time moves on).
TICK_S = 1.0
# Characters of the terminal bar: at most this many, fewer if the line would not fit.
BAR_WIDTH = 40
MIN_BAR_WIDTH = 10

GREEN, RED, GREY = "#1e8e3e", "#d93025", "#dadce0"


@dataclasses.dataclass(frozen=True, slots=True)
class ProgressState:
    """Where a bar stands. `failed` counts failed and cancelled tasks, and is part of `done`."""

    name: str
    total: int
    done: int
    failed: int
    elapsed_s: float
    done_since_start: int  # done while the bar ran (those done before do not make the rate)

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    @property
    def rate(self) -> float | None:
        """Tasks done per second since the bar started; None until one is done."""
        if self.elapsed_s <= 0 or self.done_since_start == 0:
            return None
        return self.done_since_start / self.elapsed_s

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate; 0 once complete, None while it cannot be told."""
        if self.complete:
            return 0.0
        rate = self.rate
        return None if not rate else (self.total - self.done) / rate


class Tally:
    """The counts of the futures watched: kept by their callbacks (on any thread), read by
    the drawer, who waits on it for a change. `clock` is for tests (a fake one)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.total = 0
        self._clock = clock
        self._changed = threading.Condition()
        self._done = self._failed = self._baseline = 0
        self._version = 0  # raised at each change, so a waiter knows what it has seen
        self._stopped = False
        self._maps: dict[MapFutures, tuple[int, int]] = {}  # the counts each map last said
        self._map_callbacks: list[tuple[MapFutures, Callable[[], None]]] = []
        self._started = clock()
        self._ended: float | None = None  # when the last was done (or the bar stopped)

    def watch(self, futures: list[concurrent.futures.Future], maps: list[MapFutures]) -> None:
        """Count these futures' outcomes from now on (those done already count at once)."""
        self.total = len(futures) + sum(len(m) for m in maps)
        for future in futures:
            future.add_done_callback(self._future_done)
        for futures_of_map in maps:
            callback = functools.partial(self._map_progressed, futures_of_map)
            self._map_callbacks.append((futures_of_map, callback))
            futures_of_map.add_progress_callback(callback)
        with self._changed:
            self._baseline = self._done
            self._started = self._clock()
            self._ended = self._started if self._done >= self.total else None

    def unwatch(self) -> None:
        """Stop listening to the maps (a TaskFuture's done callback cannot be taken back;
        it only counts)."""
        for futures_of_map, callback in self._map_callbacks:
            futures_of_map.remove_progress_callback(callback)
        self._map_callbacks = []

    def state(self) -> ProgressState:
        with self._changed:
            done, failed, baseline, ended = self._done, self._failed, self._baseline, self._ended
        elapsed = (self._clock() if ended is None else ended) - self._started
        return ProgressState(self.name, self.total, done, failed, elapsed, done - baseline)

    def wait_for_change(self, seen: int, timeout: float | None) -> int:
        """Return the version once it is not `seen` (or the bar is stopped, or `timeout`
        seconds passed); the version says what the caller has now seen."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen or self._stopped, timeout)
            return self._version

    def wait_until_over(self, timeout: float | None) -> bool:
        """True once every future is done or the bar is stopped; False after `timeout`."""
        with self._changed:
            return self._changed.wait_for(self._over, timeout)

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed_now()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def _over(self) -> bool:
        return self._stopped or self._done >= self.total

    # ---- the futures' callbacks (the client's IO thread, or any) -----------------------------

    def _future_done(self, future: concurrent.futures.Future) -> None:
        failed = future.cancelled() or future.exception() is not None
        with self._changed:
            self._done += 1
            self._failed += failed
            self._changed_now()

    def _map_progressed(self, futures_of_map: MapFutures) -> None:
        # Discussion: counts() is read under this lock, so two threads reporting on one map
        # (the IO thread and a fetch thread) apply their differences one after the other.
        with self._changed:
            done, failed = futures_of_map.counts()
            seen_done, seen_failed = self._maps.get(futures_of_map, (0, 0))
            self._maps[futures_of_map] = (done, failed)
            self._done += done - seen_done
            self._failed += failed - seen_failed
            self._changed_now()

    def _changed_now(self) -> None:
        """Wake the drawer (the lock held); the clock stops at the last outcome or a stop."""
        self._version += 1
        if self._ended is None and (self._stopped or self._done >= self.total):
            self._ended = self._clock()
        self._changed.notify_all()


# ---- drawing -----------------------------------------------------------------------------------


def _clock_text(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _widths(state: ProgressState, width: float) -> tuple[float, float]:
    """How much of `width` the finished and the failed tasks take (a failure always shows)."""
    if state.total <= 0:
        return 0.0, 0.0
    failed = width * state.failed / state.total
    if state.failed:
        failed = max(failed, 1.0)  # one unit at least (a character, a percent)
    done = max(width * state.done / state.total, failed)
    return done - failed, failed


def progress_text(state: ProgressState) -> str:
    """The bar's figures on one line: "7/10 done, 1 failed, 3.5 tasks/s, elapsed ..."."""
    rate = "-" if state.rate is None else f"{state.rate:,.1f}"
    return (
        f"{state.done:,}/{state.total:,} done, {state.failed:,} failed, {rate} tasks/s, "
        f"elapsed {_clock_text(state.elapsed_s)}, ETA {_clock_text(state.eta_s)}"
    )


def progress_html(state: ProgressState) -> str:
    """The bar as HTML (what a notebook shows): the name, a bar whose finished share is
    green and failed share red, and the figures."""
    finished, failed = _widths(state, 100.0)
    failures = f'<span style="color:{RED};font-weight:600">{state.failed:,} failed</span>'
    figures = html.escape(progress_text(state)).replace(f"{state.failed:,} failed", failures, 1)
    return (
        '<div class="tidal-progress" style="font-size:13px;max-width:640px">'
        f'<div style="font-weight:600">{html.escape(state.name)}</div>'
        f'<div style="display:flex;height:14px;background:{GREY};border-radius:3px;'
        'overflow:hidden;margin:2px 0">'
        f'<div style="width:{finished:.2f}%;background:{GREEN}"></div>'
        f'<div style="width:{failed:.2f}%;background:{RED}"></div></div>'
        f"<div>{figures}</div></div>"
    )


def _rich_line(state: ProgressState, columns: int) -> Any:
    """The bar as a rich Text, on one line of `columns` if it fits: name, bar (finished
    green, failed red), figures."""
    from rich.text import Text

    figures = progress_text(state)
    room = columns - len(state.name) - len(figures) - 2
    width = max(MIN_BAR_WIDTH, min(BAR_WIDTH, room))
    finished, failed = (round(w) for w in _widths(state, width))
    line = Text()
    line.append(f"{state.name} ", style="bold")
    line.append("━" * finished, style="green")
    line.append("━" * failed, style="red")
    line.append("━" * max(0, width - finished - failed), style="grey30")
    before, _, after = figures.partition(f"{state.failed:,} failed")
    line.append(f" {before}")
    line.append(f"{state.failed:,} failed", style="bold red" if state.failed else "")
    line.append(after)
    return line


class _Html:
    """What a notebook displays: HTML, with the figures as text for other frontends."""

    def __init__(self, state: ProgressState) -> None:
        self._state = state

    def _repr_html_(self) -> str:
        return progress_html(self._state)

    def __repr__(self) -> str:
        return f"{self._state.name}: {progress_text(self._state)}"


class _NotebookBar:
    """An HTML bar in a notebook, updated in place through its display handle. `display`
    is IPython's (`display(obj, display_id=True)` returns a handle with `update(obj)`)."""

    def __init__(self, display: Callable[..., Any]) -> None:
        self._display = display
        self._handle: Any = None

    def start(self, state: ProgressState) -> None:
        self._handle = self._display(_Html(state), display_id=True)

    def draw(self, state: ProgressState) -> None:
        self._handle.update(_Html(state))

    def close(self, state: ProgressState) -> None:
        if self._handle is not None:  # else display() itself failed
            self.draw(state)


class _TerminalBar:
    """A rich Live line, drawn when asked (never by a thread of rich's own); on a console
    that is no terminal (a file, CI logs), only the final state is printed, once."""

    def __init__(self, console: Any) -> None:
        from rich.live import Live

        self._live = Live(console=console, auto_refresh=False, transient=False)

    def start(self, state: ProgressState) -> None:
        self._live.update(self._line(state))
        self._live.start()

    def draw(self, state: ProgressState) -> None:
        self._live.update(self._line(state), refresh=True)

    def close(self, state: ProgressState) -> None:
        self._live.update(self._line(state))
        self._live.stop()  # draws it a last time
        console = self._live.console
        if not console.is_terminal:  # rich ends the line only on a terminal
            console.line()

    def _line(self, state: ProgressState) -> Any:
        return _rich_line(state, self._live.console.width)


def _draw_until_over(tally: Tally, bar: Any) -> None:
    """Draw `bar` as the tally changes until every future is done or the bar is stopped."""
    try:
        bar.start(tally.state())
        seen = -1
        while True:
            seen = tally.wait_for_change(seen, TICK_S)
            if tally.wait_until_over(0):
                return
            bar.draw(tally.state())
            # At most REFRESH_PER_S draws a second; the last outcome (or stop) cuts it short.
            tally.wait_until_over(1 / REFRESH_PER_S)
    finally:
        tally.unwatch()
        bar.close(tally.state())


# ---- the public face ---------------------------------------------------------------------------


class ProgressBar:
    """A bar drawn by a thread of its own (`progress(..., block=False)` returns it)."""

    def __init__(self, tally: Tally, bar: Any) -> None:
        self._tally = tally
        self._thread = threading.Thread(
            target=_draw_until_over, args=(tally, bar), name="tidal-progress", daemon=True
        )
        self._thread.start()

    def state(self) -> ProgressState:
        """Where the bar stands now."""
        return self._tally.state()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every future is done and the bar is drawn a last time; False if
        `timeout` seconds pass first."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop drawing now (the futures go on); the bar shows where it stopped."""
        self._tally.stop()
        self._thread.join()

    def __repr__(self) -> str:
        state = self.state()
        return f"<ProgressBar {state.name}: {state.done}/{state.total} done, {state.failed} failed>"


def in_notebook() -> bool:
    """True inside a Jupyter kernel. IPython is not imported for it: in a kernel it is
    already."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return getattr(shell, "kernel", None) is not None


def progress(
    futures: Any,
    *,
    notebook: bool | None = None,
    block: bool = True,
    name: str | None = None,
    console: Any = None,
) -> ProgressBar | None:
    """Show a progress bar over `futures` until all of them are done.

    `futures`: one future, an iterable of futures (a dict's values are taken), or a
    MapFutures (followed as a whole, making no future per task). A failed or cancelled task
    counts as done and failed. `notebook`: an HTML bar in a Jupyter notebook (True), a
    terminal bar drawn with rich (False), or whichever fits where it runs (None). `block`:
    return once all are done (True), or at once, with a ProgressBar drawn by its own thread
    (False). `name` labels the bar (default: the tasks' function if they share one);
    `console`, a rich Console for the terminal bar (default: standard error's).
    """
    singles, maps = _sources(futures)
    tally = Tally(name or _default_name(singles, maps))
    if notebook is None:
        notebook = in_notebook()
    if notebook:
        bar: Any = _NotebookBar(_ipython_display())
    else:
        from rich.console import Console

        bar = _TerminalBar(console if console is not None else Console(stderr=True))
    tally.watch(singles, maps)
    if not block:
        return ProgressBar(tally, bar)
    _draw_until_over(tally, bar)
    return None


def _sources(futures: Any) -> tuple[list[concurrent.futures.Future], list[MapFutures]]:
    """The futures to watch one by one, and the maps to watch whole (each once)."""
    if isinstance(futures, concurrent.futures.Future):
        return [futures], []
    if isinstance(futures, MapFutures):
        return [], [futures]
    if isinstance(futures, Mapping):
        futures = futures.values()
    if not isinstance(futures, Iterable) or isinstance(futures, str | bytes):
        raise TypeError(
            "progress() takes a future, an iterable of futures or what Client.map returns, "
            f"not {type(futures).__name__}"
        )
    singles: dict[concurrent.futures.Future, None] = {}
    maps: dict[MapFutures, None] = {}
    for item in futures:
        if isinstance(item, MapFutures):
            maps[item] = None
        elif isinstance(item, concurrent.futures.Future):
            singles[item] = None
        else:
            raise TypeError(f"progress() takes futures, and got a {type(item).__name__}")
    # A future of a map that is watched whole counts once, with its map.
    whole = {m.job_id for m in maps}
    return [f for f in singles if getattr(f, "job_id", None) not in whole], list(maps)


def _default_name(singles: list[concurrent.futures.Future], maps: list[MapFutures]) -> str:
    """The tasks' function ("word_count" of "module:word_count") if they share one."""
    functions = {getattr(f, "function", None) for f in singles} | {m.function for m in maps}
    if len(functions) == 1 and (function := functions.pop()):
        return short_name(function)
    return "tasks"


def _ipython_display() -> Callable[..., Any]:
    try:
        from IPython.display import display
    except ImportError:
        raise RuntimeError(
            "progress(notebook=True) draws with IPython's display, and IPython is not "
            "installed: pip install ipython (or pass notebook=False)"
        ) from None
    return display
