"""The connection state machine on a fake clock: every transition, the give-ups, the
client's idle case and the executor's connect deadline. No sockets, no threads, no sleeps."""

from __future__ import annotations

import pytest

from tidal.runtime.link import KEEPALIVE, WAIT, GiveUp, Link, Reconnect


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def make_link(clock, **limits):
    """A link with the client's pacing, a 30 s connect and a 60 s reconnect timeout."""
    options = {"ping_s": 0.5, "silent_s": 1.5, "connect_timeout_s": 30.0}
    options |= {"reconnect_timeout_s": 60.0} | limits
    return Link(clock=clock, **options)


def connected_link(clock, **limits):
    link = make_link(clock, **limits)
    link.hello_sent()
    assert link.welcomed() is False  # the first welcome ends no reconnect
    return link


def test_a_new_link_does_nothing_until_its_hello_is_sent(clock):
    link = make_link(clock)
    assert link.state == "new" and not link.connected
    clock.advance(1_000)
    assert link.due() == WAIT and link.next_due() == float("inf")


# ---- the first hello --------------------------------------------------------------------------


def test_an_unanswered_first_hello_gives_up_at_the_connect_deadline_and_only_once(clock):
    link = make_link(clock, connect_timeout_s=30.0)
    link.hello_sent()
    assert link.state == "connecting" and link.next_due() == clock.now + 30.0
    clock.advance(30.0)
    assert link.due() == WAIT  # the deadline itself is not past it
    clock.advance(0.01)
    assert link.due() == GiveUp("did not answer within 30 s")
    assert link.state == "gone" and not link.connected
    clock.advance(100)
    assert link.due() == WAIT and link.next_due() == float("inf")


def test_the_first_hello_is_never_said_again_however_long_the_silence(clock):
    link = make_link(clock)
    link.hello_sent()
    for _ in range(29):
        clock.advance(1.0)  # far past silent_s each time
        assert link.due() == WAIT
        assert link.due(expecting=False) == WAIT


def test_a_welcome_within_the_connect_deadline_connects(clock):
    link = make_link(clock)
    link.hello_sent()
    clock.advance(29.0)
    link.heard()
    assert link.welcomed() is False
    assert link.state == "connected" and link.connected
    clock.advance(10.0)  # long past the old connect deadline: no give-up any more
    link.heard()
    assert not isinstance(link.due(), GiveUp)


# ---- connected --------------------------------------------------------------------------------


def test_keepalives_go_out_at_once_then_every_ping_interval(clock):
    link = connected_link(clock, ping_s=0.5)
    assert link.due() == KEEPALIVE  # at once, on the welcome
    assert link.due() == WAIT  # once per interval, however often it is asked
    assert link.next_due() == clock.now + 0.5
    clock.advance(0.4)
    link.heard()
    assert link.due() == WAIT
    clock.advance(0.1)
    link.heard()
    assert link.due() == KEEPALIVE
    clock.advance(0.3)
    assert link.due() == WAIT


def test_silence_past_the_limit_while_expecting_means_reconnect(clock):
    link = connected_link(clock, silent_s=1.5, ping_s=10.0)
    assert link.due() == KEEPALIVE
    clock.advance(1.0)
    link.heard()  # any frame keeps it alive
    clock.advance(1.5)
    assert link.due() == WAIT  # exactly the limit is not past it
    assert link.next_due() == clock.now
    clock.advance(0.1)
    assert link.due() == Reconnect("no word from the scheduler for 1.6 s")
    # Still connected until the caller carries it out: it says so again if asked again.
    assert link.connected and isinstance(link.due(), Reconnect)


def test_a_client_expecting_nothing_neither_pings_nor_minds_silence(clock):
    link = connected_link(clock, ping_s=0.5, silent_s=1.5)
    for _ in range(100):
        clock.advance(1.0)
        assert link.due(expecting=False) == WAIT
        assert link.next_due(expecting=False) == float("inf")
    assert link.connected
    # Something is pending now: a keepalive at once, and silence counts from now on.
    assert link.due(expecting=True) == KEEPALIVE
    clock.advance(1.5)
    assert link.due() == KEEPALIVE  # its answer is late, but not yet too late
    clock.advance(0.1)
    assert link.due() == Reconnect("no word from the scheduler for 1.6 s")


def test_an_executor_learns_its_pacing_from_the_welcome(clock):
    link = make_link(clock, ping_s=0.5, silent_s=2.5)
    link.hello_sent()
    link.ping_s, link.silent_s = 0.1, 0.5  # a 100 ms heartbeat, 5 of them silent
    link.welcomed()
    assert link.due() == KEEPALIVE
    clock.advance(0.1)
    assert link.due() == KEEPALIVE
    clock.advance(0.41)
    assert link.due() == Reconnect("no word from the scheduler for 0.5 s")


def test_a_second_welcome_on_a_connected_link_is_a_bug_of_its_caller(clock):
    link = connected_link(clock)
    with pytest.raises(RuntimeError, match="a welcome on a connected link"):
        link.welcomed()


# ---- reconnecting -----------------------------------------------------------------------------


def reconnecting_link(clock, **limits):
    """A link that lost the scheduler to silence, and said hello again."""
    link = connected_link(clock, **limits)
    clock.advance(link.silent_s + 0.1)
    assert isinstance(link.due(), Reconnect)
    link.hello_sent()
    return link


def test_a_hello_to_reconnect_waits_for_a_welcome_again(clock):
    link = reconnecting_link(clock)
    assert link.state == "reconnecting" and not link.connected
    clock.advance(1.0)
    assert link.due() == WAIT  # no keepalives without a connection
    link.heard()
    assert link.welcomed() is True  # a welcome again
    assert link.connected and link.due() == KEEPALIVE


def test_an_unanswered_hello_to_reconnect_is_said_again_after_the_silence_limit(clock):
    link = reconnecting_link(clock, silent_s=1.5)
    clock.advance(1.0)
    link.heard()  # a frame that is no welcome does not answer the hello
    clock.advance(0.5)
    assert link.due() == WAIT
    assert link.next_due() == clock.now
    clock.advance(0.1)
    assert link.due() == Reconnect("no welcome from the scheduler for 1.6 s")
    link.hello_sent()
    assert link.state == "reconnecting" and link.due() == WAIT
    clock.advance(1.6)
    assert isinstance(link.due(), Reconnect)


def test_a_scheduler_that_does_not_come_back_in_time_is_given_up_once(clock):
    link = reconnecting_link(clock, silent_s=1.5, reconnect_timeout_s=60.0)
    lost_at = clock.now
    # Fresh hellos every 1.6 s never put the deadline off: it counts from the loss.
    while clock.now + 1.6 <= lost_at + 60.0:
        clock.advance(1.6)
        assert isinstance(link.due(), Reconnect)
        link.hello_sent()
    assert link.next_due() == lost_at + 60.0
    clock.now = lost_at + 60.01
    assert link.due() == GiveUp("did not come back within 60 s")
    assert link.state == "gone"
    clock.advance(100)
    assert link.due() == WAIT and link.due(expecting=False) == WAIT
    assert link.welcomed() is False and link.state == "gone"  # too late
    with pytest.raises(RuntimeError, match="after the link gave up"):
        link.hello_sent()


def test_a_rejoin_from_the_scheduler_starts_the_reconnect_deadline_too(clock):
    link = connected_link(clock, reconnect_timeout_s=5.0, silent_s=10.0)
    link.heard()  # the scheduler's `rejoin`: the caller reconnects without being told to
    link.hello_sent()
    assert link.state == "reconnecting"
    clock.advance(5.01)
    assert link.due() == GiveUp("did not come back within 5 s")


def test_a_welcome_again_resets_the_deadline_for_the_next_loss(clock):
    link = reconnecting_link(clock, silent_s=1.5, reconnect_timeout_s=5.0)
    clock.advance(4.0)
    assert link.welcomed() is True
    clock.advance(4.0)  # silent, but the caller expects nothing
    assert link.due(expecting=False) == WAIT
    assert link.due() == KEEPALIVE
    clock.advance(1.6)
    assert isinstance(link.due(), Reconnect)
    link.hello_sent()
    clock.advance(4.0)
    assert isinstance(link.due(), Reconnect)  # 9.6 s after the first loss: not given up
    link.hello_sent()
    clock.advance(1.01)
    assert link.due() == GiveUp("did not come back within 5 s")
