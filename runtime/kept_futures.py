"""The future of a task whose result stays on its executor (`keep=True`, runtime/kept.py).

It completes when the result exists: its value is then the result's reference, and
`result()` fetches the value itself over the data path, each time it is called (nothing is
cached here: the value lives on the executor). If the result cannot be had where the
scheduler said (its executor is gone), the future tells the scheduler (`missing`), which
computes it again from its lineage and sends the new reference; `result()` waits for it
(up to its timeout, else RECOMPUTE_WAIT_S) and fetches again.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

from tidal.runtime import payloads
from tidal.runtime.datastore import DataUnavailable, fetch_chunks
from tidal.runtime.futures import TaskFuture, rebuild_error
from tidal.runtime.protocol import ProtocolError
from tidal.runtime.results import Traffic

__all__ = ["MAX_RECOMPUTE_ASKS", "RECOMPUTE_WAIT_S", "KeptFuture", "fetch_kept"]

# How long `result()` without a timeout waits for a lost result to be computed again.
RECOMPUTE_WAIT_S = 600.0
# How often one `result()` asks for a result to be computed again before it gives up: a
# result computed again that still cannot be fetched is out of reach (an address this host
# cannot reach, say), not lost.
MAX_RECOMPUTE_ASKS = 3


def fetch_kept(blob: bytes, what: str, traffic: Traffic | None = None) -> Any:
    """The value a kept result's reference names, fetched (or read on this host) and
    decoded; DataUnavailable if it cannot be had, ProtocolError if it is not a kept result."""
    reference = payloads.open_reference(blob, what)
    value, kwargs = payloads.open_task_call(blob, fetch_chunks, lambda: None)
    if len(value) != 1 or kwargs:
        raise ProtocolError(f"{what} must hold one value (a kept result)")
    if traffic is not None:
        traffic.received(reference.size)
    return value[0]


class KeptFuture(TaskFuture):
    """A TaskFuture whose result is kept by its executor; see the module docstring."""

    def __init__(
        self,
        *args: Any,
        missing: Callable[[str], bool | None] | None = None,
        on_io_thread: Callable[[], bool] = lambda: False,
        traffic: Traffic | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._traffic = traffic
        self._missing = missing or (lambda task_id: None)
        self._on_io_thread = on_io_thread  # its client's (`ClientConnection.on_io_thread`)
        self._update = threading.Condition()
        self._version = 0  # how many times its result was computed again
        self._lost: BaseException | None = None  # a recomputation that failed

    @property
    def recomputations(self) -> int:
        """How many times its result was lost and computed again."""
        return self._version

    def result(self, timeout: float | None = None) -> Any:
        """The task's result, fetched from the executor that keeps it (see the module
        docstring). Raises as TaskFuture.result() does, and DataUnavailable if the result
        was lost and not computed again within the timeout."""
        super().result(timeout)  # done (raises as any future's), then fetched
        deadline = time.monotonic() + (RECOMPUTE_WAIT_S if timeout is None else timeout)
        what = f"the kept result of {self.task_id}"
        for asked in range(MAX_RECOMPUTE_ASKS + 1):
            with self._update:
                version = self._version
                if self._lost is not None:
                    raise self._lost
                blob = self._result
            try:
                return fetch_kept(blob, what, self._traffic)
            except DataUnavailable as exc:
                if asked == MAX_RECOMPUTE_ASKS:
                    raise DataUnavailable(
                        f"{what} cannot be had, even computed again {asked} times: {exc}"
                    ) from None
                if self._on_io_thread():
                    # Discussion: a done callback runs on the client's IO thread, which is
                    # the one that would bring the recomputed result: waiting here would
                    # wait for ourselves.
                    raise DataUnavailable(
                        f"{what} cannot be had ({exc}); called from a done callback, "
                        "result() cannot wait for it to be computed again"
                    ) from None
                if self._missing(self.task_id) is False:
                    raise DataUnavailable(
                        f"{what} cannot be had ({exc}), and its client is closed"
                    ) from None
                with self._update:
                    left = deadline - time.monotonic()
                    changed = self._update.wait_for(lambda v=version: self._version != v, left)
                if not changed:
                    raise DataUnavailable(
                        f"{what} cannot be had ({exc}), and was not computed again in time"
                    ) from None
        raise AssertionError("unreachable")  # the last pass returns or raises

    def _recomputed(self, outcome: str, value: Any, error: list[str] | None) -> None:
        """The scheduler computed the result again (the IO thread's): take its new reference,
        or the failure of its recomputation."""
        with self._update:
            if outcome == "finished" and type(value) is bytes:
                with self._condition:  # the Future's own lock, as set_result takes it
                    self._result = value
                self._lost = None
            else:
                problem = rebuild_error(*error) if error else None
                self._lost = problem or concurrent.futures.CancelledError(self.task_id)
            self._version += 1
            self._update.notify_all()
