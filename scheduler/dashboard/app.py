"""The dashboard's routes (see scheduler/dashboard/__init__.py): a Starlette application
over a `Monitor`, which it only reads."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import threading
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from tidal.scheduler.dashboard.metrics import render_metrics
from tidal.scheduler.monitor import Monitor

__all__ = ["make_app"]


# The page's policy: its own scripts only, no inline ones (Plotly styles inline); a string
# that got parsed as HTML anyway could load nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'"
)


def make_app(
    monitor: Monitor, scheduler: dict[str, Any], closing: threading.Event, push_s: float
) -> Starlette:
    """The application: `scheduler` (id, address, ...) is shown on the page as it is."""
    about = _json(scheduler)
    encoded: list[Any] = [None, b"null"]  # the last status snapshot sent, and its JSON

    def status_json(snapshot: dict[str, Any] | None) -> bytes:
        """A snapshot's JSON, made once for every page that is sent it (snapshots are
        replaced, never changed: the same object is the same JSON)."""
        if snapshot is None:
            return b"null"
        if encoded[0] is not snapshot:
            encoded[:] = [snapshot, _json(snapshot)]
        return encoded[1]

    def event(update: dict[str, Any], first: bool) -> bytes:
        parts = [
            b'data: {"seq":%d' % update["seq"],
            b',"scheduler":' + about if first else b"",
            b',"status":' + status_json(update["status"]),
            b',"slices":' + _json(update["slices"]),
            b',"open":' + _json(update["open"]),
            b',"marks":' + _json(update["marks"]),
            b"}\n\n",
        ]
        return b"".join(parts)

    async def page(request: Request) -> Response:
        return HTMLResponse(static_text("index.html"), headers={"Content-Security-Policy": CSP})

    async def script(request: Request) -> Response:
        return Response(static_text("dashboard.js"), media_type="text/javascript")

    async def plotly(request: Request) -> Response:
        headers = {"Cache-Control": "public, max-age=86400"}
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = _plotly_js_gzipped()  # 4.8 MB -> ~1.4 MB
            headers["Content-Encoding"] = "gzip"
        else:
            body = _plotly_js()
        return Response(body, media_type="text/javascript", headers=headers)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            update = monitor.read(0)
            seq = update["seq"]
            yield event(update, first=True)  # the page starts again from this one
            while not await wait_or_close(closing, push_s):
                update = monitor.read(seq)
                if update["seq"] != seq:
                    seq = update["seq"]
                    yield event(update, first=False)
                else:
                    yield b": idle\n\n"  # a comment: keeps proxies from closing the stream

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def status(request: Request) -> Response:
        snapshot = monitor.status()
        if snapshot is None:
            return JSONResponse({"error": "no status yet: the scheduler is starting"}, 503)
        body = b'{"scheduler":' + about + b"," + status_json(snapshot)[1:]  # one object
        return Response(body, media_type="application/json")

    async def metrics(request: Request) -> Response:
        body, content_type = render_metrics(monitor.status())
        return Response(body, media_type=content_type)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/", page),
            Route("/static/dashboard.js", script),
            Route("/static/plotly.min.js", plotly),
            Route("/events", events),
            Route("/api/status", status),
            Route("/metrics", metrics),
            Route("/health", health),
        ]
    )


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


@functools.cache
def _plotly_js() -> bytes:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().encode()


@functools.cache
def _plotly_js_gzipped() -> bytes:
    return gzip.compress(_plotly_js(), compresslevel=6)


async def wait_or_close(closing: threading.Event, seconds: float) -> bool:
    """Sleep `seconds` unless the dashboard closes first; True if it is closing."""
    if closing.is_set():
        return True
    await asyncio.sleep(seconds)
    return closing.is_set()


@functools.cache
def static_text(name: str) -> str:
    return (
        resources.files("tidal.scheduler.dashboard")
        .joinpath("static", name)
        .read_text(encoding="utf-8")
    )
