"""Running the scheduler as a process (`tidal scheduler`): start it, say where it listens,
serve until SIGTERM or SIGINT."""

from __future__ import annotations

import gc
import signal
import sys
from typing import Any

from tidal.scheduler.server import DEFAULT_BIND, SchedulerServer

__all__ = ["ANNOUNCEMENT", "DASHBOARD_ANNOUNCEMENT", "serve", "started_line"]

# The lines `--announce` prints; LocalCluster reads the address (and the dashboard's link)
# after them.
ANNOUNCEMENT = "tidal scheduler listening on "
DASHBOARD_ANNOUNCEMENT = "tidal dashboard at "


def serve(bind: str = DEFAULT_BIND, *, announce: bool = False, **options: Any) -> int:
    """Run a scheduler in this process until SIGTERM/SIGINT; return the exit code.

    It says where it listens: on stdout with `announce` (the address, then the dashboard's
    link; LocalCluster and scripts read these lines), else on stderr, at any log level (how
    a user learns the address). Its signal handlers are in place before it says anything,
    so that a SIGTERM from whoever read the address is a clean stop.

    What exists before the server does (modules, classes, functions: ~28,000 objects) is
    never garbage: `gc.freeze()` takes it out of every later collection, so that a full
    collection on the loop walks only the scheduler's own records (it halves one)."""
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    server = SchedulerServer(bind, **options)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.stop())
    try:
        if announce:
            print(f"{ANNOUNCEMENT}{server.address}", flush=True)
            if server.dashboard_link is not None:
                print(f"{DASHBOARD_ANNOUNCEMENT}{server.dashboard_link}", flush=True)
        else:
            print(started_line(server), file=sys.stderr, flush=True)
        server.serve()
    finally:
        server.close()
    return 0


def started_line(server: SchedulerServer) -> str:
    """What `tidal scheduler` says when it starts: where it listens, and how."""
    journal = server.journal.path if server.journal is not None else "off"
    line = (
        f"tidal scheduler {server.scheduler_id} listening on {server.address} "
        f"(policy {server.core.policy.name}, journal {journal})"
    )
    if server.dashboard_link is not None:  # on the same line: where a user looks first
        line += f"; dashboard at {server.dashboard_link}"
    return line
