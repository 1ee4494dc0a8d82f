"""Child processes: start `tidal executor` processes and stop them, for the local cluster,
the benchmarks and the tests (each process one of them starts, it stops)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import tidal

__all__ = ["child_env", "spawn_executor", "stop_process"]


def spawn_executor(
    address: str, *, node: str = "local", extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start `tidal executor` in a child process connected to `address`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidal",
            "executor",
            "--scheduler",
            address,
            "--node",
            node,
            *extra_args,
        ],
        env=child_env(),
    )


def child_env() -> dict[str, str]:
    """This process's environment, with the folder holding this `tidal` first on PYTHONPATH:
    a child started with it imports this very copy of Tidal."""
    env = dict(os.environ)
    # The folder that holds the `tidal` package: a checkout (editable install) or site-packages.
    root = os.path.dirname(os.path.dirname(os.path.abspath(tidal.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """Ask a child to stop (SIGTERM), kill it if it does not; return its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
