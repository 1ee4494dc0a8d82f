"""Tidal's public API in one import (`import tidal`); the code lives in `runtime/`."""

from runtime.functions import FunctionNotFound
from runtime.kernel import Kernel, TaskKilled
from runtime.protocol import PROTOCOL_VERSION, ProtocolError
from runtime.task import Partition, TaskContext, current_context, task

__all__ = [
    "PROTOCOL_VERSION",
    "FunctionNotFound",
    "Kernel",
    "Partition",
    "ProtocolError",
    "TaskContext",
    "TaskKilled",
    "current_context",
    "task",
]
