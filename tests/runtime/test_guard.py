"""PeerGuard: bad frames counted per peer, a bounded number of log lines, disconnection at
the limit, cool-downs, and bounded tables. A fake clock; no sockets."""

from __future__ import annotations

import logging

import pytest

from tidal.runtime.guard import STRANGER_LIMIT, PeerGuard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.DEBUG, logger="test.guard")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "test.guard"]


def guard(clock, **options) -> PeerGuard:
    return PeerGuard(logging.getLogger("test.guard"), clock=clock, **options)


def test_a_peer_is_to_be_disconnected_at_its_limit_within_the_window(clock):
    g = guard(clock, limit=3, window_s=10.0)
    assert [g.bad_frame(b"a", "peer a", "junk") for _ in range(3)] == [False, False, True]
    g2 = guard(clock, limit=3, window_s=10.0)
    assert not g2.bad_frame(b"a", "peer a", "junk")
    assert not g2.bad_frame(b"a", "peer a", "junk")
    clock.now += 10.0  # the window is over: the count starts again
    assert not g2.bad_frame(b"a", "peer a", "junk")
    assert not g2.bad_frame(b"a", "peer a", "junk")
    assert g2.bad_frame(b"a", "peer a", "junk")


def test_frames_that_do_not_count_are_logged_but_never_disconnect(clock):
    g = guard(clock, limit=2)
    assert not any(g.bad_frame(b"a", "peer a", "before hello", counts=False) for _ in range(50))
    assert g.statistics().bad_frames == 50
    assert not guard(clock, limit=None).bad_frame(b"a", "the scheduler", "junk")


def test_peers_are_counted_apart(clock):
    g = guard(clock, limit=2)
    assert not g.bad_frame(b"a", "peer a", "junk")
    assert not g.bad_frame(b"b", "peer b", "junk")
    assert g.bad_frame(b"a", "peer a", "junk")


def test_a_disconnected_peer_is_ignored_until_its_cool_down_ends(clock):
    g = guard(clock, cooldown_s=5.0)
    g.disconnected([b"a", b"a-reports"], "client a", "20 bad frames")
    assert g.cooling_down(b"a") and g.cooling_down(b"a-reports")
    assert not g.cooling_down(b"b")
    clock.now += 5.0
    assert not g.cooling_down(b"a")
    stats = g.statistics()
    assert (stats.ignored_frames, stats.disconnects, stats.cooling_down) == (2, 1, 1)
    g.tick()  # forgets ended cool-downs
    assert g.statistics().cooling_down == 0


def test_one_line_per_peer_per_period_and_a_summary_of_the_rest(clock, lines):
    g = guard(clock, limit=None, log_period_s=5.0, lines_per_period=3)
    for _ in range(100):
        g.bad_frame(b"a", "peer a", "junk")
    assert lines() == ["dropped a bad frame from peer a: junk"]
    for peer in (b"b", b"c", b"d", b"e"):
        g.bad_frame(peer, f"peer {peer.decode()}", "junk")
    assert len(lines()) == 3  # the period's three lines are used up
    g.tick()
    assert len(lines()) == 3  # the period is not over: no summary yet
    clock.now += 5.0
    g.tick()
    assert lines()[-1] == (
        "suppressed 101 lines about bad input from 3 peers in the last 5 s "
        "(so far: 104 bad frames, 0 peers disconnected)"
    )
    g.tick()
    assert len(lines()) == 4  # nothing more to sum up
    stats = g.statistics()
    assert (stats.lines_logged, stats.lines_suppressed) == (4, 101)
    g.bad_frame(b"a", "peer a", "again")  # a new period: peer a gets its line again
    assert lines()[-1] == "dropped a bad frame from peer a: again"


def test_a_handler_error_is_logged_loudly_with_its_traceback(clock, caplog):
    caplog.set_level(logging.DEBUG, logger="test.guard")
    g = guard(clock)
    try:
        raise KeyError("boom")
    except KeyError as exc:
        g.handler_failed("executor e1", "finished", exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "handling finished from executor e1 raised KeyError: 'boom'"
    assert g.statistics().handler_errors == 1


def test_tables_stay_bounded_however_many_peers_misbehave(clock):
    g = guard(clock, limit=5, max_peers=100)
    for i in range(10_000):
        g.bad_frame(i.to_bytes(4, "big"), f"peer {i}", "junk")
        if i % 3 == 0:
            g.disconnected([b"x" + i.to_bytes(4, "big")], f"peer {i}", "junk")
    stats = g.statistics()
    assert stats.peers_tracked == 100 and stats.cooling_down == 100
    # The most recently seen are the ones kept.
    assert g.cooling_down(b"x" + (9999).to_bytes(4, "big"))
    assert not g.cooling_down(b"x" + (0).to_bytes(4, "big"))


def test_a_limit_below_one_is_refused(clock):
    with pytest.raises(ValueError, match="bad-frame limit must be >= 1"):
        guard(clock, limit=0)


def test_each_period_sums_up_only_its_own_peers(clock, lines):
    g = guard(clock, limit=None, log_period_s=5.0, lines_per_period=1)
    for peer in (b"a", b"b", b"c"):
        g.bad_frame(peer, f"peer {peer.decode()}", "junk")
    clock.now += 5.0
    g.bad_frame(b"d", "peer d", "junk")  # opens the next period: its summary goes out first
    g.bad_frame(b"e", "peer e", "junk")
    clock.now += 5.0
    g.tick()
    summaries = [line for line in lines() if line.startswith("suppressed")]
    assert [s.split(" peers ")[0] for s in summaries] == [
        "suppressed 2 lines about bad input from 2",
        "suppressed 1 lines about bad input from 1",
    ]


def test_what_a_peer_sends_is_cut_in_the_log(clock, caplog):
    caplog.set_level(logging.WARNING, logger="test.guard")
    guard = PeerGuard(logging.getLogger("test.guard"), clock=clock)
    guard.bad_frame("p", "client " + "i" * 100_000, "bad id " + "x" * 100_000)
    guard.disconnected(["q"], "client " + "j" * 100_000, "why " + "y" * 100_000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and all(len(line) <= 500 for line in lines)
    assert all(line.endswith("... (cut)") for line in lines)


def test_a_peer_that_floods_before_hello_is_ignored_for_a_cool_down(clock):
    g = guard(clock)
    assert not any(g.before_hello("stranger") for _ in range(STRANGER_LIMIT - 1))
    assert not g.cooling_down("stranger")
    assert g.before_hello("stranger")  # the STRANGER_LIMIT-th within the window
    assert g.cooling_down("stranger") and not g.cooling_down("other")
    assert g.cooling_table() == ({"stranger": clock.now + 10}, clock.now)
    g.ignored(5)
    assert g.statistics().ignored_frames == 5 + 1
    clock.now += 11  # past the cool-down: served again, counted afresh
    assert not g.cooling_down("stranger") and not g.before_hello("stranger")
