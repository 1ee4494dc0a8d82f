"""Big arguments off the control path (runtime/datastore.py): spooled by the client, read
or fetched by the executor, freed when no one needs them."""

from __future__ import annotations

import dataclasses
import os
import socket
import time

import pytest

from tests.stub import routable_host
from tidal.runtime import datastore as ds
from tidal.runtime import payloads
from tidal.runtime import protocol as p
from tidal.runtime.auth import generate_keys, load_peer_keys
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.datastore import DataStore, DataUnavailable, Reference, fetch_chunks
from tidal.workloads.synthetic import mirrored, total


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "spool_root", lambda: str(tmp_path))
    data = DataStore("client-1", root=str(tmp_path), bind_host=routable_host())
    yield data
    data.close()


def test_a_payload_is_read_back_in_pieces_on_this_host(store, monkeypatch):
    monkeypatch.setattr(ds, "PIECE_BYTES", 1000)
    payload = os.urandom(4_500)
    reference = store.put(payload)
    alone = dataclasses.replace(reference, address="")  # no server to ask: the file it is
    pieces = list(fetch_chunks(alone))
    assert [len(piece) for piece in pieces] == [1000] * 4 + [500]
    assert b"".join(pieces) == payload and reference.size == len(payload)


def test_only_files_in_a_spool_are_read_from_disk(store, tmp_path):
    secret = tmp_path.parent / "secret"
    secret.write_bytes(b"not for tasks")
    reference = Reference(store.host, str(secret), 13, "", "1")
    with pytest.raises(DataUnavailable, match="not on this host"):
        list(fetch_chunks(reference))


def test_another_host_fetches_it_from_the_owners_data_server(store, monkeypatch):
    monkeypatch.setattr(ds, "PIECE_BYTES", 1000)
    payload = os.urandom(2_500)
    reference = store.put(payload)
    assert reference.address.startswith(f"tcp://{routable_host()}:")
    pieces = list(fetch_chunks(reference, host="elsewhere"))
    assert b"".join(pieces) == payload and len(pieces) == 3


def test_with_cluster_keys_the_data_server_speaks_curve(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, "spool_root", lambda: str(tmp_path / "spool"))
    generate_keys(tmp_path / "keys")
    keys = load_peer_keys(tmp_path / "keys")
    store = DataStore(
        "client-1", root=str(tmp_path / "spool"), keys=keys, bind_host=routable_host()
    )
    try:
        payload = os.urandom(3_000)
        reference = store.put(payload)
        assert reference.server_key == keys.public.decode()
        opened = payloads.open_reference(payloads.pack_reference(reference))
        assert opened == reference
        assert ds.read_and_release(opened, host="elsewhere") == payload  # over CURVE
        # A peer that does not speak CURVE gets nothing (and the fetch gives up).
        plain = dataclasses.replace(reference, server_key="")
        with pytest.raises(DataUnavailable, match=r"did not answer within 0\.2 s"):
            list(fetch_chunks(plain, host="elsewhere", timeout_s=0.2))
    finally:
        store.close()


def test_the_data_server_can_advertise_another_address_for_nat(store, monkeypatch):
    with socket.socket() as probe:  # a free port to forward
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(ds.DATA_ADDRESS_ENV, f"{routable_host()}:{port}")
    payload = os.urandom(2_000)
    reference = store.put(payload)
    assert reference.address == f"tcp://{routable_host()}:{port}"  # what others are told
    assert ds.read_and_release(reference, host="elsewhere") == payload  # and it listens there
    for bad in ("host:port", ":7", "h/x"):
        monkeypatch.setenv(ds.DATA_ADDRESS_ENV, bad)
        with pytest.raises(ValueError, match="TIDAL_DATA_ADDRESS must be HOST or HOST:PORT"):
            ds.advertised_address()


def test_data_that_is_gone_is_a_clear_error_not_a_wait(store, monkeypatch):
    reference = store.put(b"x" * 100)
    store.drop([reference])
    with pytest.raises(DataUnavailable, match=r"100 bytes spooled at .* is gone from its owner"):
        list(fetch_chunks(reference))  # not here any more: asks the server, which has none
    other = store.put(b"y" * 100)
    store.close()  # the client left: no server either
    pieces = []
    with pytest.raises(DataUnavailable, match=r"did not answer within 0\.05 s"):
        pieces.extend(fetch_chunks(other, host="elsewhere", timeout_s=0.05))
    # While it waited it handed out empty pieces: record boundaries for the task.
    assert pieces and set(pieces) == {b""}


def test_a_result_read_on_its_host_is_deleted_by_its_reader(store):
    payload = os.urandom(5_000)
    reference = store.put(payload)
    assert ds.read_and_release(reference) == payload
    assert not os.path.exists(reference.path) and store.held() == []


def test_a_result_fetched_from_another_host_is_released_through_the_data_server(store, monkeypatch):
    monkeypatch.setattr(ds, "PIECE_BYTES", 1000)
    payload = os.urandom(2_500)
    reference = store.put(payload)
    assert ds.read_and_release(reference, host="elsewhere") == payload
    # The release is a request to the server that is not waited for: it lands soon after.
    deadline = time.monotonic() + 10
    while store.held() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert store.held() == []
    with pytest.raises(DataUnavailable, match="is gone from its owner"):
        ds.read_and_release(reference, host="elsewhere")


def test_results_no_one_fetched_expire_and_close_waits_only_so_long(store):
    old, new = store.put(b"o" * 10), store.put(b"n" * 10)
    an_hour_ago = time.time() - 3600
    os.utime(old.path, (an_hour_ago, an_hour_ago))
    assert store.expire(600) == 1 and store.held() == [new.path]
    started = time.monotonic()
    store.close(wait_s=0.05)  # no reader comes for `new`: deleted with the rest
    assert time.monotonic() - started >= 0.05 and not os.path.exists(store.folder)


def test_shared_keyword_arguments_are_read_from_the_spool_and_checked(store):
    shared = payloads.pack_payload(
        payloads.pack_reference(store.put(payloads.pack_payload({"k": 1})))
    )
    call = payloads.pack_call([[1]], {}, packed_kwargs=shared)
    assert payloads.open_task_call(call, fetch_chunks, lambda: None) == ([[1]], {"k": 1})
    not_a_map = payloads.pack_reference(store.put(payloads.pack_payload([1, 2])))
    call = payloads.pack_call([[1]], {}, packed_kwargs=payloads.pack_payload(not_a_map))
    with pytest.raises(p.ProtocolError, match="shared keyword arguments must be a map"):
        payloads.open_task_call(call, fetch_chunks, lambda: None)
    call = payloads.pack_call([[1]], {}, packed_kwargs=payloads.pack_payload(b"not a reference"))
    with pytest.raises(p.ProtocolError, match=r"must be \[args, kwargs\]"):
        payloads.open_task_call(call, fetch_chunks, lambda: None)


def test_only_a_spooled_file_named_by_its_key_is_read_here_and_loopback_is_not_tried_afar(
    store,
):
    reference = store.put(b"x" * 100)
    assert ds.local_file(reference) == os.path.realpath(reference.path)
    renamed = dataclasses.replace(reference, key="1-other", address="")
    with pytest.raises(DataUnavailable, match="not on this host and has no server"):
        list(fetch_chunks(renamed))  # its path is not its key's file: never read
    afar = dataclasses.replace(reference, host="elsewhere", address="tcp://127.0.0.1:1")
    with pytest.raises(DataUnavailable, match=r"listens on loopback only.*TIDAL_DATA_ADDRESS"):
        list(fetch_chunks(afar))  # at once, not after FETCH_TIMEOUT_S


def test_a_reader_never_deletes_a_file_in_its_own_spool(store):
    reference = store.put(b"mine" * 10)
    assert ds.read_and_release(reference, keep_folder=store.folder) == b"mine" * 10
    assert os.path.exists(reference.path)  # a result's reference named our own argument
    assert ds.read_and_release(reference) == b"mine" * 10 and not os.path.exists(reference.path)


def test_a_reference_with_an_unusable_address_or_key_is_refused_when_opened():
    for bad in (
        Reference("h", "/p", 3, "nonsense://x", "1"),
        Reference("h", "/p", 3, "tcp://x:1", "1", "short"),
    ):
        with pytest.raises(p.ProtocolError, match="reference must be"):
            payloads.open_reference(payloads.pack_reference(bad))
    # Past the check (a reference built here), a connection that cannot be made is named.
    odd = Reference("elsewhere", "/p", 3, "tcp://", "1")
    with pytest.raises(DataUnavailable, match="cannot connect to 'tcp://'"):
        list(fetch_chunks(odd))


def test_spooled_files_are_for_their_owners_user_only(store):
    reference = store.put(b"secret" * 10)
    assert os.stat(store.folder).st_mode & 0o777 == 0o700
    assert os.stat(reference.path).st_mode & 0o777 == 0o600


def test_a_dead_clients_spool_is_swept_by_the_next(tmp_path):
    stale = tmp_path / "gone-client"
    stale.mkdir()
    (stale / "owner.pid").write_text("12345")  # no one holds its lock: its owner died
    (stale / "1").write_bytes(b"old")
    foreign = tmp_path / "not-ours"
    foreign.mkdir()
    living = DataStore("client-1", root=str(tmp_path))  # holds its own lock
    store = DataStore("client-2", root=str(tmp_path))
    try:
        assert not stale.exists() and foreign.exists()
        assert os.path.exists(living.folder)
    finally:
        store.close()
        living.close()
    assert not os.path.exists(store.folder) and not os.path.exists(living.folder)


def test_a_spool_being_made_is_never_swept_by_another_process(tmp_path, monkeypatch):
    # Another process (a client, an executor) sweeps the root when it makes its own spool;
    # if it does so while this one is being made, this one must survive (the owner file
    # is seen only once it is locked). CI lost a spool folder so: its executor's results
    # then went through the scheduler, unspooled.
    real_flock, swept = ds.fcntl.flock, []

    def flock_after_a_sweep(file, flags):
        if not swept:  # the other process's sweep runs just before this one locks
            swept.append(True)
            ds.sweep_stale(str(tmp_path), keep="elsewhere")
        return real_flock(file, flags)

    monkeypatch.setattr(ds.fcntl, "flock", flock_after_a_sweep)
    store = DataStore("executor-1", root=str(tmp_path))
    try:
        assert swept and os.path.isdir(store.folder)
        assert os.listdir(store.folder) == ["owner.pid"]
        reference = store.put(b"x" * 10)
        assert os.path.exists(reference.path)
    finally:
        store.close()


def test_a_reference_payload_is_not_taken_for_msgpack_and_says_what_is_wrong():
    blob = payloads.pack_reference(Reference("h", "/p", 3, "tcp://x:1", "1"))
    assert payloads.is_reference(blob) and not payloads.is_reference(payloads.pack_call([1], {}))
    assert payloads.open_reference(blob).size == 3
    shape = r"must be \[host, path, size, address, key, server_key\]"
    with pytest.raises(p.ProtocolError, match=shape):
        payloads.open_reference(payloads.pack_reference(Reference("h", "/p", -1, "", "1")))


@pytest.mark.slow
def test_big_arguments_bypass_the_scheduler_and_are_freed_with_their_job():
    partitions = [list(range(i, i + 300_000)) for i in range(0, 900_000, 300_000)]
    with LocalCluster(executors=2) as cluster, Client(cluster) as client:
        before = client.status()["bad_input"]["bytes_in"]
        futures = client.map(total, partitions)
        assert [f.result(timeout=60) for f in futures] == [sum(part) for part in partitions]
        sent = sum(len(payloads.pack_call([part], {})) for part in partitions)
        through = client.status()["bad_input"]["bytes_in"] - before
        assert through < sent / 100  # references only
        folder = client._data.folder
        assert os.listdir(folder) == ["owner.pid"]  # each file went with its job
        small = client.submit(total, [1, 2, 3])  # small ones stay inline
        assert small.result(timeout=30) == 6 and os.listdir(folder) == ["owner.pid"]
    assert not os.path.exists(folder)


@pytest.mark.slow
def test_big_results_bypass_the_scheduler_and_are_freed_once_fetched():
    data = [os.urandom(300_000) for _ in range(3)]
    with LocalCluster(executors=2) as cluster, Client(cluster) as client:
        before = client.status()["bad_input"]["bytes_in"]
        alone = client.submit(mirrored, data[0])
        chunked = client.map(mirrored, data[1:], chunksize=2)  # subtasks' results too
        assert [f.result(timeout=60) for f in [alone, *chunked]] == [d[::-1] for d in data]
        through = client.status()["bad_input"]["bytes_in"] - before
        assert through < sum(map(len, data)) / 50  # references, both ways
        for future in [alone, *chunked]:  # each result was deleted as it was read
            folder = ds.spool_folder(future.statistics().executor_id)
            assert os.listdir(folder) == ["owner.pid"]


@pytest.mark.slow
def test_with_cluster_keys_big_arguments_and_results_still_bypass_the_scheduler():
    data = os.urandom(300_000)
    with LocalCluster(executors=1, keys=True) as cluster, Client(cluster) as client:
        before = client.status()["bad_input"]["bytes_in"]
        assert client.submit(mirrored, data).result(timeout=60) == data[::-1]
        assert client.status()["bad_input"]["bytes_in"] - before < len(data) / 50
