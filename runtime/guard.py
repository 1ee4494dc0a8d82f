"""Bad input from peers: count it, log a little of it, and say when a peer must go.

A receiver (the scheduler, an executor) hands every frame it cannot use to a `PeerGuard`,
with the peer it came from (a ZeroMQ routing id, or one fixed key for an executor's one
scheduler). The guard:

* counts bad frames per peer, and tells the receiver when a peer has sent `limit` of them
  within `window_s`: the receiver then disconnects it (what that means is the receiver's
  business; the scheduler's is in scheduler/server.py and docs/protocol.md);
* remembers disconnected peers for `cooldown_s`, so that the receiver can ignore their
  frames with one dict lookup, without decoding them;
* logs at most one line per peer per `log_period_s`, and at most `lines_per_period` lines
  in all per period (a `RateLimitedLog`, runtime/logs.py); what it did not log it counts,
  and `tick()` logs the summary ("suppressed N lines about bad input from M peers ...")
  once the period is over;
* keeps its per-peer records in bounded tables (`max_peers`, least recently seen dropped
  first), so a flood from ever-new peers costs bounded memory.

Discussion: a guard never raises and never decides anything about the peer's messages; it
is bookkeeping. It runs on the receiver's one thread (not thread-safe) and reads time only
from its injected clock, so tests drive it with a fake one.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass

from tidal.runtime.logs import RateLimitedLog

__all__ = [
    "BAD_FRAME_LIMIT",
    "BAD_FRAME_WINDOW_S",
    "COOLDOWN_S",
    "STRANGER_LIMIT",
    "GuardStatistics",
    "PeerGuard",
]

# Discussion: a Tidal peer never sends a malformed frame (TCP does not corrupt, and both ends
# encode with the same module), so one is a bug or an attack. Twenty in ten seconds leaves
# room for a peer whose bug is rare (an executor holding suspended tasks is expensive to
# drop) while an attacker costs at most twenty decodes per connection per cool-down.
BAD_FRAME_LIMIT = 20
# Well-formed frames before hello, within the window, after which a connection is ignored
# for a cool-down. Discussion: a peer of a restarted scheduler sends a few (a heartbeat, some
# reports) and is asked to rejoin at the first, which it does on a new connection; at 100 a
# flood from 300 fresh connections had 30,000 frames decoded before any was ignored.
STRANGER_LIMIT = 10
BAD_FRAME_WINDOW_S = 10.0
# How long frames from a disconnected peer are ignored without being decoded.
COOLDOWN_S = 10.0
# At most one line per peer per period, at most LINES_PER_PERIOD lines in all per period.
LOG_PERIOD_S = 5.0
LINES_PER_PERIOD = 10
# Peers tracked at once (bad-frame counts, cool-downs); the least recently seen go first.
MAX_TRACKED_PEERS = 4096


@dataclass(frozen=True, slots=True)
class GuardStatistics:
    """What a guard has seen since it was made (counts), and what it holds now."""

    bad_frames: int  # bad frames (or batch items) reported to it
    ignored_frames: int  # frames from peers in their cool-down, not decoded
    disconnects: int  # peers it told the receiver to disconnect, or was told were
    handler_errors: int  # well-formed messages whose handler raised (a bug: logged loudly)
    lines_logged: int
    lines_suppressed: int
    peers_tracked: int  # peers with a bad-frame count now
    cooling_down: int  # peers in their cool-down now

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Record:
    __slots__ = ("count", "logged_at", "strange", "window_start")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.strange = 0  # frames before hello, this window
        self.window_start = now
        self.logged_at = -float("inf")


class PeerGuard:
    """Bad-frame bookkeeping for one receiver; see the module docstring.

    `limit=None`: never ask for a disconnection (an executor cannot drop its one scheduler).
    """

    def __init__(
        self,
        log: logging.Logger,
        *,
        limit: int | None = BAD_FRAME_LIMIT,
        window_s: float = BAD_FRAME_WINDOW_S,
        cooldown_s: float = COOLDOWN_S,
        log_period_s: float = LOG_PERIOD_S,
        lines_per_period: int = LINES_PER_PERIOD,
        max_peers: int = MAX_TRACKED_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"a bad-frame limit must be >= 1 (or None for no limit), not {limit}")
        self.limit = limit
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.log_period_s = log_period_s
        self.max_peers = max_peers
        self._clock = clock
        self._records: OrderedDict[Hashable, _Record] = OrderedDict()
        self._cooling: OrderedDict[Hashable, float] = OrderedDict()  # peer -> until
        self._lines = RateLimitedLog(
            log, burst=lines_per_period, period_s=log_period_s, summary=self._summary, clock=clock
        )
        self._period_peers: set[Hashable] = set()  # peers with suppressed lines, this period
        self._bad = self._ignored = self._disconnects = self._handler_errors = 0

    # ---- what receivers call ------------------------------------------------------------------

    def cooling_down(self, peer: Hashable) -> bool:
        """True while `peer` is in its cool-down (the frame is counted as ignored)."""
        until = self._cooling.get(peer)
        if until is None:
            return False
        if self._clock() < until:
            self._ignored += 1
            return True
        del self._cooling[peer]
        return False

    def cooling_table(self) -> tuple[dict[Hashable, float], float]:
        """The peers in their cool-down, each with when it ends, and the time now: for a
        reader that drops their frames unread (runtime/frames.py) and reports them with
        `ignored`. The table is the guard's own; readers do not change it."""
        return self._cooling, self._clock()

    def ignored(self, count: int) -> None:
        """Count `count` frames dropped unread from peers in their cool-down."""
        self._ignored += count

    def bad_frame(self, peer: Hashable, who: str, problem: str, *, counts: bool = True) -> bool:
        """Count one bad frame from `peer` (`who` names it in the log) and maybe log it.

        Returns True when the peer has now reached the limit and must be disconnected.
        `counts=False`: logged and counted in the statistics, but not toward the limit (a
        well-formed message out of place, such as a report before hello, which a peer that
        reconnected after a restart may send in good faith).
        """
        now = self._clock()
        self._bad += 1
        record = self._record(peer, now)
        if counts:
            record.count += 1
        if self._line(
            f"dropped a bad frame from {who[:120]}: {_cut(problem)}",
            peer,
            peer_quiet=now - record.logged_at >= self.log_period_s,
        ):
            record.logged_at = now
        return self.limit is not None and counts and record.count >= self.limit

    def before_hello(self, peer: Hashable) -> bool:
        """Count one well-formed frame from a peer that has not said hello; True when it
        has sent STRANGER_LIMIT of them within the window, and is now ignored for a
        cool-down (its frames undecoded). Not a disconnection: a peer of a scheduler that
        ran here before sends a few in good faith, and is asked to say hello."""
        now = self._clock()
        record = self._record(peer, now)
        record.strange += 1
        if record.strange < STRANGER_LIMIT:
            return False
        self._cool(peer, now + self.cooldown_s)
        return True

    def _cool(self, peer: Hashable, until: float) -> None:
        """Ignore `peer` until `until`, its bad-frame record forgotten. Re-inserted last, so
        that the table stays in expiry order (the oldest goes first past max_peers)."""
        self._records.pop(peer, None)
        self._cooling.pop(peer, None)
        self._cooling[peer] = until
        if len(self._cooling) > self.max_peers:
            self._cooling.popitem(last=False)

    def _record(self, peer: Hashable, now: float) -> _Record:
        """The peer's record (made, and the oldest forgotten past max_peers), its window
        started again if it is over."""
        record = self._records.get(peer)
        if record is None:
            record = self._records[peer] = _Record(now)
            if len(self._records) > self.max_peers:
                self._records.popitem(last=False)
        else:
            self._records.move_to_end(peer)
        if now - record.window_start >= self.window_s:
            record.count, record.strange, record.window_start = 0, 0, now
        return record

    def disconnected(self, peers: list[Hashable], who: str, reason: str) -> None:
        """The receiver disconnected a peer (all its `peers` keys): start their cool-down."""
        self._disconnects += 1
        now = self._clock()
        until = now + self.cooldown_s
        for peer in peers:
            self._cool(peer, until)
        self._line(f"disconnected {who[:120]}: {_cut(reason)}", peers[0] if peers else None)

    def handler_failed(self, who: str, what: str, exc: BaseException) -> None:
        """A handler raised on a well-formed message from `who`: a bug, logged loudly (with
        the traceback), rate-limited like the rest."""
        self._handler_errors += 1
        self._line(
            f"handling {what} from {who} raised {type(exc).__name__}: {exc}",
            None,
            level=logging.ERROR,
            exc=exc,
        )

    def tick(self) -> None:
        """Close the logging period if it is over (logging what was suppressed in it), and
        forget cool-downs that have ended. Call it now and then (each loop turn is fine)."""
        self._lines.tick()
        now = self._clock()
        while self._cooling:
            peer, until = next(iter(self._cooling.items()))
            if until > now:
                break
            del self._cooling[peer]

    def statistics(self) -> GuardStatistics:
        lines = self._lines.statistics()
        return GuardStatistics(
            bad_frames=self._bad,
            ignored_frames=self._ignored,
            disconnects=self._disconnects,
            handler_errors=self._handler_errors,
            lines_logged=lines.lines_logged,
            lines_suppressed=lines.lines_suppressed,
            peers_tracked=len(self._records),
            cooling_down=len(self._cooling),
        )

    # ---- logging ---------------------------------------------------------------------------------

    def _line(
        self,
        text: str,
        peer: Hashable | None,
        *,
        peer_quiet: bool = True,
        level: int | None = None,
        exc: BaseException | None = None,
    ) -> bool:
        """Log `text` unless this period's lines are used up, or (not `peer_quiet`) the peer
        had its line this period; return whether it was logged."""
        if not peer_quiet:
            self._lines.suppress()
        elif self._lines(text, level=level, exc_info=exc):
            return True
        if peer is not None and len(self._period_peers) < self.max_peers:
            self._period_peers.add(peer)
        return False

    def _summary(self, suppressed: int, seconds: float) -> str:
        """The line that sums up a logging period that left lines out; called once, as the
        period closes, so the next period counts its peers afresh."""
        # Discussion: only a left-out line adds its peer, so a period that left none out,
        # for which no summary is asked, has no peers to forget.
        peers, self._period_peers = len(self._period_peers), set()
        return (
            f"suppressed {suppressed} lines about bad input from {peers} peers in the last "
            f"{seconds:.0f} s (so far: {self._bad} bad frames, {self._disconnects} peers "
            "disconnected)"
        )


# Discussion: what a peer sends ends up in these lines (its ids, its reasons, the values a
# ProtocolError quotes), so each is cut: a 100,000-character client id once made one line
# of that length.
MAX_PROBLEM_CHARS = 300


def _cut(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else f"{text[:MAX_PROBLEM_CHARS]}... (cut)"
