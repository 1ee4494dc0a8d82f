"""Child processes: start `tidal executor` processes and stop them, for the local cluster,
the benchmarks and the tests (each process one of them starts, it stops)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import tidal

__all__ = ["child_env", "spawn_executor", "stop_process", "tidal_command"]


def tidal_command(*args: str) -> list[str]:
    """The command line of `tidal ARGS` in a child process: this Python, `-m tidal`.

    Discussion: with `-P`, not the bare `-m`. `-m` puts the current folder first on the
    child's path, and in the repository's root that folder holds `tidal/`, the package's
    face without its subpackages (setup.cfg maps `runtime/` and the rest in): run from
    there, an installed Tidal's children imported that and failed (`No module named
    'tidal.runtime'`). `child_env` puts the current folder on the path instead, after the
    folder this Tidal is installed in, so a user's own modules are still found.
    """
    return [sys.executable, "-P", "-m", "tidal", *args]


def spawn_executor(
    address: str, *, node: str = "local", extra_args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start `tidal executor` in a child process connected to `address`."""
    return subprocess.Popen(
        tidal_command("executor", "--scheduler", address, "--node", node, *extra_args),
        env=child_env(),
    )


def child_env() -> dict[str, str]:
    """This process's environment, with the folder holding this `tidal` first on PYTHONPATH,
    then the current folder: a child started with it (`tidal_command`) imports this very
    copy of Tidal, and the user's modules next to the program, as the program did."""
    env = dict(os.environ)
    # The folder that holds the `tidal` package: a checkout (editable install) or site-packages.
    root = os.path.dirname(os.path.dirname(os.path.abspath(tidal.__file__)))
    paths = [root, os.getcwd(), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
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
