"""Reading a ZeroMQ socket in bulk; on the scheduler's ROUTER, dropping ignored peers' frames
before they cost anything.

`FrameReader(socket).read(max_messages, ignored, now)` returns the messages waiting (each a
list of bytes, as `recv_multipart` returns them: on a ROUTER the routing id first), at most
`max_messages`, without blocking; a message whose first part is a key of `ignored` with a
time after `now` (a peer in its cool-down, runtime/guard.py) is dropped unread and only
counted. `read_all()` is everything waiting (an executor's command connection).

The work is done in C (runtime/_frames.c) on the libzmq pyzmq calls, where that module was
built and reaches it; otherwise with pyzmq, the same result at ~4 us a message instead of
~0.5 us. `FrameReader.native` says which (the scheduler's `status()["bad_input"]` has it as
`native_frame_reader`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import zmq

log = logging.getLogger("tidal.frames")

__all__ = ["FrameReader"]


@functools.cache
def _native_reader() -> Any:
    """The C reader, bound to the libzmq pyzmq calls; None (and why, logged) if not here."""
    try:
        from zmq.backend.cython import _zmq as backend

        from tidal.runtime import _cframes
    except ImportError as exc:
        log.info("frames are read with pyzmq: %s", exc)
        return None
    try:
        version = _cframes.open_library(backend.__file__, zmq.ZMQError)
    except OSError as exc:
        log.info("frames are read with pyzmq: %s", exc)
        return None
    if version != zmq.zmq_version_info():
        log.info(
            "frames are read with pyzmq: libzmq %s found, pyzmq uses %s",
            version,
            zmq.zmq_version_info(),
        )
        return None
    return _cframes


class FrameReader:
    """Bulk reads of whole messages from one socket, by one thread at a time."""

    def __init__(self, socket: zmq.Socket, *, native: bool = True) -> None:
        self._socket = socket
        self._native = _native_reader() if native else None
        self.native = self._native is not None

    def read(
        self, max_messages: int, ignored: dict[Any, float], now: float
    ) -> tuple[list[list[bytes]], int, int]:
        """(messages kept, messages dropped as ignored, bytes of both). Raises zmq.ZMQError
        if the socket fails before any message was read."""
        if self._native is not None:
            if self._socket.closed:  # its address would point at freed memory
                raise zmq.ZMQError(zmq.ENOTSOCK)
            return self._native.read(self._socket.underlying, max_messages, ignored, now)
        kept: list[list[bytes]] = []
        dropped = size = 0
        recv = self._socket.recv_multipart
        for _ in range(max_messages):
            try:
                parts = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError:
                if not kept and not dropped:
                    raise
                break  # as the C reader: what was read goes; the error comes again next read
            size += sum(map(len, parts))
            until = ignored.get(parts[0])
            if until is not None and until > now:
                dropped += 1
            else:
                kept.append(parts)
        return kept, dropped, size

    def read_all(self, at_once: int = 64) -> list[list[bytes]]:
        """Every message waiting now (nothing is ignored)."""
        messages: list[list[bytes]] = []
        while True:
            kept, _, _ = self.read(at_once, {}, 0.0)
            if not kept:
                return messages
            messages.extend(kept)
