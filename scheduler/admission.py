"""What a frame from a peer may cost the scheduler, decided before it is decoded.

A peer that has not said who it is may send only small frames (MAX_STRANGER_FRAME_BYTES), and no
batches: a stranger's 500 KB batch of 100,000 junk items once held the scheduler's loop for
2.5 s. Executors and clients that said hello send batches of at most MAX_BATCH_ITEMS,
decoded item by item (scheduler/server.py). `refusal_before_decoding` says which frames are
refused unread; scheduler/server.py drops them as bad input (an `OutOfPlace` one is logged
but not counted toward disconnection). `check_id` bounds the ids peers choose.
"""

from __future__ import annotations

from tidal.runtime import batches
from tidal.runtime import protocol as p
from tidal.scheduler.events import SubmitUnreadable

__all__ = [
    "BatchBeforeHello",
    "OutOfPlace",
    "UnreadableSubmits",
    "check_attach",
    "check_id",
    "refusal_before_decoding",
]

# The submits (each a core step) and task ids of a client's frame that does not decode that
# are answered, at most: a batch within a batch once made one frame 65,536 core steps.
UNREADABLE_SUBMITS = 64
UNREADABLE_IDS = 10_000


class OutOfPlace(p.ProtocolError):
    """A well-formed message that is only out of place (an attach in another protocol
    version). Dropped and logged, but not counted toward disconnection: a peer of another
    version, or one reconnecting after a scheduler restart, sends it in good faith."""


class BatchBeforeHello(OutOfPlace):
    """A batch from a connection that has not said hello: most likely a peer of a scheduler
    that ran on this address before (the server asks it to say hello again)."""


# How every batch frame starts (`encode` packs ["batch", [...]] so): a fixarray of two, then
# the fixstr "batch". A batch packed any other way is refused after decoding
# (scheduler/server.py).
_BATCH_START = b"\x92\xa5batch"


def check_attach(msg: p.Attach, token: str | None, known: bool) -> None:
    """ProtocolError unless `msg` may make its connection a report connection of executor
    `msg.executor_id`: this protocol's version, a sound id, the token that executor's
    welcome gave (`token`), a connection that is no one's yet (not `known`). OutOfPlace,
    not counted, for a version or token another scheduler may have given in good faith."""
    if msg.version != p.PROTOCOL_VERSION:
        raise OutOfPlace(f"attach with protocol version {msg.version}")
    check_id("attach", msg.executor_id)
    if msg.token != token:
        raise OutOfPlace(f"attach as executor {msg.executor_id} with a wrong token")
    if known:  # an attach opens a connection; it cannot re-map one
        raise p.ProtocolError("attach on a connection that said who it is already")


def check_id(op: str, peer_id: str) -> None:
    """Refuse a peer id outside 1..MAX_ID_CHARS characters (ids appear in logs and status)."""
    if len(peer_id) > p.MAX_ID_CHARS or not peer_id:
        raise p.ProtocolError(
            f"{op} with an id of {len(peer_id):,} characters (1 to {p.MAX_ID_CHARS})"
        )


def refusal_before_decoding(
    frames: list[bytes], peer: tuple[str, str] | None
) -> p.ProtocolError | None:
    """Why a frame is refused undecoded (None: decode it): too big, or a batch, from a peer
    that has not said hello."""
    if len(frames) != 2:
        return None  # decode_parts names that
    frame = frames[1]
    if peer is None and len(frame) > p.MAX_STRANGER_FRAME_BYTES:
        return p.ProtocolError(
            f"a frame of {len(frame):,} bytes before hello (at most {p.MAX_STRANGER_FRAME_BYTES:,})"
        )
    if peer is None and frame[:7] == _BATCH_START:
        # An executor or a client of a scheduler that ran here before: not counted.
        return BatchBeforeHello("batch before hello")
    return None


class UnreadableSubmits:
    """The submits in a registered client's frames that did not decode, as core events that
    fail their readable tasks at the client with the reason, rather than leave them waiting
    for ever: read with `batches.submit_ids`, never from a frame over `max_frame_bytes`, and
    at most UNREADABLE_SUBMITS and UNREADABLE_IDS for one frame, its batch items and all
    (`new_frame` starts the count again)."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._room = [UNREADABLE_SUBMITS, UNREADABLE_IDS]

    def new_frame(self) -> None:
        self._room = [UNREADABLE_SUBMITS, UNREADABLE_IDS]

    def events(
        self, peer: tuple[str, str] | None, frame: object, exc: p.ProtocolError
    ) -> list[SubmitUnreadable]:
        """What the core should hear of `frame` from `peer`, which did not decode as `exc`."""
        room = self._room
        if peer is None or peer[0] != "client" or type(frame) is not bytes:
            return []
        if len(frame) > self.max_frame_bytes or min(room) <= 0:
            return []
        found = batches.submit_ids(frame, most_submits=room[0], most_ids=room[1])
        room[0] -= len(found)
        room[1] -= sum(1 if ids is None else len(ids) for _, ids in found)
        problem = f"its submit did not decode: {str(exc)[:300]}"
        return [SubmitUnreadable(peer[1], job_id, ids, problem) for job_id, ids in found]
