"""Hostile requests at a data server (runtime/datastore.py), which anyone who can reach its
port may send: each gets an error answer or none, no file outside its spool is read or
deleted, and it goes on serving and releasing real payloads."""

from __future__ import annotations

import os
import pathlib
import random

import msgpack
import pytest
import zmq

from tests.stub import routable_host
from tidal.runtime import datastore as ds
from tidal.runtime.datastore import DataStore

SEED = int(os.environ.get("TIDAL_FUZZ_SEED", "1"))


def requests(rng: random.Random, key: str, secret: str) -> list[list[bytes]]:
    """Frames a confused or hostile peer might send, most of them one frame (`secret`: a
    file outside the spool, two folders up, that must survive them)."""
    values = [
        key,
        "owner.pid",
        "../../secret",
        secret,
        ".hidden",
        "",
        "x" * 10_000,
        -1,
        -2,
        0,
        2**63,
        1.5,
        None,
        [key],
        {"key": key},
        b"\x00",
    ]
    frames = []
    for _ in range(2_000):
        kind = rng.randrange(5)
        if kind == 0:
            frames.append([rng.randbytes(rng.randrange(1, 64))])
        elif kind == 1:
            shape = [rng.choice(values) for _ in range(rng.randrange(0, 5))]
            frames.append([msgpack.packb(shape, use_bin_type=True)])
        elif kind == 2:
            frames.append([msgpack.packb([rng.choice(values), rng.choice(values), 10])])
        elif kind == 3:  # several frames in one message
            frames.append([msgpack.packb([key, 0, 10]), b"more"])
        else:
            frames.append(
                [msgpack.packb([rng.choice(["../../secret", secret, "owner.pid", ".."])])]
            )
    return frames


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_hostile_requests_never_stop_a_data_server_nor_reach_outside_its_spool(tmp_path, seed):
    rng = random.Random(seed)
    spool = tmp_path / "spool"
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for peers")
    store = DataStore("owner", root=str(spool), bind_host=routable_host())
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.linger = 0
    try:
        kept = store.put(os.urandom(5_000))
        released = store.put(os.urandom(100))
        peer.connect(kept.address)
        peer.rcvtimeo = 10_000
        for frames in requests(rng, released.key, str(secret)):
            peer.send_multipart(frames)
            answer = peer.recv_multipart()  # every request is answered, nothing hangs
            size = msgpack.unpackb(answer[0])
            assert size == -1 or size in (0, released.size)
        assert secret.read_bytes() == b"not for peers"
        assert os.path.exists(os.path.join(store.folder, "owner.pid"))
        # Still serving: a real fetch from another host reads what it kept.
        fetched = b"".join(ds.fetch_chunks(kept, context, host="elsewhere"))
        assert fetched == pathlib.Path(kept.path).read_bytes()
        assert ds.read_and_release(kept, host="elsewhere") == fetched
    finally:
        peer.close()
        context.term()
        store.close()
