"""The memory limit without processes: sizes, the guard's decisions on a fake clock and a
fake RSS, and the kernel's `fail` and per-task estimates with a fake probe."""

from __future__ import annotations

import pytest

from tests.runtime.test_kernel import Transport
from tidal.runtime import protocol as p
from tidal.runtime.futures import MemoryLimitExceeded, TaskError, rebuild_error
from tidal.runtime.kernel import Kernel
from tidal.runtime.memory import Exit, FailTask, MemoryGuard, RssProbe, format_size, parse_size

MiB = 1024 * 1024


# ---- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * MiB),
        ("2GB", 2_000_000_000),
        ("1.5 GiB", 3 * 512 * MiB),
        ("64kib", 64 * 1024),
        ("1048576", MiB),
        (" 10 MB ", 10_000_000),
        (4096, 4096),
    ],
)
def test_sizes_read_in_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("512M", "ambiguous unit 'M'.*MiB.*MB"),
        ("12XB", "unknown unit 'XB'"),
        ("lots", "cannot read 'lots' as a memory size"),
        ("-5MiB", "cannot read"),
        ("0", "must be positive"),
        (0, "must be positive"),
        (1.5, "a number of bytes or a string"),
        ("", "cannot read"),
    ],
)
def test_a_bad_size_is_refused_naming_the_problem(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_size(text)


def test_sizes_print_in_binary_units():
    assert format_size(512 * MiB) == "512 MiB"
    assert format_size(530 * MiB + 300 * 1024) == "530.3 MiB"
    assert format_size(100) == "100 B"
    assert format_size(3 * 1024 * MiB) == "3 GiB"
    assert format_size(95 * MiB - 4096) == "95 MiB"  # rounds to a whole number: no ".0"


def test_the_rss_probe_agrees_with_psutil():
    import psutil

    probe = RssProbe()
    try:
        reading, reference = probe(), psutil.Process().memory_info().rss
        assert abs(reading - reference) < 8 * MiB  # read moments apart, same figure
    finally:
        probe.close()


# ---- the guard --------------------------------------------------------------------------------


class FakeExecutor:
    """What the guard looks at: an RSS, the tasks' estimates, the running task, a clock."""

    def __init__(self, rss: int, estimates: dict[str, int], running: str | None) -> None:
        self.rss, self.estimates, self.running, self.now = rss, dict(estimates), running, 0
        self.releases = 0
        self.freed_by_release = 0

    def release(self) -> None:
        self.releases += 1
        self.rss -= self.freed_by_release

    def guard(self, limit: int = 100 * MiB) -> MemoryGuard:
        return MemoryGuard(
            limit,
            "e1",
            probe=lambda: self.rss,
            estimates=lambda rss: dict(self.estimates),
            running=lambda: self.running,
            alive=lambda task_id: task_id in self.estimates,
            clock=lambda: self.now,
            release=self.release,
            grace_ns=1_000,
        )

    def end(self, task_id: str, freed: int) -> None:
        del self.estimates[task_id]
        self.rss -= freed
        if self.running == task_id:
            self.running = None


def test_under_the_limit_the_guard_does_nothing():
    executor = FakeExecutor(90 * MiB, {"t": 60 * MiB}, "t")
    assert executor.guard().check() is None


def test_over_the_limit_the_running_task_that_grew_pays_with_a_clear_message():
    executor = FakeExecutor(130 * MiB, {"small": 10 * MiB, "big": 80 * MiB}, "small")
    action = executor.guard().check()
    assert action == FailTask(
        "small",
        "task small exceeded executor e1's memory limit of 100 MiB (rss 130 MiB, the task ~10 MiB)",
    )


def test_when_the_running_task_did_not_grow_the_largest_suspended_task_pays():
    executor = FakeExecutor(130 * MiB, {"a": 30 * MiB, "b": 80 * MiB, "now": 0}, "now")
    assert executor.guard().check().task_id == "b"
    executor = FakeExecutor(130 * MiB, {"a": 30 * MiB, "b": 30 * MiB}, None)
    assert executor.guard().check().task_id == "a"  # a tie: the id that sorts first


def test_the_guard_waits_for_the_failing_task_then_releases_memory_and_looks_again():
    executor = FakeExecutor(130 * MiB, {"a": 20 * MiB, "b": 50 * MiB}, "b")
    guard = executor.guard()
    assert guard.check().task_id == "b"
    assert guard.check() is None  # b has until the grace runs out to reach a boundary
    executor.end("b", freed=20 * MiB)  # its memory is not all given back yet...
    executor.freed_by_release = 30 * MiB  # ...until the guard collects and trims
    assert guard.check() is None and executor.releases == 1 and executor.rss == 80 * MiB
    assert guard.failed == 1


def test_still_over_after_the_first_task_went_the_next_pays():
    executor = FakeExecutor(200 * MiB, {"a": 40 * MiB, "b": 50 * MiB}, "b")
    guard = executor.guard()
    assert guard.check().task_id == "b"
    executor.end("b", freed=50 * MiB)
    assert guard.check().task_id == "a"  # 150 MiB: over still, and a holds the most


def test_a_task_that_reaches_no_boundary_in_time_makes_the_executor_exit():
    executor = FakeExecutor(130 * MiB, {"stuck": 40 * MiB}, "stuck")
    guard = executor.guard()
    assert isinstance(guard.check(), FailTask)
    executor.now += 1_000  # the grace is over and the task is still here
    action = guard.check()
    assert isinstance(action, Exit) and action.task_id == "stuck"
    assert "reached no record boundary within" in action.message
    assert "executor e1 exits" in action.message


def test_over_the_limit_with_no_task_the_executor_exits_unless_releasing_helps():
    executor = FakeExecutor(130 * MiB, {}, None)
    executor.freed_by_release = 40 * MiB
    assert executor.guard().check() is None and executor.releases == 1
    executor = FakeExecutor(130 * MiB, {}, None)
    action = executor.guard().check()
    assert action == Exit(
        None,
        "executor e1 is over its memory limit of 100 MiB (rss 130 MiB) with no task to fail, "
        "so it exits",
    )


# ---- the kernel: fail, and per-task estimates -------------------------------------------------


class FakeRss:
    """The RSS a task 'grows' by hand: `rss.now += n` inside the task."""

    def __init__(self) -> None:
        self.now = 1000

    def __call__(self) -> int:
        return self.now


def test_a_failed_task_unwinds_at_its_boundary_and_reports_the_error_not_killed():
    transport = Transport()
    kernel = Kernel(transport)
    unwound = []

    def grows(part):
        try:
            for x in part:
                if x == 3:
                    kernel.fail("t", "MemoryLimitExceeded", "task t exceeded ...")
        finally:
            unwound.append(True)
        return "never"

    kernel.launch("t", grows, [list(range(10))])
    kernel.launch("next", sum, [[1, 2]])
    kernel.run()
    failed = transport.outcome("t")
    assert isinstance(failed, p.Failed)
    assert (failed.error_type, failed.message) == ("MemoryLimitExceeded", "task t exceeded ...")
    assert failed.stats["records"] == 4 and unwound == [True]
    assert transport.outcome("next").result == 3  # the kernel carries on
    assert not kernel.holds_tasks()


def test_failing_a_task_that_ended_reports_nothing():
    transport = Transport()
    kernel = Kernel(transport)
    kernel.launch("t", sum, [[1]])
    kernel.run()
    kernel.fail("t", "MemoryLimitExceeded", "late")
    kernel.run()
    assert [type(m) for m in transport.sent] == [p.Started, p.Finished]


def test_each_task_is_charged_the_rss_growth_while_it_ran():
    transport = Transport()
    rss = FakeRss()
    kernel = Kernel(transport, memory_probe=rss)
    seen = {}

    def grows(by, part):
        for x in part:
            rss.now += by
            if by == 50 and x == 1:
                kernel.suspend("big")
            if by == 5 and x == 2:
                seen.update(kernel.memory_estimates(rss()))
                seen["running"] = kernel.running_task()

    kernel.launch("big", grows, [50, list(range(4))])
    kernel.run()  # big grows by 100 and parks
    kernel.launch("small", grows, [5, list(range(4))])
    kernel.run()
    # While small ran, its growth so far counted, and big's parked 100 stayed its own.
    assert seen == {"big": 100, "small": 15, "running": "small"}
    assert kernel.memory_estimates(rss()) == {"big": 100}  # small finished; big is here
    kernel.resume("big")
    kernel.run()
    assert not kernel.holds_tasks()


def test_estimates_need_a_probe():
    kernel = Kernel(Transport())
    kernel.launch("t", sum, [[1]])
    assert kernel.memory_estimates(123) == {}


def test_a_failed_chunk_fails_the_running_subtask_and_leaves_the_rest_to_be_placed_again():
    transport = Transport()
    kernel = Kernel(transport)

    def work(part):
        total = 0
        for x in part:
            if x == -1:
                kernel.fail("c", "MemoryLimitExceeded", "too big")
            total += x
        return total

    kernel.launch_chunk("c", work, [["a", [[1, 2]], {}], ["b", [[1, -1, 5]], {}], ["z", [[3]], {}]])
    kernel.run()
    items = {i[0]: i for m in transport.of(p.ChunkResults) for i in m.items}
    assert items["a"][1:3] == ["finished", 3]
    assert items["b"][1] == "failed" and items["b"][3][:2] == ["MemoryLimitExceeded", "too big"]
    assert "z" not in items  # never ran: the scheduler places it again
    assert isinstance(transport.outcome("c"), p.Killed)


def test_the_report_for_an_executor_that_exits_names_the_task_or_its_running_subtask():
    kernel = Kernel(Transport())
    seen = []

    def stuck(part):  # asked while it runs, as the listener thread asks
        seen.append(kernel.memory_failure(kernel.running_task(), "MemoryLimitExceeded", "x"))
        return sum(part)

    kernel.launch("t", stuck, [[1]], attempt=2)
    kernel.launch_chunk("c", stuck, [["a", [[1]], {}], ["b", [[2]], {}]])
    kernel.run()
    failed, chunk_first, chunk_second = seen
    assert isinstance(failed, p.Failed) and (failed.task_id, failed.attempt) == ("t", 2)
    assert (failed.error_type, failed.message) == ("MemoryLimitExceeded", "x")
    assert chunk_first == p.ChunkResults(
        "c", [["a", "failed", None, ["MemoryLimitExceeded", "x", ""], {}]]
    )
    assert chunk_second.items[0][0] == "b"
    assert kernel.memory_failure("unknown", "MemoryLimitExceeded", "x") is None


# ---- the client's side ------------------------------------------------------------------------


def test_the_future_raises_memory_limit_exceeded_which_is_a_memory_error_and_a_task_error():
    error = rebuild_error("MemoryLimitExceeded", "task t exceeded executor e's limit", "")
    assert isinstance(error, MemoryLimitExceeded)
    assert isinstance(error, MemoryError) and isinstance(error, TaskError)
    assert str(error) == "MemoryLimitExceeded: task t exceeded executor e's limit"
