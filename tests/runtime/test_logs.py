"""RateLimitedLog: a burst of lines per period, the rest counted and summed up. A fake clock,
and a logger of each test's own (not registered, so no global logging state is touched)."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from tidal.runtime.logs import CutLongLines, RateLimitedLog


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    """Keeps what is logged: the text, and the record for its level and traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def texts(self) -> list[str]:
        return [record.getMessage() for record in self.records]


def logger() -> tuple[logging.Logger, Lines]:
    log = logging.Logger("test.logs", logging.DEBUG)
    lines = Lines()
    log.addHandler(lines)
    return log, lines


def _limited(
    burst: int = 3, period_s: float = 10.0, **options
) -> tuple[RateLimitedLog, Lines, FakeClock]:
    log, lines = logger()
    clock = FakeClock(1000.0)
    limited = RateLimitedLog(log, burst=burst, period_s=period_s, clock=clock, **options)
    return limited, lines, clock


def test_rate_limited_log_logs_a_burst_then_suppresses():
    log, lines, _ = _limited(burst=3)
    assert [log(f"bad frame {i}") for i in range(5)] == [True, True, True, False, False]
    assert lines.texts == ["bad frame 0", "bad frame 1", "bad frame 2"]
    assert log.statistics().as_dict() == {"lines_logged": 3, "lines_suppressed": 2}


def test_rate_limited_log_reports_the_suppressed_count_when_the_window_rolls():
    log, lines, clock = _limited(burst=2, period_s=10.0)
    for i in range(5):
        log(f"early {i}")
    clock.now += 9.75  # still the same window (binary fractions: exact float sums)
    assert log("late in the window") is False
    assert lines.texts == ["early 0", "early 1"]
    clock.now += 0.25  # exactly one period after the window opened
    assert log("next window") is True
    assert lines.texts[2:] == ["(4 similar messages suppressed)", "next window"]
    # The new window has its own burst, and the summary line did not use any of it.
    assert log("second") is True
    assert log("third") is False


def test_rate_limited_log_says_nothing_extra_when_nothing_was_suppressed():
    log, lines, clock = _limited(burst=2)
    log("one")
    clock.now += 60
    log("two")
    log.tick()
    assert lines.texts == ["one", "two"]


def test_lines_go_out_at_the_log_level_or_the_one_a_call_names_with_its_traceback():
    log, lines, _ = _limited(level=logging.INFO)
    log("plain")
    try:
        raise KeyError("boom")
    except KeyError as exc:
        log("loud", level=logging.ERROR, exc_info=exc)
    plain, loud = lines.records
    assert (plain.levelno, plain.exc_info) == (logging.INFO, None)
    assert loud.levelno == logging.ERROR and loud.exc_info[1].args == ("boom",)


def test_a_custom_summary_counts_lines_the_caller_left_out_and_tick_logs_it_on_time():
    log, lines, clock = _limited(
        burst=1, period_s=5.0, summary=lambda n, seconds: f"{n} left out in {seconds:g} s"
    )
    log("first")
    log("over budget")
    log.suppress()  # the caller's own reason
    clock.now += 4.5
    log.tick()
    assert lines.texts == ["first"]  # the period is not over
    clock.now += 1.0
    log.tick()
    assert lines.texts == ["first", "2 left out in 5.5 s"]
    assert log.statistics().as_dict() == {"lines_logged": 2, "lines_suppressed": 2}


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    burst=st.integers(min_value=1, max_value=5),
    steps=st.lists(st.floats(min_value=0, max_value=7, allow_nan=False), max_size=60),
)
def test_rate_limited_log_accounts_for_every_message(burst, steps):
    log, lines, clock = _limited(burst=burst, period_s=5.0)
    calls = []  # (time, whether logged)
    for i, step in enumerate(steps):
        clock.now += step
        before = len(lines.texts)
        logged = log(f"m{i}")
        assert logged == (len(lines.texts) > before and lines.texts[-1] == f"m{i}")
        calls.append((clock.now, logged))
    clock.now += 5.0
    log.tick()  # rolls the window: whatever was suppressed is reported now
    texts = [line for line in lines.texts if line.startswith("m")]
    suppressed = sum(int(line[1:].split()[0]) for line in lines.texts if line.startswith("("))
    assert len(texts) == sum(logged for _, logged in calls)
    assert len(texts) + suppressed == len(steps)
    assert log.statistics().lines_suppressed == suppressed
    # A window opens with the first call a full period after the last window opened, and
    # lets at most `burst` messages through.
    window_start, count = -float("inf"), 0
    for at, logged in calls:
        if at - window_start >= 5.0:
            window_start, count = at, 0
            assert logged, "the first message of a window is always logged"
        count += logged
        assert count <= burst


def test_the_clis_log_lines_are_cut_at_500_characters():
    record = logging.LogRecord("t", logging.WARNING, "f", 1, "id %s", ("x" * 100_000,), None)
    assert CutLongLines().filter(record)
    assert len(record.getMessage()) == 500 and record.getMessage().endswith("... (cut)")
    short = logging.LogRecord("t", logging.WARNING, "f", 1, "id %s", ("x",), None)
    assert CutLongLines().filter(short) and short.getMessage() == "id x"
