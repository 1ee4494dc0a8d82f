"""Authentication: key files, CURVE between the scheduler and its peers, clear refusals.

The scheduler runs in a thread of the test (real sockets, no processes) where a test only
needs clients, and in its own process (LocalCluster, the CLI, network namespaces) where
executors take part. Refusals are waited for as conditions with deadlines, never sleeps.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest
import zmq.auth

from tidal.runtime import auth
from tidal.runtime.auth import AuthenticationFailed, KeyFileError
from tidal.runtime.cli import main as cli
from tidal.runtime.client import Client
from tidal.runtime.cluster import LocalCluster
from tidal.runtime.processes import child_env, spawn_executor, stop_process
from tidal.scheduler.server import SchedulerServer
from tidal.scheduler.service import ANNOUNCEMENT
from tidal.workloads.synthetic import spin, total

# ---- key files -------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def public_key(path: Path) -> bytes:
    return zmq.auth.load_certificate(path)[0]


def test_keys_generate_writes_both_pairs_secrets_0600_and_authorises_the_peer(tmp_path):
    keys = tmp_path / "keys"
    written = auth.generate_keys(keys)
    assert sorted(p.relative_to(keys).as_posix() for p in written) == [
        "authorized/peer.key",
        "peer.key",
        "peer.key_secret",
        "scheduler.key",
        "scheduler.key_secret",
    ]
    assert mode(keys / "scheduler.key_secret") == 0o600
    assert mode(keys / "peer.key_secret") == 0o600
    assert mode(keys / "scheduler.key") == 0o644
    assert mode(keys) == 0o700
    # The authorised key is the peer's public key, and each secret file holds its pair.
    assert public_key(keys / "authorized" / "peer.key") == public_key(keys / "peer.key")
    assert public_key(keys / "peer.key_secret") == public_key(keys / "peer.key")
    assert public_key(keys / "scheduler.key") != public_key(keys / "peer.key")
    assert not [p for p in keys.iterdir() if p.name.startswith(".tidal-keys")]  # no scratch left
    peer = auth.load_peer_keys(keys)
    assert peer.server_public == public_key(keys / "scheduler.key")


def test_keys_generate_refuses_to_overwrite_unless_forced(tmp_path):
    auth.generate_keys(tmp_path)
    before = public_key(tmp_path / "scheduler.key")
    with pytest.raises(FileExistsError, match="refusing to overwrite existing keys"):
        auth.generate_keys(tmp_path)
    assert public_key(tmp_path / "scheduler.key") == before
    auth.generate_keys(tmp_path, force=True)
    assert public_key(tmp_path / "scheduler.key") != before
    assert mode(tmp_path / "scheduler.key_secret") == 0o600


def test_a_named_peer_gets_its_own_pair_ready_to_copy_and_is_authorised(tmp_path):
    auth.generate_keys(tmp_path)
    auth.generate_keys(tmp_path, peer="exec-1")
    home = tmp_path / "peers" / "exec-1"
    assert mode(home / "peer.key_secret") == 0o600
    assert public_key(tmp_path / "authorized" / "exec-1.key") == public_key(home / "peer.key")
    assert public_key(home / "peer.key") != public_key(tmp_path / "peer.key")
    # The folder is all another host needs: its pair and the scheduler's public key.
    assert auth.load_peer_keys(home).server_public == public_key(tmp_path / "scheduler.key")
    assert not (home / "scheduler.key_secret").exists()
    with pytest.raises(FileExistsError):
        auth.generate_keys(tmp_path, peer="exec-1")


def test_a_named_peer_needs_the_scheduler_key_and_a_plain_name(tmp_path):
    with pytest.raises(KeyFileError, match="tidal keys generate DIR"):
        auth.generate_keys(tmp_path, peer="exec-1")
    auth.generate_keys(tmp_path)
    for bad in ["../escape", "", "a b", ".hidden"]:
        with pytest.raises(ValueError, match="peer name"):
            auth.generate_keys(tmp_path, peer=bad)


def test_the_cli_generates_keys_and_refuses_to_overwrite_them(tmp_path, capsys):
    assert cli(["keys", "generate", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "scheduler.key_secret" in out and "--keys" in out
    assert cli(["keys", "generate", str(tmp_path / "k")]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cli(["keys", "generate", str(tmp_path / "k"), "--force"]) == 0
    capsys.readouterr()
    assert cli(["keys", "generate", f"{tmp_path / 'k'}/", "--peer", "w1"]) == 0
    assert (tmp_path / "k" / "authorized" / "w1.key").is_file()
    assert f"--keys {tmp_path / 'k' / 'peers' / 'w1'} " in capsys.readouterr().out


def test_missing_or_malformed_keys_are_named(tmp_path):
    with pytest.raises(KeyFileError, match=r"key directory .* not found"):
        auth.load_peer_keys(tmp_path / "nowhere")
    with pytest.raises(KeyFileError, match=r"peer\.key_secret not found"):
        auth.load_peer_keys(tmp_path)
    auth.generate_keys(tmp_path)
    (tmp_path / "scheduler.key").write_text('curve\n    public-key = "too-short"\n')
    with pytest.raises(KeyFileError, match=r"scheduler\.key holds a malformed key"):
        auth.load_peer_keys(tmp_path)
    shutil.rmtree(tmp_path / "authorized")
    with pytest.raises(KeyFileError, match="authorised keys"):
        auth.load_server_keys(tmp_path)


def test_loopback_addresses_are_told_from_reachable_ones():
    for address in ["tcp://127.0.0.1:5555", "tcp://127.0.0.2:1", "tcp://[::1]:5", "ipc:///x"]:
        assert auth.is_loopback(address), address
    for address in ["tcp://0.0.0.0:5555", "tcp://10.1.2.3:1", "tcp://[::]:5", "tcp://*:5"]:
        assert not auth.is_loopback(address), address


def test_authorized_keys_are_reread_when_they_change(tmp_path):
    auth.generate_keys(tmp_path)
    auth.generate_keys(tmp_path, peer="w1")
    refusals = []
    keys = auth._AuthorizedKeys(tmp_path / "authorized", refusals.append)
    peer = public_key(tmp_path / "peer.key")
    w1 = public_key(tmp_path / "peers" / "w1" / "peer.key")
    assert keys.callback("*", peer) and keys.callback("*", w1)
    assert refusals == []
    (tmp_path / "authorized" / "w1.key").unlink()  # revoked
    assert not keys.callback("*", w1)
    assert keys.callback("*", peer)
    assert len(refusals) == 1 and w1.decode() in refusals[0]
    shutil.copy(tmp_path / "peers" / "w1" / "peer.key", tmp_path / "authorized" / "again.key")
    assert keys.callback("*", w1)
    # A file that is not a key is skipped (logged), and lets no one in.
    (tmp_path / "authorized" / "junk.key").write_text("not a key\n")
    assert keys.callback("*", peer) and not keys.callback("*", b"x" * 40)


# ---- CURVE between a scheduler (in a thread) and clients --------------------------------------


@pytest.fixture
def keys(tmp_path):
    """A key directory, a named peer in it, and a second directory no one authorised."""
    auth.generate_keys(tmp_path / "keys")
    auth.generate_keys(tmp_path / "keys", peer="w1")
    auth.generate_keys(tmp_path / "other")
    return tmp_path


def stranger(tmp_path: Path) -> Path:
    """Keys for the right scheduler, but a peer pair it never authorised."""
    home = tmp_path / "stranger"
    home.mkdir()
    for name in ("peer.key", "peer.key_secret"):
        shutil.copy(tmp_path / "other" / name, home / name)
    shutil.copy(tmp_path / "keys" / "scheduler.key", home / "scheduler.key")
    return home


# The scheduler thread looks at its stop flag every tick (half a heartbeat).
FAST_TICK_NS = 20_000_000


@pytest.fixture
def keyed_scheduler(keys):
    """A SchedulerServer with keys, serving in a thread; stopped and closed by the fixture."""
    server = SchedulerServer(
        "tcp://127.0.0.1:*", keys=keys / "keys", realtime=False, heartbeat_ns=FAST_TICK_NS
    )
    thread = threading.Thread(target=server.serve, name="test-scheduler", daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(timeout=10)
    server.close()


class LogWaiter(logging.Handler):
    """Collects the messages of one logger, from any thread; a test waits for one."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._changed = threading.Condition()
        self._logger = logging.getLogger(logger)

    def __enter__(self) -> LogWaiter:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.messages.append(record.getMessage())
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        with self._changed:
            found = self._changed.wait_for(lambda: [m for m in self.messages if text in m], timeout)
        assert found, f"no log line with {text!r} within {timeout} s: {self.messages}"
        return found[0]


@pytest.mark.slow  # refusals without detail are retried (~0.1 s each) before they count
def test_authorised_clients_get_in_and_others_are_refused_with_the_reason(keyed_scheduler, keys):
    address = keyed_scheduler.address
    with LogWaiter("tidal.auth") as log, Client(address, keys=keys / "keys", timeout=10) as first:
        assert first.ping() >= 0
        with pytest.raises(AuthenticationFailed, match=r"refused our key \(CURVE authentication"):
            Client(address, keys=stranger(keys), timeout=10)
        refused = log.wait_for("is not in")
        assert auth.load_peer_keys(keys / "stranger").public.decode() in refused  # its key
        with pytest.raises(AuthenticationFailed, match="requires CURVE keys and we have none"):
            Client(address, timeout=10)
        with pytest.raises(AuthenticationFailed, match=r"scheduler\.key is not this scheduler"):
            Client(address, keys=keys / "other", timeout=10)
        log.wait_for("refused a connection on")
        # The scheduler kept serving the client that got in, and lets in another one.
        assert first.ping() >= 0
        with Client(address, keys=keys / "keys" / "peers" / "w1", timeout=10) as second:
            assert second.status()["executors"] == []


def test_a_revoked_key_is_refused_without_restarting_the_scheduler(keyed_scheduler, keys):
    w1 = keys / "keys" / "peers" / "w1"
    with Client(keyed_scheduler.address, keys=w1, timeout=10) as client:
        assert client.ping() >= 0
    (keys / "keys" / "authorized" / "w1.key").unlink()
    with pytest.raises(AuthenticationFailed, match="refused our key"):
        Client(keyed_scheduler.address, keys=w1, timeout=10)


@pytest.mark.slow
def test_a_client_with_keys_is_told_when_the_scheduler_has_none(keys):
    server = SchedulerServer("tcp://127.0.0.1:*", realtime=False, heartbeat_ns=FAST_TICK_NS)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        with pytest.raises(
            AuthenticationFailed, match=r"does not use CURVE keys|runs without keys"
        ):
            Client(server.address, keys=keys / "keys", timeout=10)
    finally:
        server.stop()
        thread.join(timeout=10)
        server.close()


def test_binding_beyond_loopback_without_keys_warns_and_with_keys_does_not(keys, caplog):
    caplog.set_level(logging.WARNING, logger="tidal.scheduler")
    for bind, options, warned in [
        ("tcp://127.0.0.1:*", {}, False),
        ("tcp://0.0.0.0:*", {"keys": keys / "keys"}, False),
        ("tcp://0.0.0.0:*", {}, True),
    ]:
        caplog.clear()
        server = SchedulerServer(bind, realtime=False, **options)
        server.close()
        warnings = [r.getMessage() for r in caplog.records if "without keys" in r.getMessage()]
        assert bool(warnings) == warned, (bind, options, warnings)
    assert "unauthenticated and unencrypted" in warnings[0]


def test_a_scheduler_with_a_bad_key_directory_fails_naming_it_and_binds_nothing(tmp_path):
    with pytest.raises(KeyFileError, match=r"scheduler\.key_secret not found"):
        SchedulerServer("tcp://127.0.0.1:*", keys=tmp_path, realtime=False)


# ---- real processes ------------------------------------------------------------------------


@pytest.mark.slow
def test_an_authorised_executor_and_client_run_jobs_over_curve(keys):
    with LocalCluster(executors=1, keys=keys / "keys") as cluster:
        # A second executor with its own, named key joins the same cluster.
        named = spawn_executor(
            cluster.address, node="named", extra_args=["--keys", str(keys / "keys/peers/w1")]
        )
        try:
            with Client(cluster) as client:  # the cluster's keys
                client.wait_for_status(lambda s: len(s["executors"]) == 2)
                partitions = [list(range(i, i + 100)) for i in range(0, 1000, 100)]
                futures = client.map(total, partitions)
                assert client.gather(futures, timeout=60) == [sum(p) for p in partitions]
                nodes = {s["node"] for s in client.status()["executors"]}
                assert nodes == {"local-0", "named"}
        finally:
            stop_process(named)


@pytest.mark.slow
def test_a_cluster_can_make_its_own_keys_and_removes_them():
    with LocalCluster(executors=1, keys=True) as cluster, Client(cluster) as client:
        assert client.submit(total, [1, 2, 3]).result(timeout=30) == 6
        made = Path(cluster.keys)
        assert (made / "scheduler.key_secret").is_file()
        with pytest.raises(AuthenticationFailed):
            Client(cluster.address, timeout=10)
    assert not made.exists()


@pytest.mark.slow
def test_executors_and_clients_reconnect_with_their_keys_to_a_restarted_scheduler():
    parts = [list(range(i * 200, (i + 1) * 200)) for i in range(4)]
    with (
        LocalCluster(executors=2, keys=True, heartbeat_ms=100) as cluster,
        Client(cluster) as client,
    ):
        batch = client.map(spin, parts, record_us=1_000.0)  # ~0.2 s each
        client.wait_for_status(lambda s: sum(e["running"] is not None for e in s["executors"]))
        cluster.restart_scheduler()
        assert client.submit(total, [4, 5], priority="stream").result(timeout=60) == 9
        assert client.gather(batch, timeout=120) == [sum(p) for p in parts]
        assert client.reconnects >= 1
        status = client.wait_for_status(
            lambda s: sum(e["state"] == "alive" for e in s["executors"]) == 2, timeout=60
        )
        assert status["restarts"] == 1


@pytest.mark.slow
def test_an_executor_with_an_unauthorised_key_exits_with_the_reason(keys):
    with LocalCluster(executors=1, keys=keys / "keys") as cluster:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidal",
                "executor",
                "--scheduler",
                cluster.address,
                "--keys",
                str(stranger(keys)),
            ],
            env=child_env(),
            stderr=subprocess.PIPE,
        )
        try:
            _, err = process.communicate(timeout=30)
        finally:
            stop_process(process)
        assert process.returncode == 2
        assert b"refused our key (CURVE authentication failed)" in err
        with Client(cluster) as client:  # the cluster still serves its own
            assert client.submit(total, [5]).result(timeout=30) == 5
            assert len(client.status()["executors"]) == 1


@pytest.mark.slow
def test_the_cli_takes_keys_for_status_and_policy_and_refuses_without(keys, capsys):
    with LocalCluster(executors=1, keys=keys / "keys") as cluster:
        address = cluster.address
        assert cli(["status", "--scheduler", address, "--json", "--keys", cluster.keys]) == 0
        assert '"policy": "lb"' in capsys.readouterr().out
        assert cli(["policy", "set", "fifo", "--scheduler", address, "--keys", cluster.keys]) == 0
        assert cli(["status", "--scheduler", address]) == 1
        assert "requires CURVE keys" in capsys.readouterr().err
        assert cli(["status", "--scheduler", address, "--keys", str(keys / "nowhere")]) == 1
        assert "key directory" in capsys.readouterr().err


@pytest.mark.slow
def test_the_scheduler_cli_warns_when_it_listens_beyond_loopback_without_keys(keys):
    for extra, warned in [([], True), (["--keys", str(keys / "keys")], False)]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tidal",
                "scheduler",
                "--bind",
                "tcp://0.0.0.0:*",
                "--announce",
                *extra,
            ],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert read_line(process.stdout, 30).startswith(ANNOUNCEMENT)
        finally:
            stop_process(process)
        err = process.stderr.read().decode()
        process.stdout.close()
        process.stderr.close()
        assert ("unauthenticated and unencrypted" in err) == warned, err


def read_line(stream, timeout: float) -> str:
    """One line of a child's output, or AssertionError after `timeout` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        assert selector.select(timeout), f"no line within {timeout} s"
    return stream.readline().decode(errors="replace")


# ---- two hosts: network namespaces joined by a veth pair -----------------------------------


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_hosts():
    """Two network namespaces ("scheduler host", "worker host") joined by a veth pair,
    10.213.0.1 and 10.213.0.2; removed afterwards, also when the test fails."""
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        pytest.skip("ip netns needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
    tag = uuid.uuid4().hex[:6]  # unique, as other test runs may share this host
    hosts = {"scheduler": f"tidal-{tag}-s", "worker": f"tidal-{tag}-w"}
    links = (f"td{tag}s", f"td{tag}w")  # at most 15 characters
    made: list[str] = []
    try:
        for ns in hosts.values():
            done = ip("netns", "add", ns)
            if done.returncode != 0:
                pytest.skip(f"`ip netns add` is not permitted here: {done.stderr.strip()}")
            made.append(ns)
        steps = [
            ("link", "add", links[0], "type", "veth", "peer", "name", links[1]),
            ("link", "set", links[0], "netns", hosts["scheduler"]),
            ("link", "set", links[1], "netns", hosts["worker"]),
            ("-n", hosts["scheduler"], "addr", "add", "10.213.0.1/24", "dev", links[0]),
            ("-n", hosts["worker"], "addr", "add", "10.213.0.2/24", "dev", links[1]),
            ("-n", hosts["scheduler"], "link", "set", links[0], "up"),
            ("-n", hosts["worker"], "link", "set", links[1], "up"),
            ("-n", hosts["scheduler"], "link", "set", "lo", "up"),
            ("-n", hosts["worker"], "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = ip(*step)
            if done.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` is not permitted here: {done.stderr.strip()}")
        yield hosts
    finally:
        for ns in made:  # deleting a namespace deletes the veth end inside it
            ip("netns", "del", ns)
        for link in links:  # in case one was left in this namespace
            if ip("link", "show", link).returncode == 0:
                ip("link", "del", link)


def in_host(ns: str, *args: str, **options) -> subprocess.Popen:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, *args], env=child_env(), **options
    )


CLIENT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from tidal.runtime.client import AuthenticationFailed, Client
    from tidal.workloads.synthetic import spin, total

    address, keys = sys.argv[1], sys.argv[2]
    try:
        Client(address, timeout=20)
        refused = None
    except AuthenticationFailed as exc:
        refused = str(exc)
    with Client(address, keys=keys, timeout=20) as client:
        client.wait_for_status(lambda s: len(s["executors"]) == 2, timeout=60)
        parts = [list(range(i, i + 50)) for i in range(0, 500, 50)]
        futures = client.map(total, parts)
        results = client.gather(futures, timeout=60)
        nodes = sorted(e["node"] for e in client.status()["executors"])
        print(json.dumps({"results": results, "expected": [sum(p) for p in parts],
                          "nodes": nodes, "refused": refused}))
    """
)


@pytest.mark.slow
def test_a_scheduler_and_its_executors_on_two_hosts_over_tcp_with_curve(two_hosts, tmp_path):
    keys = tmp_path / "keys"
    auth.generate_keys(keys)
    auth.generate_keys(keys, peer="worker")
    worker_keys = keys / "peers" / "worker"  # what the worker host gets: no scheduler secret
    processes = []
    try:
        scheduler = in_host(
            two_hosts["scheduler"],
            *("-m", "tidal", "scheduler", "--bind", "tcp://10.213.0.1:*"),
            *("--keys", str(keys), "--announce"),
            stdout=subprocess.PIPE,
        )
        processes.append(scheduler)
        line = read_line(scheduler.stdout, 30)
        assert line.startswith(ANNOUNCEMENT), line
        address = line[len(ANNOUNCEMENT) :].strip()
        assert address.startswith("tcp://10.213.0.1:")
        for i in range(2):
            processes.append(
                in_host(
                    two_hosts["worker"],
                    *("-m", "tidal", "executor", "--scheduler", address),
                    *("--keys", str(worker_keys), "--node", f"worker-{i}"),
                )
            )
        client = in_host(
            two_hosts["worker"],
            *("-c", CLIENT_SCRIPT, address, str(worker_keys)),
            stdout=subprocess.PIPE,
        )
        processes.append(client)
        out, _ = client.communicate(timeout=90)
        assert client.returncode == 0, out
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report["results"] == report["expected"]
        assert report["nodes"] == ["worker-0", "worker-1"]
        assert "requires CURVE keys and we have none" in report["refused"]
    finally:
        for process in reversed(processes):
            stop_process(process)
            if process.stdout is not None:
                process.stdout.close()
