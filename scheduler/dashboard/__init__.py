"""The scheduler's dashboard: a live web page, `/metrics` for Prometheus, and JSON status.

`tidal scheduler --dashboard [HOST:]PORT` (or `LocalCluster(dashboard=True)`) starts a
`LiveDashboard` beside the scheduler's loop: a small ASGI application (Starlette) served by
uvicorn on a thread of its own. It reads only what the loop hands it (scheduler/monitor.py),
so the loop never waits for it. What a browser can cost the process is bounded: a status
snapshot is made at most once a second and bounded in size (scheduler/views.py), encoded
once for every page, and at most MAX_CONNECTIONS connections are served at once; a page
that stops reading is held back by the socket, its server keeping nothing for it.

Routes:
- `/`: the page (static/index.html, static/dashboard.js), which opens `/events`, a stream
  of server-sent events (a push every `PUSH_S` when something changed), and draws with
  Plotly (plotly.js, served from the `plotly` package at `/static/plotly.min.js`: no CDN);
- `/metrics`: Prometheus's text format (scheduler/dashboard/metrics.py);
- `/api/status`: the scheduler's last status snapshot, as JSON;
- `/health`: "ok".

Discussion: why these libraries. Dask draws its dashboard with Bokeh, whose server wants
Tornado, NumPy and pandas in the scheduler's process; a page that receives plain JSON and
draws with plotly.js needs neither, and Starlette + uvicorn are the smallest well-kept ASGI
pair (server-sent events are a plain streaming response; no WebSocket library is needed
for a one-way push). prometheus-client writes the exposition format, so its own parser
reads what we serve.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tidal.runtime.auth import is_loopback
from tidal.scheduler.monitor import Monitor

__all__ = [
    "DEFAULT_DASHBOARD",
    "Dashboard",
    "DashboardUnavailable",
    "LiveDashboard",
    "check_dashboard",
    "parse_address",
]

log = logging.getLogger("tidal.scheduler")

# Where the dashboard listens when asked for without an address (Dask's port, loopback).
DEFAULT_DASHBOARD = "127.0.0.1:8787"
# How often the page gets what changed: the task stream at every push, the status snapshot
# (which costs the scheduler's loop O(executors + jobs)) at most every PUBLISH_NS.
PUSH_S = 0.25
PUBLISH_NS = 1_000_000_000
# Connections the server takes at once (pages, scrapes): more are answered 503.
MAX_CONNECTIONS = 32
START_TIMEOUT_S = 10.0
INSTALL_HINT = 'the dashboard needs its extra: pip install "tidal[dashboard]"'


class DashboardUnavailable(RuntimeError):
    """The dashboard cannot start: its libraries are missing, or its address is bad."""


def parse_address(spec: str) -> tuple[str, int]:
    """ "HOST:PORT", ":PORT" or "PORT" -> (host, port); the host defaults to loopback."""
    host, _, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise DashboardUnavailable(
            f"dashboard address {spec!r} is not HOST:PORT (e.g. 127.0.0.1:8787)"
        ) from None
    if not 0 <= number <= 65535:
        raise DashboardUnavailable(f"dashboard port {number} is out of range (0-65535)")
    return host, number


def check_dashboard(address: str = "") -> None:
    """DashboardUnavailable if the dashboard's libraries are missing or `address` (if
    given) is not HOST:PORT: for those who start a scheduler elsewhere with one."""
    if address:
        parse_address(address)
    try:
        import plotly  # noqa: F401
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise DashboardUnavailable(f"{INSTALL_HINT} ({exc})") from None


class Dashboard:
    """Serve the dashboard for `monitor` at `address` ("HOST:PORT"; port 0: any free one)
    until `close()`. `link` is the page's URL.

    With `fall_back`, a port already taken is replaced by a free one (as Dask does for
    8787), with a warning; otherwise it is an error. `scheduler` is shown on the page.
    DashboardUnavailable if it cannot serve (it then holds no port)."""

    def __init__(
        self,
        monitor: Monitor,
        address: str = DEFAULT_DASHBOARD,
        *,
        scheduler: dict[str, Any] | None = None,
        keyed: bool = False,
        fall_back: bool = False,
    ) -> None:
        check_dashboard()
        import uvicorn

        from tidal.scheduler.dashboard.app import make_app

        host, port = parse_address(address)
        if keyed and not is_loopback(host):
            log.warning(
                "the dashboard listens on %s, beyond this host: it has no keys of its own, so "
                "anyone who reaches it sees the cluster's tasks and function names (it "
                "changes nothing)",
                host,
            )
        self._socket = _bind(host, port, fall_back)
        try:
            bound_host, bound_port = self._socket.getsockname()[:2]
            shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound_host, bound_host)
            self.link = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound_port}/"
            self._closing = threading.Event()
            app = make_app(monitor, scheduler or {}, self._closing, PUSH_S)
            config = uvicorn.Config(
                app,
                log_config=None,  # the process's logging is the scheduler's, not uvicorn's
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=2,
                limit_concurrency=MAX_CONNECTIONS,
            )
            self._server = uvicorn.Server(config)
            self._thread = threading.Thread(target=self._serve, name="tidal-dashboard", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self._server.started and self._thread.is_alive():
                if time.monotonic() > deadline:
                    raise DashboardUnavailable(
                        f"the dashboard did not start within {START_TIMEOUT_S:g} s"
                    )
                time.sleep(0.01)  # uvicorn says nothing else when it is up
            if not self._server.started:
                raise DashboardUnavailable("the dashboard's server stopped as it started")
        except BaseException:
            self.close()
            raise

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except Exception:  # the scheduler goes on without its dashboard
            log.exception("the dashboard stopped")

    def close(self) -> None:
        """Stop serving (open pages see their stream end) and release the port."""
        if getattr(self, "_closing", None) is not None:
            self._closing.set()
        if getattr(self, "_server", None) is not None:
            self._server.should_exit = True
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=5)
        self._socket.close()


class LiveDashboard:
    """The scheduler's side of its dashboard: a `Monitor` shown each step of `core`, a
    `Dashboard` serving it, and the status snapshot (`status()`) handed to it at most every
    PUBLISH_NS. The server calls `step` for each step, `tick` at each tick, `close` at the
    end, as it does its event log's."""

    def __init__(
        self,
        core: Any,
        address: str,
        status: Callable[[], dict[str, Any]],
        *,
        scheduler: dict[str, Any],
        keyed: bool,
        fall_back: bool,
    ) -> None:
        self._monitor = Monitor(core)
        self._status = status
        self._published_at: int | None = None
        self.tick()  # /api/status and /metrics answer from the start
        self.dashboard = Dashboard(
            self._monitor, address, scheduler=scheduler, keyed=keyed, fall_back=fall_back
        )
        self.link = self.dashboard.link

    def step(self, event: Any, instructions: Any) -> None:
        self._monitor.step(event, instructions)

    def tick(self) -> None:
        now = time.monotonic_ns()
        if self._published_at is None or now - self._published_at >= PUBLISH_NS:
            self._published_at = now
            self._monitor.publish(self._status())

    def close(self) -> None:
        self.dashboard.close()


def _bind(host: str, port: int, fall_back: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or not fall_back or port == 0:
                raise DashboardUnavailable(
                    f"the dashboard cannot listen on {host}:{port}: {exc.strerror}"
                ) from None
            log.warning("dashboard port %d is taken: using a free one instead", port)
            sock.bind((host, 0))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock
