"""`tidal.progress` (runtime/progress.py): the counts kept from the futures' callbacks, the
terminal bar, the notebook bar (against a stand-in of IPython's display API), and a real
client's futures against the fake scheduler.

Nothing here waits with sleeps: a test completes futures and waits for the bar's thread to
end (`ProgressBar.wait`), or starts completing them once the bar has drawn its first line.
"""

from __future__ import annotations

import concurrent.futures
import io
import sys
import threading
import time
import types

import pytest
from rich.console import Console

import tidal
from tests.runtime.test_bulk import batch, error, made
from tests.runtime.test_futures import STATS
from tidal.runtime import progress as progress_module
from tidal.runtime import protocol as p
from tidal.runtime.futures import BulkJob, MapFutures
from tidal.runtime.progress import (
    ProgressState,
    Tally,
    in_notebook,
    progress,
    progress_html,
    progress_text,
)
from tidal.workloads.synthetic import total

pytestmark = pytest.mark.usefixtures("no_thread_left_behind")


def futures(n: int) -> list[concurrent.futures.Future]:
    return [concurrent.futures.Future() for _ in range(n)]


def plain_console() -> tuple[Console, io.StringIO]:
    """A console that is no terminal: the bar prints its final line there, once."""
    out = io.StringIO()
    return Console(file=out, width=160, color_system=None), out


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ---- the counts ---------------------------------------------------------------------------------


def test_the_tally_counts_outcomes_failures_and_cancels_from_the_callbacks():
    clock = FakeClock()
    tally = Tally("work", clock)
    fs = futures(5)
    fs[0].set_result(1)  # done before the bar: counted, but not in the rate
    tally.watch(fs, [])
    state = tally.state()
    assert (state.total, state.done, state.failed, state.done_since_start) == (5, 1, 0, 0)
    assert state.rate is None and state.eta_s is None and not state.complete

    clock.now += 2.0
    fs[1].set_result(2)
    fs[2].set_exception(ValueError("bad record"))
    state = tally.state()
    assert (state.done, state.failed, state.elapsed_s) == (3, 1, 2.0)
    assert state.rate == 1.0 and state.eta_s == 2.0  # 2 done in 2 s; 2 left

    fs[3].cancel()
    fs[4].set_result(4)
    state = tally.state()
    assert (state.done, state.failed) == (5, 2) and state.complete and state.eta_s == 0.0
    clock.now += 60.0  # the clock stopped at the last outcome: the figures stand
    assert tally.state() == state


def test_the_figures_say_done_total_failed_rate_elapsed_and_eta():
    state = ProgressState("work", 10, 7, 1, 3.5, 7)
    assert progress_text(state) == "7/10 done, 1 failed, 2.0 tasks/s, elapsed 0:00:03, ETA 0:00:01"
    # Nothing done yet: no rate, no estimate; the clock counts hours.
    assert progress_text(ProgressState("w", 4_000, 0, 0, 3725.0, 0)) == (
        "0/4,000 done, 0 failed, - tasks/s, elapsed 1:02:05, ETA -:--:--"
    )


def test_the_html_bar_shows_failures_in_red_and_escapes_the_name():
    state = ProgressState("<script>alert(1)</script>", 200, 100, 1, 2.0, 100)
    page = progress_html(state)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # 99 of 200 finished, 1 failed: the failure is given 1% of the bar, so that it shows.
    assert "width:49.00%;background:#1e8e3e" in page
    assert "width:1.00%;background:#d93025" in page
    assert '<span style="color:#d93025;font-weight:600">1 failed</span>' in page
    assert "100/200 done" in page


# ---- the terminal bar ----------------------------------------------------------------------------


class FirstWrite(io.StringIO):
    """A terminal's output that says when the bar drew its first line."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn = threading.Event()

    def write(self, text: str) -> int:
        self.drawn.set()
        return super().write(text)


def test_a_blocking_bar_draws_until_the_last_future_is_done_and_shows_the_failure():
    fs = futures(3)
    out = FirstWrite()
    console = Console(file=out, width=160, force_terminal=True, color_system=None)

    def complete_once_drawn():
        out.drawn.wait(10)
        fs[0].set_result(0)
        fs[1].set_exception(KeyError("k"))
        fs[2].set_result(2)

    helper = threading.Thread(target=complete_once_drawn)
    helper.start()
    try:
        assert progress(fs, notebook=False, console=console) is None  # blocks, then returns
    finally:
        helper.join()
    assert all(f.done() for f in fs)
    final = out.getvalue().rstrip().rsplit("\r", 1)[-1]  # the last redraw of the line
    assert "3/3 done, 1 failed" in final and "ETA 0:00:00" in final


def test_futures_already_done_print_one_final_line_on_a_plain_console():
    fs = futures(2)
    fs[0].set_result(1)
    fs[1].cancel()
    console, out = plain_console()
    progress(fs, notebook=False, console=console, name="two")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("two ━")
    assert "2/2 done, 1 failed" in lines[0]
    assert out.getvalue().endswith("\n")  # what is printed next starts a line of its own


def test_one_failure_among_many_still_shows_red_in_the_terminal_bar():
    fs = futures(1_000)
    fs[0].set_exception(ValueError("the one"))
    for f in fs[1:]:
        f.set_result(None)
    out = io.StringIO()
    console = Console(file=out, width=160, force_terminal=True, color_system="standard")
    progress(fs, notebook=False, console=console)
    red_bar = "\x1b[31m━\x1b[0m"  # one character of the bar, red, between green and grey
    assert red_bar in out.getvalue() and "1,000/1,000 done" in out.getvalue()


def test_nothing_to_wait_for_is_done_at_once():
    console, out = plain_console()
    progress([], notebook=False, console=console)
    assert "0/0 done, 0 failed" in out.getvalue()


def test_a_bar_that_does_not_block_runs_on_its_own_thread_until_stopped():
    fs = futures(3)
    console, out = plain_console()
    bar = progress(fs, notebook=False, block=False, console=console)
    fs[0].set_result(0)
    assert not bar.wait(timeout=0)  # two to go
    bar.stop()
    assert bar.wait(timeout=0) and bar.state().done == 1
    assert "1/3 done" in out.getvalue()
    assert repr(bar) == "<ProgressBar tasks: 1/3 done, 0 failed>"


def test_a_flood_of_results_is_drawn_a_bounded_number_of_times():
    draws = []

    class CountingBar:
        def start(self, state):
            draws.append(state)

        draw = close = start

    fs = futures(10_000)
    tally = Tally("flood")
    tally.watch(fs, [])
    drawer = threading.Thread(target=progress_module._draw_until_over, args=(tally, CountingBar()))
    began = time.monotonic()
    drawer.start()
    for f in fs:
        f.set_result(None)
    drawer.join(10)
    elapsed = time.monotonic() - began
    assert draws[-1].done == 10_000 and draws[-1].complete
    # start, close, and at most one draw per 1/REFRESH_PER_S in between.
    assert len(draws) <= 3 + elapsed * progress_module.REFRESH_PER_S


def test_what_is_not_a_future_is_refused_by_name():
    with pytest.raises(TypeError, match="not int"):
        progress(42, notebook=False)
    with pytest.raises(TypeError, match="got a str"):
        progress([concurrent.futures.Future(), "f"], notebook=False)


# ---- a map, followed whole ----------------------------------------------------------------------


def map_of(size: int, function: str | None = "mymod:word_count") -> tuple[BulkJob, MapFutures]:
    job = BulkJob("c-1", size, 0, function=function)
    return job, MapFutures(job)


def test_a_map_is_followed_whole_making_none_of_its_futures():
    job, mapped = map_of(6)
    console, out = plain_console()
    bar = progress(mapped, notebook=False, block=False, console=console)
    job.finish(0, [0, 1, 2], STATS)
    job.complete(3, "failed", ValueError("bad"), {})
    assert not bar.wait(timeout=0)
    assert (bar.state().done, bar.state().failed) == (4, 1)
    job.finish(4, [4, 5], STATS)
    assert bar.wait(timeout=10)
    assert made(mapped) == 0 and job._watchers == []  # no future made; the bar let go
    assert "word_count ━" in out.getvalue() and "6/6 done, 1 failed" in out.getvalue()


def test_a_map_whose_connection_is_lost_counts_what_was_left_as_failed():
    job, mapped = map_of(4)
    job.finish(0, [0], STATS)
    bar = progress(mapped, notebook=False, block=False, console=plain_console()[0])
    job.fail(lambda what: ConnectionError(f"lost before {what}"))
    assert bar.wait(timeout=10) and (bar.state().done, bar.state().failed) == (4, 3)


def test_a_map_counts_once_with_its_own_futures_and_others_beside_it():
    job, mapped = map_of(3)
    other = concurrent.futures.Future()
    bar = progress(
        [mapped, mapped[0], other], notebook=False, block=False, console=plain_console()[0]
    )
    assert bar.state().total == 4
    job.finish(0, [0, 1, 2], STATS)
    other.set_result(None)
    assert bar.wait(timeout=10) and bar.state().done == 4


def test_a_progress_callback_that_raises_is_dropped_and_the_map_goes_on(caplog):
    job, mapped = map_of(2)
    calls = []

    def broken():
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("oops")

    mapped.add_progress_callback(broken)  # once now: fine
    job.finish(0, [0], STATS)  # raises: logged, dropped
    job.finish(1, [1], STATS)
    assert len(calls) == 2 and job.done() and "progress callback" in caplog.text


# ---- the notebook bar ---------------------------------------------------------------------------


class FakeDisplay:
    """IPython's display API, as the bar uses it: `display(obj, display_id=True)` returns a
    handle whose `update(obj)` replaces what it showed."""

    def __init__(self) -> None:
        self.shown: list[tuple[object, object]] = []  # (obj, display_id)
        self.updates: list[str] = []

    def display(self, obj, display_id=None):
        self.shown.append((obj, display_id))
        return types.SimpleNamespace(update=lambda new: self.updates.append(new._repr_html_()))


@pytest.fixture
def ipython(monkeypatch):
    """A stand-in IPython, in a kernel: `IPython.get_ipython().kernel` is set, and
    `IPython.display.display` is a FakeDisplay's."""
    fake = FakeDisplay()
    shell = types.SimpleNamespace(kernel=object())
    module = types.ModuleType("IPython")
    module.get_ipython = lambda: shell
    display_module = types.ModuleType("IPython.display")
    display_module.display = fake.display
    module.display = display_module
    monkeypatch.setitem(sys.modules, "IPython", module)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    fake.shell = shell
    return fake


def test_in_a_notebook_one_html_bar_is_displayed_and_updated_in_place(ipython):
    fs = futures(2)
    bar = progress(fs, block=False)  # notebook=None: the kernel is found
    fs[0].set_result(0)
    fs[1].set_exception(TypeError("no"))
    assert bar.wait(timeout=10)
    [(first, display_id)] = ipython.shown
    assert display_id is True  # one display, its handle updated from then on
    assert "/2 done" in first._repr_html_() and repr(first).startswith("tasks: ")
    assert "2/2 done" in ipython.updates[-1]
    assert '<span style="color:#d93025;font-weight:600">1 failed</span>' in ipython.updates[-1]


def test_a_blocking_notebook_bar_returns_with_the_final_state_shown(ipython):
    fs = futures(1)
    fs[0].set_result(1)
    assert progress(fs, notebook=True, name="<one>") is None
    assert len(ipython.shown) == 1 and "&lt;one&gt;" in ipython.updates[-1]
    assert "1/1 done" in ipython.updates[-1]


def test_the_notebook_is_found_only_in_a_kernel(ipython, monkeypatch):
    assert in_notebook()
    ipython.shell.kernel = None  # IPython in a terminal: no kernel
    assert not in_notebook()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not in_notebook()


def test_a_notebook_bar_without_ipython_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "IPython.display", None)  # as if it were not installed
    with pytest.raises(RuntimeError, match="pip install ipython"):
        progress([], notebook=True)


# ---- a client's futures -------------------------------------------------------------------------


def test_a_clients_submits_and_bulk_map_are_followed_to_the_end(fake, client):
    one = client.submit(total, [1, 2])
    mapped = client.map(total, [[i] for i in range(4)], chunksize=2)
    fake.wait_for(p.Submit, 2)
    assert type(mapped) is MapFutures and mapped.function == one.function
    bar = tidal.progress([one, mapped], notebook=False, block=False, console=plain_console()[0])
    assert bar.state().total == 5 and bar.state().name == "total"
    fake.finish(one, 3)
    fake.push(batch(mapped, 0, [0, None, 2, 3], errors=[error(1, "ValueError", "odd")]))
    assert bar.wait(timeout=10)
    assert (bar.state().done, bar.state().failed) == (5, 1)
