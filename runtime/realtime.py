"""Real-time scheduling for the few threads that only relay messages.

Discussion: on a 2-core machine an executor's task thread keeps one CPU busy. When a command
arrives, ZeroMQ's I/O thread and then the listener thread must wake; if Linux places them on
the busy CPU they can wait out the normal scheduler's wake-up granularity (a millisecond or
more) before they run, and that tail is the whole p99 of noticing a suspend command.
SCHED_FIFO (priority 1, the lowest real-time level) makes them run at once. Both threads
sleep almost all the time and do microseconds of work per message, and the kernel's RT
throttling bounds them anyway. It needs root or CAP_SYS_NICE; without it we carry on at
normal priority, which is correct, only with a longer tail.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
import time
from typing import Any

import zmq

log = logging.getLogger("tidal.realtime")

__all__ = [
    "DEFAULT_STREAM_NICE",
    "DEFAULT_TASK_NICE",
    "REALTIME_CALLERS_ENV",
    "STREAM_REALTIME_NS",
    "CallerBoosts",
    "TaskThreadNice",
    "end_held",
    "lower_this_thread",
    "realtime_io_threads",
    "realtime_permitted",
    "realtime_this_thread",
    "set_thread_nice",
]

# Discussion: an executor's task thread is the one thread in Tidal that burns CPU for long.
# On a machine where executors fill every core, the scheduler, the clients and the executors'
# listeners must still get a CPU the moment a message arrives, or every hop waits behind a
# batch task's time slice. Running task threads at nice 10 makes Linux hand the CPU to those
# (nice 0) threads at once when they wake; it needs no privilege. Between executors nothing
# changes: they are all at the same nice.
DEFAULT_TASK_NICE = 10
# Discussion: ...except while the task thread runs a stream task. At nice 10 a stream task
# shares a CPU evenly with the batch task of the executor next to it, and yields to every
# nice-0 process (the client drawing the next micro-batch, say): measured in `tidal demo`,
# that stretched a 1.5 ms micro-batch to 10-40 ms now and then. Raising a thread's priority
# needs CAP_SYS_NICE (or RLIMIT_NICE); without it stream tasks stay at the batch nice.
DEFAULT_STREAM_NICE = 0

# The relays' real-time priority: above a task thread's own brief boosts (priority 1,
# runtime/_gate.c), so that a boosted task never keeps a relay from a CPU.
_PRIORITY = 2

# Discussion: a stream task's first STREAM_REALTIME_NS run at SCHED_FIFO, where permitted
# (`TaskThreadNice.set_class`). Traced in the unified benchmark (2026-12-07), a 1.5 ms
# micro-batch whose thread went from its batch task's nice 10 to nice 0 still waited 9-16
# ms for a CPU now and then: the fair scheduler owed the client's nice-0 Python the time
# that thread had run as a batch task, and it holds the GIL all the while, so its listener
# waited too. A micro-batch is milliseconds of work; a stream task still running after
# this (a long one, or a mistake) goes back to the fair scheduler at the stream nice, so it
# cannot keep a CPU from every normal thread.
STREAM_REALTIME_NS = 20_000_000
# The priority of a thread that submitted a stream task (`CallerBoosts`): below the relays.
_CALLER_PRIORITY = 1
REALTIME_CALLERS_ENV = "TIDAL_REALTIME_CALLERS"


def realtime_io_threads(context: zmq.Context, enabled: bool = True) -> bool:
    """Ask ZeroMQ to start `context`'s I/O threads at SCHED_FIFO; True if it will.

    Call before the context's first socket is created (that is when its threads start).
    """
    if not enabled or not realtime_permitted():
        return False
    context.set(zmq.THREAD_SCHED_POLICY, os.SCHED_FIFO)
    context.set(zmq.THREAD_PRIORITY, _PRIORITY)
    return True


def realtime_this_thread(enabled: bool = True) -> bool:
    """Move the calling thread to SCHED_FIFO; True on success."""
    if not enabled:
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_PRIORITY))
    except (OSError, AttributeError) as exc:
        log.info("running the listener at normal priority (%s)", exc)
        return False
    return True


def realtime_permitted() -> bool:
    """Whether this process may use SCHED_FIFO (checked on the calling thread, then undone)."""
    try:
        before = os.sched_getscheduler(0)
        param = os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_PRIORITY))
        os.sched_setscheduler(0, before, param)
    except (OSError, AttributeError):
        return False
    return True


def lower_this_thread(nice: int = DEFAULT_TASK_NICE) -> bool:
    """Raise the calling thread's nice value to `nice` (lower priority); True on success."""
    if nice <= 0:
        return False
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
    except (OSError, AttributeError) as exc:
        log.info("task thread stays at normal priority (%s)", exc)
        return False
    return True


def set_thread_nice(tid: int, nice: int) -> bool:
    """Set thread `tid`'s nice value, up or down; False where that is not permitted."""
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (OSError, AttributeError):
        return False
    return True


class TaskThreadNice:
    """An executor's task thread's nice value: `task_nice` while it runs batch tasks,
    `stream_nice` while it runs stream tasks, waits for work, or must reach a record
    boundary at once (`lift`: a suspend or kill came). Lowering a nice needs CAP_SYS_NICE:
    where it is not permitted, everything stays at `task_nice`. With `realtime_gate`, also
    its policy: SCHED_FIFO for the first STREAM_REALTIME_NS of stream work, SCHED_OTHER for
    batch work (the gate's boosts in between are runtime/_gate.c's)."""

    def __init__(self, task_nice: int, stream_nice: int) -> None:
        self.task_nice = task_nice
        self.stream_nice = stream_nice
        self.tid: int | None = None  # the task thread's, once `lower_this_thread` worked
        # Where permitted, the executor's gate (runtime/_gate.c) puts the thread at
        # SCHED_FIFO for a while (`boost_now(ns)`; its watcher also does as frames arrive),
        # and its watcher puts it back to SCHED_OTHER when that while is over (`unboost()`:
        # at once).
        self.realtime_gate: Any | None = None
        self._class: str | None = None

    def lower_this_thread(self) -> int | None:
        """Put the calling thread (the task thread) at `task_nice`; its id if the nice can
        change by class, else None."""
        if lower_this_thread(self.task_nice) and self.stream_nice < self.task_nice:
            self.tid = threading.get_native_id()
        return self.tid

    def set_class(self, priority: str) -> None:
        """The thread is about to run a task of `priority` ("stream" or "batch"), or to wait
        for work ("idle": at the stream nice, so that it wakes at once)."""
        if self.tid is None:
            return
        nice = self.task_nice if priority == "batch" else self.stream_nice
        if not set_thread_nice(self.tid, nice):
            log.info(
                "stream tasks run at nice %d, as batch tasks do: %d not permitted",
                self.task_nice,
                nice,
            )
            self.tid = None  # do not try again on every switch
            return
        changed, self._class = priority != self._class, priority
        gate = self.realtime_gate
        if gate is None:
            return
        if priority != "stream":
            gate.unboost()  # batch work, or waiting: under the fair scheduler, at its nice
        elif changed:
            # From batch work, from waiting for work, or at a start: the first
            # STREAM_REALTIME_NS of stream work. Not again for a stream task switched back
            # into after a command came. Discussion: a stream task that starts on an idle
            # executor needs it as much as one that preempts a batch task: beside another
            # executor's batch thread, a normal thread preempted by a relay may wait for the
            # next scheduler tick to get its CPU back (docs/notes.md, "A stream submit on its
            # caller's thread"); it used to run so, its class unchanged since it went idle.
            gate.boost_now(STREAM_REALTIME_NS)

    def lift(self) -> None:
        """To the stream nice, until the next `set_class`."""
        if self.tid is not None:
            set_thread_nice(self.tid, self.stream_nice)


class CallerBoosts:
    """The thread that submits a stream task, at SCHED_FIFO (priority 1) from the end of
    its packing to the end of its `submit`, or, for a lane's task (runtime/lanes.py), until
    it waits for the result, or the result comes, or STREAM_REALTIME_NS passed (at the IO
    thread's next pass after that: within LANE_GRACE_S / 2 while lanes are in use); where
    permitted and TIDAL_REALTIME_CALLERS is not 0.

    Discussion: traced under `tidal bench preempt`'s full batch load (2026-12-08), a stream
    task's tail was its caller's thread: a normal thread, it was preempted in `submit`
    after its send (by the threads that send woke, then behind batch threads) while it
    held the GIL, for 1-4 ms, and the client's IO thread, its result in hand, could not
    run Python until it got its CPU back; put back at the end of `submit`, it was
    preempted there instead, in the few microseconds of Python before it waits. So the
    boost lasts until the thread waits (`end_held`, on its own thread, with the GIL
    released for the call: ctypes) or its result came (`release`, on the IO thread).

    A first version (2026-12-08) set and reset threads by id from the IO thread alone: a
    review found a process it forked kept SCHED_FIFO, a reused thread id had its policy
    reset, a policy the program set meanwhile was lost, and the bound held only when the
    IO thread happened to run. Now: `SCHED_RESET_ON_FORK` keeps children out of it; a
    thread is only ever put back if it is still one of this process's threads
    (/proc/self/task), still at exactly the boost's policy and priority, and the boost
    is the one recorded for it (a token); a boost is held past `submit` only for a
    lane's task, when the IO thread looks at least every LANE_GRACE_S / 2; and the IO
    thread ends every boost when it stops. A thread the program put at another policy
    keeps it."""

    def __init__(self, enabled: bool | None = None, clock: Any = time.monotonic_ns) -> None:
        if enabled is None:
            wanted = os.environ.get(REALTIME_CALLERS_ENV, "1").strip() != "0"
            enabled = wanted and realtime_permitted() and _LIBC is not None
        self._enabled = enabled
        self._clock = clock
        self._lock = threading.RLock()
        self._held: dict[int, tuple[object, int]] = {}  # thread id -> (token, since)
        self._stopped = False  # the IO thread ended every boost and looks no more
        # Threads whose held boost ran out of time, and until when no boost of theirs is
        # held past a submit (3 x STREAM_REALTIME_NS): a thread that keeps submitting and
        # never waits is not boosted for good (a submit taking a boost over keeps its
        # start, so its time runs from the first).
        self._cooling: dict[int, int] = {}

    def boost(self) -> bool:
        """Put the calling thread at SCHED_FIFO (or keep it there, if it holds a boost of
        ours still); whether it is (give it to `end` or `hold`)."""
        if not self._enabled:
            return False
        tid = threading.get_native_id()
        with self._lock:
            if tid in self._held and _ours(0):
                return True  # held from its last submit: this one takes it over
            try:
                if os.sched_getscheduler(0) != os.SCHED_OTHER:
                    return False  # the program's own choice stands
                os.sched_setscheduler(0, _BOOSTED, os.sched_param(_CALLER_PRIORITY))
            except OSError:
                self._enabled = False
                return False
        return True

    def end(self, boosted: bool) -> None:
        """Put the calling thread back at SCHED_OTHER if `boost` moved it and nothing has
        moved it since; the GIL is released for the call."""
        if not boosted:
            return
        with self._lock:
            self._held.pop(threading.get_native_id(), None)
        if _LIBC is not None and _ours(0):
            _LIBC.sched_setscheduler(0, os.SCHED_OTHER, ctypes.byref(ctypes.c_int(0)))

    def hold(self) -> tuple[int, object] | None:
        """Keep the calling thread's boost past its submit; (thread id, token) for
        `release`, or None once the IO thread has stopped (then `end` it now)."""
        tid, token, now = threading.get_native_id(), object(), self._clock()
        with self._lock:
            if self._stopped or self._cooling.get(tid, 0) > now:
                return None
            held = self._held.get(tid)  # taken over: its time runs from the first
            self._held[tid] = (token, now if held is None else held[1])
        _HELD.token, _HELD.boosts = token, self
        return tid, token

    def end_held(self) -> None:
        """The calling thread is about to wait: end the boost it holds, if it still does."""
        token = _HELD.token
        _HELD.token = None
        if self._forget(threading.get_native_id(), token):  # else ended meanwhile
            self.end(True)

    def release(self, tid: int, token: object) -> None:
        """The result of the task `token` was held for came (the IO thread): end it."""
        if not self._forget(tid, token):
            return
        if tid == threading.get_native_id():  # done already when its callback was added
            self.end(True)
        else:
            _end_other(tid)

    def _forget(self, tid: int, token: object) -> bool:
        """Drop `tid`'s held boost if it is still the one `token` names; whether it was."""
        with self._lock:
            held = self._held.get(tid)
            if held is None or held[0] is not token:
                return False
            del self._held[tid]
            return True

    def expire(self, everyone: bool = False) -> float | None:
        """End the boosts held STREAM_REALTIME_NS or longer (`everyone`: all; the IO
        thread); seconds until the next is due (None: none held)."""
        now = self._clock()
        with self._lock:
            self._stopped = self._stopped or everyone
            for tid, (_, since) in list(self._held.items()):
                if everyone or now - since >= STREAM_REALTIME_NS:
                    del self._held[tid]
                    self._cooling[tid] = now + 3 * STREAM_REALTIME_NS
                    _end_other(tid)
            for tid in [t for t, until in self._cooling.items() if until <= now]:
                del self._cooling[tid]
            if not self._held:
                return None
            first = min(since for _, since in self._held.values())
        return max(0, first + STREAM_REALTIME_NS - now) / 1e9

    def holding(self) -> list[int]:
        """The threads holding a boost now (for tests)."""
        with self._lock:
            return list(self._held)


def end_held() -> None:
    """The calling thread is about to wait for a result: end a boost it holds, if any
    (`CallerBoosts.hold`; a thread-local read when it holds none)."""
    if getattr(_HELD, "token", None) is not None:
        _HELD.boosts.end_held()


_HELD = threading.local()  # the boost this thread holds past its submit: token, boosts
_BOOSTED = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK


def _ours(tid: int) -> bool:
    """Whether thread `tid` (0: this one) is at exactly a boost's policy and priority."""
    try:
        return (
            os.sched_getscheduler(tid) == _BOOSTED
            and os.sched_getparam(tid).sched_priority == _CALLER_PRIORITY
        )
    except OSError:
        return False


def _end_other(tid: int) -> None:
    """Put back thread `tid` of this process, if it is still at a boost's policy."""
    if os.path.exists(f"/proc/self/task/{tid}") and _ours(tid):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def _libc() -> Any:
    """The C library, for a `sched_setscheduler` that releases the GIL (None: none)."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()
