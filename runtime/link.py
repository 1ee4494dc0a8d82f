"""The liveness of a connection to the scheduler: a small state machine, with no sockets.

Both peers that connect to the scheduler keep their connection alive the same way: the
client's IO thread (runtime/client_io.py) and the executor's listener (runtime/executor.py).
Each tells its `Link` what happened (`hello_sent`, `heard`, `welcomed`) and asks it once a
loop turn what to do now (`due`). The link answers with an action, and the caller carries
it out: send a keepalive (the client's `ping`, the executor's `heartbeat`; the scheduler
answers both), reconnect (close the DEALER, open a new one, say hello again), or give up
(fail the futures, or exit). The link reads the time only from the clock it was given, so
tests drive it with a fake one.

    new ----------- hello_sent ----------> connecting
    connecting ---- welcomed ------------> connected
    connecting ---- no welcome within connect_timeout_s ----------------> gone (GiveUp)
    connected ----- silent past silent_s while expecting: Reconnect
                    (or a `rejoin`: the caller reconnects), hello_sent --> reconnecting
    reconnecting -- that hello unanswered past silent_s: Reconnect, hello_sent (the same deadline)
    reconnecting -- welcomed ------------> connected
    reconnecting -- no welcome within reconnect_timeout_s of the loss --> gone (GiveUp)

While connected, a caller expecting something gets a Keepalive every ping_s: the scheduler
answers it, so silence means the scheduler is gone. A caller expecting nothing (a client
with no future or request pending) sends none, and its silence means nothing. The first
hello is never said again: the DEALER holds it until a connection is made, and a scheduler
that does not answer it within connect_timeout_s is taken for none at all.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_RECONNECT_TIMEOUT_S",
    "KEEPALIVE",
    "KEEPALIVE_S",
    "SILENT_HEARTBEATS",
    "SILENT_S",
    "WAIT",
    "GiveUp",
    "Keepalive",
    "Link",
    "Reconnect",
    "Wait",
]

# ---- settings ---------------------------------------------------------------------------------

# Both peers: how long a first hello may wait for its welcome, and how long a scheduler
# that went away may take to come back (a restart on its journal takes seconds; a minute
# covers a slow host without leaving a peer hanging on a scheduler that is gone for good).
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_RECONNECT_TIMEOUT_S = 60.0
# Discussion: the client pings every half second while something is pending, and takes a
# scheduler silent for three times that for gone. A restarted scheduler is found sooner:
# the first frame it gets from the client is answered with `rejoin`.
KEEPALIVE_S = 0.5
SILENT_S = 1.5
# Discussion: the scheduler declares an executor lost after 3 missed heartbeats by default;
# an executor waits a little longer before it decides the scheduler is gone, so that a
# scheduler that is only slow rarely sees an executor say hello again (which it handles,
# but which costs a reconciliation). The executor's silent_s is this many of its heartbeat
# intervals, and its ping_s one interval.
SILENT_HEARTBEATS = 5

# ---- actions ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do now."""


@dataclasses.dataclass(frozen=True, slots=True)
class Keepalive:
    """Send the scheduler something it answers (a client's `ping`, an executor's `heartbeat`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Reconnect:
    """Open a new connection and say hello again (then call `hello_sent`): `reason`."""

    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class GiveUp:
    """The scheduler is gone for good; `reason` completes "the scheduler at ADDRESS ..."."""

    reason: str


WAIT = Wait()
KEEPALIVE = Keepalive()
Action = Wait | Keepalive | Reconnect | GiveUp

# ---- the state machine ------------------------------------------------------------------------

NEW = "new"
CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
GONE = "gone"


class Link:
    """Decide when to keep a connection alive, reconnect, or give up (see the module doc).

    `ping_s` and `silent_s` may be changed between calls: an executor learns its heartbeat
    interval from the welcome.
    """

    def __init__(
        self,
        *,
        ping_s: float,
        silent_s: float,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        reconnect_timeout_s: float = DEFAULT_RECONNECT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ping_s = ping_s
        self.silent_s = silent_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_timeout_s = reconnect_timeout_s
        self._clock = clock
        self.state = NEW
        self._hello_at = 0.0  # when the last hello went out
        self._last_heard = 0.0  # when the scheduler last sent anything (or we last cared)
        self._next_ping = 0.0
        self._deadline = float("inf")  # connecting or reconnecting: when to give up

    @property
    def connected(self) -> bool:
        """True from a welcome until the connection is lost."""
        return self.state == CONNECTED

    # ---- what happened ------------------------------------------------------------------------

    def hello_sent(self) -> None:
        """A hello went out on a new connection: the first, or one to reconnect."""
        now = self._clock()
        if self.state == NEW:
            self.state = CONNECTING
            self._deadline = now + self.connect_timeout_s
        elif self.state == CONNECTED:
            # Discussion: the deadline counts from losing the scheduler, not from the last
            # hello, so hellos said again (each silent_s) never put off giving up.
            self.state = RECONNECTING
            self._deadline = now + self.reconnect_timeout_s
        elif self.state == GONE:
            raise RuntimeError("a hello after the link gave up: nothing may reconnect it")
        self._hello_at = now

    def heard(self) -> None:
        """A frame came from the scheduler."""
        self._last_heard = self._clock()

    def welcomed(self) -> bool:
        """The scheduler welcomed our hello; True if that ends a reconnect (a welcome again).

        A welcome after the link gave up changes nothing (and returns False): too late.
        """
        if self.state == CONNECTED:
            # Both callers drop a second welcome as a bad frame before it gets here.
            raise RuntimeError("a welcome on a connected link")
        if self.state == GONE:
            return False
        again = self.state == RECONNECTING
        now = self._clock()
        self.state = CONNECTED
        self._deadline = float("inf")
        self._last_heard = now
        self._next_ping = now  # the first keepalive at once: the scheduler hears from us
        return again

    # ---- what to do now -----------------------------------------------------------------------

    def due(self, expecting: bool = True) -> Action:
        """What to do now. `expecting`: something waits for the scheduler's answer.

        A Keepalive is returned once per ping_s, and a GiveUp once (the link is then gone).
        """
        now = self._clock()
        if self.state == CONNECTED:
            if not expecting:
                self._last_heard = now  # nothing expected: silence means nothing
                return WAIT
            if now - self._last_heard > self.silent_s:
                return Reconnect(f"no word from the scheduler for {now - self._last_heard:.1f} s")
            if now >= self._next_ping:
                self._next_ping = now + self.ping_s
                return KEEPALIVE
            return WAIT
        if self.state == CONNECTING:
            if now > self._deadline:
                self.state = GONE
                return GiveUp(f"did not answer within {self.connect_timeout_s:g} s")
            return WAIT
        if self.state == RECONNECTING:
            if now > self._deadline:
                self.state = GONE
                return GiveUp(f"did not come back within {self.reconnect_timeout_s:g} s")
            if now - self._hello_at > self.silent_s:
                # That hello may be lost (the new scheduler died too, say): a fresh start.
                return Reconnect(f"no welcome from the scheduler for {now - self._hello_at:.1f} s")
            return WAIT
        return WAIT  # new (no hello yet) or gone

    def next_due(self, expecting: bool = True) -> float:
        """The clock time by which `due` may have something to do (inf: nothing planned)."""
        if self.state == CONNECTED:
            if not expecting:
                return float("inf")
            return min(self._next_ping, self._last_heard + self.silent_s)
        if self.state == CONNECTING:
            return self._deadline
        if self.state == RECONNECTING:
            return min(self._deadline, self._hello_at + self.silent_s)
        return float("inf")
