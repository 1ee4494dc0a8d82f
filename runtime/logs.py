"""Logging a peer cannot flood: `RateLimitedLog`, a budget of lines per period.

What a peer's input makes a receiver log (a bad frame, a refused job or connection, a
message dropped for a peer that does not read) goes through one of these: at most `burst`
lines per `period_s`; the lines over budget are counted, and once the period is over one
line sums them up, by default `(N similar messages suppressed)`. So a peer that sends a
million bad frames costs a few lines per period. `PeerGuard` (runtime/guard.py) spends its
budget through one, and adds its own rule of one line per peer per period.

A period opens with the first call a full `period_s` after the last one opened. A period's
summary is logged by the first call after it is over: the next line, or `tick()` for an
owner that wants it on time (a count with no later call is never reported).

Discussion: it reads time only from its injected clock, so tests drive it with a fake one.
It takes a lock (uncontended, tens of nanoseconds): the executor calls its own from the task
thread and from the listener.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

__all__ = ["LogStatistics", "RateLimitedLog"]


def _similar_suppressed(suppressed: int, seconds: float) -> str:
    """The default summary of a period: how many lines it left out."""
    return f"({suppressed} similar messages suppressed)"


@dataclass(frozen=True, slots=True)
class LogStatistics:
    """What a rate-limited log has done since it was made."""

    lines_logged: int  # summaries included
    lines_suppressed: int  # over budget, or left out by the caller (`suppress`)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class RateLimitedLog:
    """Log at most `burst` lines per `period_s` to `log`; count the rest and sum them up.

    Lines go out at `level` unless a call names another; the summary of a period that left
    lines out is `summary(suppressed, seconds the period lasted)`, logged at `level`, and
    does not count against the next period's budget.
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        level: int = logging.WARNING,
        burst: int = 10,
        period_s: float = 10.0,
        summary: Callable[[int, float], str] = _similar_suppressed,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._level, self._summary, self._clock = log, level, summary, clock
        self.burst, self.period_s = burst, period_s
        self._period_start = -float("inf")
        self._period_lines = self._period_suppressed = 0
        self._logged = self._suppressed = 0
        self._lock = threading.Lock()

    def __call__(
        self, text: str, *, level: int | None = None, exc_info: BaseException | None = None
    ) -> bool:
        """Log `text` (with `exc_info`'s traceback, if given) unless this period's lines are
        used up; return whether it was logged."""
        with self._lock:
            self._roll(self._clock())
            if self._period_lines >= self.burst:
                self._suppressed += 1
                self._period_suppressed += 1
                return False
            self._period_lines += 1
            self._emit(self._level if level is None else level, text, exc_info)
            return True

    def would_log(self) -> bool:
        """Whether a line would go out now (so that a caller can skip formatting one that
        would not: call `suppress()` instead)."""
        with self._lock:
            self._roll(self._clock())
            return self._period_lines < self.burst

    def suppress(self) -> None:
        """Count one line its caller chose not to log, so that the period's summary counts it
        too (PeerGuard's line for a peer that had its line this period)."""
        with self._lock:
            self._roll(self._clock())
            self._suppressed += 1
            self._period_suppressed += 1

    def tick(self) -> None:
        """Close the period if it is over, logging its summary now rather than with the next
        line. Call it now and then (each loop turn is fine)."""
        with self._lock:
            self._roll(self._clock())

    def statistics(self) -> LogStatistics:
        return LogStatistics(lines_logged=self._logged, lines_suppressed=self._suppressed)

    def _roll(self, now: float) -> None:
        """Open a new period if this one is over, summing up what it left out."""
        if now - self._period_start < self.period_s:
            return
        if self._period_suppressed:
            summary = self._summary(self._period_suppressed, now - self._period_start)
            self._emit(self._level, summary, None)
        self._period_start = now
        self._period_lines = self._period_suppressed = 0

    def _emit(self, level: int, text: str, exc_info: BaseException | None) -> None:
        self._logged += 1
        self._log.log(level, "%s", text, exc_info=exc_info)


class CutLongLines(logging.Filter):
    """A handler filter that cuts every message to `max_chars` (a traceback stays whole).

    Discussion: peers' strings end up in log lines (their ids, reasons, the values a
    ProtocolError quotes); one line of 100,000 characters came from one client's id. The
    places that log them cut them too; this is the last guard, for the CLI's processes."""

    def __init__(self, max_chars: int = 500) -> None:
        super().__init__()
        self.max_chars = max_chars

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > self.max_chars:
            record.msg, record.args = f"{message[: self.max_chars - 9]}... (cut)", None
        return True
