"""A client's requests to the scheduler (runtime/client.py): those answered (`status`,
`ping`, `set_policy`), each waited for under a fresh request id, and those that are not
(`report_lag`, and the client's own `missing`).

`ClientRequests` is a part of `Client`, which has the lock, the connection and the
bookkeeping these use: `_status_waiters` (request id -> the future its answer completes)
and `_request_frames` (request id -> its frame, sent again after a reconnect).
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Callable
from typing import Any

from tidal.runtime import protocol as p

__all__ = ["DEFAULT_STATUS_TIMEOUT_S", "ClientRequests"]

DEFAULT_STATUS_TIMEOUT_S = 10.0


class ClientRequests:
    """The requests part of `Client` (see the module docstring)."""

    def status(self, timeout: float = DEFAULT_STATUS_TIMEOUT_S) -> dict[str, Any]:
        """Ask the scheduler for a snapshot of the cluster; TimeoutError if none comes."""
        return self._request(lambda rid: p.StatusRequest(rid), "status", timeout)

    def wait_for_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0
    ) -> dict[str, Any]:
        """Ask for status until `predicate(snapshot)` holds; return that snapshot.

        Each ask is a round trip to the scheduler, which paces the loop. TimeoutError when
        `timeout` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.status(timeout=max(0.1, deadline - time.monotonic()))
            if predicate(snapshot):
                return snapshot
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the cluster's status did not reach the awaited state within "
                    f"{timeout:g} s (last: {snapshot})"
                )

    def ping(self, timeout: float = DEFAULT_STATUS_TIMEOUT_S) -> float:
        """Round trip to the scheduler and back, in seconds; TimeoutError if none comes."""
        sent = self._request(lambda rid: p.Ping(rid, time.monotonic_ns()), "pong", timeout)
        return (time.monotonic_ns() - sent) / 1e9

    def report_lag(self, source: str, pending: int, oldest_age_ms: float | None) -> None:
        """Tell the scheduler how far behind a stream source is (runtime/streams.py), for
        policies to see (`ClusterView.stream_lag()`); nothing is answered."""
        age = -1.0 if oldest_age_ms is None else float(oldest_age_ms)
        self._send_one_way(p.StreamLag(str(source)[:200], int(pending), age))

    def set_policy(self, policy: str, timeout: float = DEFAULT_STATUS_TIMEOUT_S) -> str:
        """Switch the scheduler's policy while it runs; return the name of the active policy.

        `policy` is a name (`tidal policy list`) or a "module:Class" path importable by the
        scheduler. Running, suspended and pending tasks carry on under the new policy.
        Raises ValueError with the scheduler's reason if it refuses (an unknown name lists
        the known ones), TimeoutError if no answer comes (the switch may still happen).
        """
        if not isinstance(policy, str):
            # Checked here: the scheduler would drop a frame with a non-str field as malformed,
            # and the caller would wait for the timeout instead.
            raise TypeError(
                f"policy must be a name or a 'module:Class' path (a str), not {policy!r}"
            )
        answer: p.PolicySet = self._request(
            lambda rid: p.SetPolicy(rid, policy), "policy_set", timeout
        )
        self.policy = answer.policy  # the active one, also after a refusal
        if not answer.ok:
            raise ValueError(answer.message)
        return answer.policy

    def _request(self, build: Callable[[str], p.Message], answer: str, timeout: float) -> Any:
        """Send a request built with a fresh id and wait for the answer with that id."""
        if self._io.on_io_thread():
            raise RuntimeError(
                "a blocking client call from a done callback, which runs on the client's IO "
                "thread: the answer could never arrive; call it from another thread"
            )
        request_id = uuid.uuid4().hex
        waiter: concurrent.futures.Future = concurrent.futures.Future()
        frame = p.encode(build(request_id))
        with self._lock:
            self._check_open()
            self._status_waiters[request_id] = waiter
            self._request_frames[request_id] = frame
            self._to_io.send(frame)
        try:
            return waiter.result(timeout)
        except TimeoutError:
            raise TimeoutError(
                f"the Tidal scheduler at {self.address} sent no {answer} within {timeout:g} s"
            ) from None
        finally:
            with self._lock:
                self._status_waiters.pop(request_id, None)
                self._request_frames.pop(request_id, None)

    def _send_one_way(self, message: p.Message) -> bool:
        """Send a message no answer comes to, unless the client is closed or broken
        (False then)."""
        frame = p.encode(message)
        with self._lock:
            if self._closed or self._broken is not None:
                return False
            self._to_io.send(frame)
            return True

    # ---- answers (the IO thread's) ---------------------------------------------------------

    def _on_status(self, msg: p.Status) -> None:
        self._answer(msg.request_id, msg.snapshot)

    def _on_pong(self, msg: p.Pong) -> None:
        self._answer(msg.request_id, msg.sent_ns)

    def _on_policy_set(self, msg: p.PolicySet) -> None:
        self._answer(msg.request_id, msg)  # set_policy() reads ok, policy and message

    def _answer(self, request_id: str, value: Any) -> None:
        with self._lock:
            waiter = self._status_waiters.pop(request_id, None)
        if waiter is not None:  # else an answer that came after its caller gave up
            waiter.set_result(value)
