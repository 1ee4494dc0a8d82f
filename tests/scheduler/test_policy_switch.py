"""Switching the policy of a running scheduler: no task lost, none run or completed twice.

Most tests drive the core as a state machine (no sockets, a fake clock) with simulated
executors that answer its commands as real ones would; the last one switches a real
LocalCluster through the Client and the CLI.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import deque

import pytest

from tests.scheduler.harness import MS, FakeClock, Harness
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.scheduler.core import Tick
from tidal.scheduler.policies import Policy, known_policy_names
from tidal.scheduler.records import TaskState

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class InstantExecutor:
    """One executor slot as the core sees it from outside: runs launched tasks one at a
    time, parks a task on Suspend, brings it back on Resume, answers every command at once."""

    def __init__(self) -> None:
        self.slot: p.Launch | None = None
        self.queue: deque[p.Launch] = deque()
        self.parked: dict[str, p.Launch] = {}

    def receive(self, msg: p.Message, clock: FakeClock) -> list[p.Message]:
        """The reports a command causes at once."""
        if isinstance(msg, p.Launch):
            self.queue.append(msg)
        elif isinstance(msg, p.Suspend) and self.slot and self.slot.task_id == msg.task_id:
            self.parked[msg.task_id], self.slot = self.slot, None
            return [p.Suspended(msg.task_id, 1_000, 1, clock.now)]
        elif isinstance(msg, p.Resume) and msg.task_id in self.parked:
            assert self.slot is None, "the core resumed a task into a busy slot"
            self.slot = self.parked.pop(msg.task_id)
            return [p.Resumed(msg.task_id, 1_000, clock.now)]
        elif isinstance(msg, p.Kill):
            raise AssertionError(f"nothing here should kill a task, yet {msg.task_id} was")
        return []

    def step(self) -> list[p.Message]:
        """Make progress: start the next task, or finish the running one."""
        if self.slot is not None:
            done, self.slot = self.slot, None
            result = payloads.pack_payload(done.task_id)
            return [p.Finished(done.task_id, done.attempt, result, {"running_ns": 5 * MS})]
        if self.queue:
            self.slot = self.queue.popleft()
            return [p.Started(self.slot.task_id, self.slot.attempt, 0)]
        return []


class SimulatedHarness(Harness):
    """The scripted harness with an `InstantExecutor` per executor (on node f"node-{id}"):
    commands wait in `to_executor` until `deliver()` hands them over."""

    def __init__(self, policy, executors=("e0", "e1"), **options):
        self.executors = {executor_id: InstantExecutor() for executor_id in executors}
        self.launches: list[p.Launch] = []
        nodes = [(executor_id, f"node-{executor_id}") for executor_id in executors]
        super().__init__(policy, executors=nodes, **options)

    def keep_command(self, executor_id: str, message: p.Message) -> None:
        super().keep_command(executor_id, message)
        if isinstance(message, p.Launch):
            self.launches.append(message)

    def waiting(self, executor_id: str) -> list[tuple[type, str]]:
        """Commands waiting for `executor_id`, as (type, task id), without delivering them."""
        return [(type(m), m.task_id) for m in self.to_executor.get(executor_id, [])]

    def deliver(self) -> bool:
        """Hand every executor its commands and the core their reports; False if none."""
        delivered = False
        for executor_id, sim in self.executors.items():
            inbox = self.to_executor.setdefault(executor_id, [])
            while inbox:
                delivered = True
                for report in sim.receive(inbox.pop(0), self.clock):
                    self.report(executor_id, report)
        return delivered

    def step(self, executor_id: str) -> None:
        for report in self.executors[executor_id].step():
            self.report(executor_id, report)

    def tick(self) -> None:
        """Time passes: every executor sends a heartbeat, then the scheduler's timer fires."""
        self.clock.now += 100 * MS
        for executor_id in self.executors:
            node = self.nodes[executor_id]
            self.report(executor_id, p.Heartbeat(executor_id, node, 0, 0, 1, 0, 0, 0, 1, 1, 50.0))
        self.handle(Tick())

    def run_until_done(self, max_rounds: int = 500) -> None:
        """Deliver, step every executor, tick when nothing moves; until every task is done."""
        for _ in range(max_rounds):
            if all(t.state is TaskState.DONE for t in self.core.records.tasks.values()):
                return
            moved = self.deliver()
            for executor_id, sim in self.executors.items():
                if sim.slot is not None or sim.queue:
                    moved = True
                    self.step(executor_id)
            if not moved:
                self.tick()
        stuck = {
            tid: t.state.value
            for tid, t in self.core.records.tasks.items()
            if t.state.value != "done"
        }
        raise AssertionError(f"tasks never completed: {stuck}")

    def assert_each_task_ran_and_completed_once(self) -> None:
        launched = [m.task_id for m in self.launches]
        assert sorted(launched) == sorted(self.core.records.tasks), (
            "a task was launched twice or never"
        )
        assert all(m.attempt == 0 for m in self.launches)
        for task_id in self.core.records.tasks:
            assert [item[:4] for item in self.results[task_id]] == [
                [task_id, "finished", payloads.pack_payload(task_id), None]
            ]


def test_fifo_to_lb_suspends_for_waiting_stream_tasks_and_back_to_fifo_loses_nothing():
    h = SimulatedHarness("fifo")
    batch = h.submit("b", "batch", 3)
    h.deliver()
    h.step("e0"), h.step("e1")  # b/0 and b/1 run
    streams = h.submit("s", "stream", 2)
    assert h.waiting("e0") == h.waiting("e1") == []  # fifo does not preempt: they wait
    fifo = h.core.policy

    first_at = h.clock.now
    answer = h.set_policy("lb")

    assert (answer.ok, answer.policy) == (True, "lb")
    assert answer.message == "policy is now lb (was fifo)"
    assert h.core.policy.name == "lb"
    # At once, not at the next event: lb suspends both batch tasks for the stream tasks.
    launched_streams = set()
    for executor_id, victim in (("e0", batch[0]), ("e1", batch[1])):
        (suspend, launch) = h.waiting(executor_id)
        assert suspend == (p.Suspend, victim)
        assert launch[0] is p.Launch
        launched_streams.add(launch[1])
    assert launched_streams == set(streams)

    # Back to fifo while both batch tasks are suspending: fifo never resumes anything.
    h.clock.now += 5 * MS
    answer = h.set_policy("fifo")
    assert (answer.ok, answer.policy) == (True, "fifo")
    assert h.core.policy is not fifo  # a fresh instance

    # An unknown name is refused with the known names, and nothing changes.
    before = h.core.policy
    answer = h.set_policy("nope")
    assert (answer.ok, answer.policy) == (False, "fifo")
    assert "unknown policy 'nope'" in answer.message
    assert f"known policies are {', '.join(known_policy_names())}" in answer.message
    assert h.core.policy is before
    assert h.waiting("e0")[2:] == h.waiting("e1")[2:] == []

    h.run_until_done()

    h.assert_each_task_ran_and_completed_once()
    switches = h.core.policy_switches
    assert [(s["from_policy"], s["to_policy"]) for s in switches] == [
        ("fifo", "lb"),
        ("lb", "fifo"),
    ]
    assert all(s["reason"] == "requested by client c" for s in switches)
    assert [s["at_ns"] for s in switches] == [first_at, first_at + 5 * MS]
    assert h.core.status()["policy_switches"] == switches
    assert h.core.status()["policy"] == "fifo"


def test_a_task_suspended_under_lb_resumes_under_fifo_once_its_executor_idles():
    h = SimulatedHarness("lb", executors=["e0"])
    (batch,) = h.submit("b", "batch", 1)
    h.deliver()
    h.step("e0")
    (stream,) = h.submit("s", "stream", 1)
    h.deliver()  # suspended; the stream task is launched behind it
    assert h.core.records.tasks[batch].state is TaskState.SUSPENDED
    assert h.set_policy("fifo").ok
    h.step("e0"), h.step("e0")  # the stream task starts and finishes
    assert h.core.records.tasks[stream].state is TaskState.DONE
    assert h.waiting("e0") == []  # fifo has no plan for the parked task...

    h.tick()

    assert h.waiting("e0") == [(p.Resume, batch)]  # ...so the core resumes it
    h.run_until_done()
    h.assert_each_task_ran_and_completed_once()
    assert h.core.records.tasks[batch].suspensions == 1


def test_many_switches_while_work_flows_lose_and_repeat_nothing():
    rng = random.Random(7)
    h = SimulatedHarness("lb", executors=["e0", "e1", "e2"])
    for round_ in range(40):
        if rng.random() < 0.3:
            h.submit(f"b{round_}", "batch", rng.randint(1, 4))
        if rng.random() < 0.3:
            h.submit(f"s{round_}", "stream", rng.randint(1, 2))
        if rng.random() < 0.3:
            assert h.set_policy(rng.choice(["fifo", "lb"])).ok
        h.deliver()
        h.step(rng.choice(sorted(h.executors)))
    assert h.set_policy("fifo").ok  # and finish under the policy that never resumes
    h.run_until_done()
    h.assert_each_task_ran_and_completed_once()
    assert len(h.core.policy_switches) >= 5
    assert any(
        t.suspensions for t in h.core.records.tasks.values()
    )  # the switches met suspended work


class NeedsArguments(Policy):
    name = "needs-arguments"

    def __init__(self, required: int) -> None:
        self.required = required


class RaisesWhenConsulted(Policy):
    name = "raises-when-consulted"

    def tick(self, view):
        raise ZeroDivisionError("oops")


def test_policy_paths_over_the_wire_are_refused_unless_the_operator_allows_them():
    h = SimulatedHarness("fifo")
    answer = h.set_policy(f"{__name__}:NeedsArguments")
    assert (answer.ok, answer.policy) == (False, "fifo")
    assert (
        "accepts policy names only" in answer.message and "--allow-policy-paths" in answer.message
    )
    assert h.core.policy_switches == []


def test_a_policy_that_cannot_be_constructed_is_refused_and_nothing_changes():
    h = SimulatedHarness("fifo", allow_policy_paths=True)
    before = h.core.policy
    answer = h.set_policy(f"{__name__}:NeedsArguments")
    assert (answer.ok, answer.policy) == (False, "fifo")
    assert "TypeError" in answer.message and "required" in answer.message
    assert h.core.policy is before and h.core.policy_switches == []
    answer = h.set_policy("no_such_module_here:Policy")
    assert not answer.ok and "ModuleNotFoundError" in answer.message
    assert h.core.policy is before


def test_a_policy_that_raises_when_first_consulted_is_replaced_by_the_default():
    h = SimulatedHarness("fifo", allow_policy_paths=True)
    answer = h.set_policy(f"{__name__}:RaisesWhenConsulted")
    assert (answer.ok, answer.policy) == (False, "lb")
    assert "replaced by the default policy 'lb'" in answer.message
    assert "ZeroDivisionError" in answer.message
    assert h.core.policy.name == "lb"
    (switch,) = h.core.policy_switches
    assert (switch["from_policy"], switch["to_policy"]) == ("fifo", "raises-when-consulted")
    assert "raises-when-consulted" in h.core.policy_failures[-1]


# ---- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_switching_a_running_local_cluster_through_the_client_and_the_cli():
    from tidal.runtime.client import Client
    from tidal.runtime.cluster import LocalCluster
    from tidal.workloads.synthetic import spin, total

    partitions = [list(range(i * 20_000, (i + 1) * 20_000)) for i in range(2)]
    env = dict(os.environ, PYTHONPATH=ROOT)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tidal", "policy", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    with LocalCluster(executors=1, policy="fifo") as cluster, Client(cluster) as client:
        assert client.policy == "fifo"
        batch = client.map(spin, partitions, priority="batch", record_us=20.0)  # ~0.4 s each
        client.wait_for_status(lambda s: s["executors"][0]["running"] is not None, timeout=30)
        stream = client.submit(total, [1, 2, 3], priority="stream")
        assert client.status()["pending"]["stream"] == 1  # fifo: it waits behind the batch

        assert client.set_policy("lb") == "lb"

        assert stream.result(timeout=30) == 6
        snapshot = client.status()
        assert snapshot["policy"] == "lb" and client.policy == "lb"
        assert snapshot["policy_switches"][-1]["to_policy"] == "lb"
        assert (
            snapshot["policy_switches"][-1]["reason"] == f"requested by client {client.client_id}"
        )
        with pytest.raises(ValueError, match="unknown policy 'nope'") as refused:
            client.set_policy("nope")
        assert all(name in str(refused.value) for name in known_policy_names())
        assert client.status()["policy"] == "lb"

        assert client.gather(batch, timeout=60) == [sum(part) for part in partitions]
        assert sorted(f.statistics().suspensions for f in batch) == [0, 1]
        # lb suspended a batch task for the stream task: it did not wait for the batch job
        # to finish, but ran and finished while that task was parked (one executor: one
        # clock for both finish times).
        (suspended,) = [f for f in batch if f.statistics().suspensions == 1]
        assert stream.statistics().finished_at_ns < suspended.statistics().finished_at_ns

        switched = cli("set", "fifo", "--scheduler", cluster.address)
        assert switched.returncode == 0, switched.stderr
        assert switched.stdout.strip() == "policy is now fifo"
        switched = cli("set", "lb", "--scheduler", cluster.address)
        assert switched.returncode == 0, switched.stderr
        assert switched.stdout.strip() == "policy is now lb"
        refused = cli("set", "nope", "--scheduler", cluster.address)
        assert refused.returncode == 2 and "known policies are" in refused.stderr
        assert client.status()["policy"] == "lb"
        assert client.submit(total, [4]).result(timeout=30) == 4  # still serving
