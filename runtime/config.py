"""Settings from the environment: the `TIDAL_*` variables the command line and `Client()` read.

Each variable is the default of one command-line option (and `Client()` with no address
reads the first two); a flag or argument given always wins, and a variable that is unset or
empty counts as not given. A variable is read (and checked) only where its value is used, so
a bad one fails exactly the commands that would use it, with a `ConfigError` naming the
variable and what it should hold.

| variable | default for |
|---|---|
| TIDAL_SCHEDULER_ADDRESS | `--scheduler` of `tidal executor`, `status`, `policy set`; `Client()` |
| TIDAL_KEYS | `--keys` of `tidal executor`, `scheduler`, `status`, `policy set`; `Client()` |
| TIDAL_LOG_LEVEL | `--log-level` |

(TIDAL_DATA_ADDRESS, read by runtime/datastore.py, and TIDAL_PURE_PYTHON_GATE, read by
runtime/gate.py, are not options' defaults and are read where they are used.)
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KEYS",
    "LOG_LEVEL",
    "LOG_LEVELS",
    "SCHEDULER_ADDRESS",
    "VARIABLES",
    "ConfigError",
    "FromEnvironment",
    "Variable",
    "parse_scheduler_address",
    "settle_defaults",
]

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A `TIDAL_*` variable holds something unusable; the message names it and says why."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: its name, what it is the default of, and how to read it."""

    name: str
    default_of: str  # for messages and the README's table
    parse: Callable[[str], Any]  # the value, or ValueError saying what is wrong with it

    def read(self, environ: Mapping[str, str] | None = None) -> Any:
        """The variable's value, parsed; None if it is unset or empty; ConfigError if bad."""
        raw = (os.environ if environ is None else environ).get(self.name, "").strip()
        if not raw:
            return None
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{self.name}={raw!r}: {exc}") from None


def parse_scheduler_address(value: str) -> str:
    """A ZeroMQ address a peer can connect to: tcp://HOST:PORT or ipc://PATH."""
    transport, sep, rest = value.partition("://")
    if sep and transport == "ipc" and rest:
        return value
    if sep and transport == "tcp":
        host, colon, port = rest.rpartition(":")
        if colon and host and port.isdigit() and 0 < int(port) < 65536:
            return value
    raise ValueError("expected a scheduler address such as tcp://scheduler-host:5555")


def _parse_key_directory(value: str) -> str:
    if not os.path.isdir(value):
        raise ValueError("no such directory (expected a key directory: `tidal keys generate DIR`)")
    return value


def _parse_log_level(value: str) -> str:
    level = value.lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


SCHEDULER_ADDRESS = Variable(
    "TIDAL_SCHEDULER_ADDRESS",
    "--scheduler (tidal executor, status, policy set) and Client()",
    parse_scheduler_address,
)
KEYS = Variable(
    "TIDAL_KEYS", "--keys (tidal executor, scheduler, status, policy set)", _parse_key_directory
)
LOG_LEVEL = Variable("TIDAL_LOG_LEVEL", "--log-level", _parse_log_level)
VARIABLES = (SCHEDULER_ADDRESS, KEYS, LOG_LEVEL)


@dataclass(frozen=True, slots=True)
class FromEnvironment:
    """A command-line option's default: `variable`'s value if it is set, else `fallback`.
    Resolved by `settle_defaults` once the command line is parsed."""

    variable: Variable
    fallback: Any


def settle_defaults(args: Namespace) -> None:
    """Give each option left at a `FromEnvironment` default its value. Read only now, once
    parsed: a flag given wins, and a bad variable fails only a command that uses it."""
    for name, value in vars(args).items():
        if isinstance(value, FromEnvironment):
            found = value.variable.read()
            setattr(args, name, value.fallback if found is None else found)
