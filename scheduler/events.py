"""What goes into the scheduler core and what comes out of it.

Events are what happened (an executor joined or reported, a client asked, time passed);
instructions are messages to send. `SchedulerCore.handle(event)` turns one into the other,
and the ZeroMQ shell (scheduler/server.py) or the simulation (scheduler/sim.py) moves them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidal.runtime import protocol as p

__all__ = [
    "ClientJoined",
    "ClientRequest",
    "Event",
    "ExecutorJoined",
    "ExecutorLeft",
    "ExecutorReport",
    "Instruction",
    "Tick",
    "ToClient",
    "ToExecutor",
]


# ---- events in ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecutorJoined:
    hello: p.Hello


@dataclass(frozen=True, slots=True)
class ExecutorReport:
    executor_id: str
    message: p.Message


@dataclass(frozen=True, slots=True)
class ExecutorLeft:
    executor_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ClientJoined:
    client_id: str


@dataclass(frozen=True, slots=True)
class ClientRequest:
    client_id: str
    message: p.Message


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: check executor liveness, let the policy rebalance."""


Event = ExecutorJoined | ExecutorReport | ExecutorLeft | ClientJoined | ClientRequest | Tick


# ---- instructions out ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToExecutor:
    executor_id: str
    message: p.Message


@dataclass(frozen=True, slots=True)
class ToClient:
    client_id: str
    message: p.Message


Instruction = ToExecutor | ToClient
