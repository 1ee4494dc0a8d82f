"""A redis-server of one's own, for tests and `tidal bench streams`: started on a free
loopback port in a temporary folder, stopped (and started again, for the tests of Redis going
away) by whoever started it.

The README's test command installs redis-server from the distribution's packages; without
it, starting one fails saying so.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

import redis

__all__ = ["RedisServer"]


class RedisServer:
    """`with RedisServer() as server:` a redis-server at `server.url`, its data appended to a
    file (so that a restart keeps the streams), stopped on exit."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "no redis-server on PATH: the README's test command installs it "
                "(apt-get install -y redis-server)"
            )
        self.binary = binary
        self.folder = tempfile.mkdtemp(prefix="tidal-redis-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", self.folder, "--appendonly", "yes", "--appendfsync", "always"),
                *("--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
