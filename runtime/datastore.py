"""Big payloads off the control path: spooled by the process that has them, fetched directly.

A task's arguments of DATA_THRESHOLD bytes or more never pass through the scheduler: the
client writes them to a file of its own in a RAM-backed spool (`/dev/shm`), and the payload
that travels in `submit` and `launch` is a small *reference* to it (runtime/payloads.py:
`pack_reference`). The executor that runs the task reads the file if it is on the same host,
and otherwise asks the client's data server for it, on a connection of its own, a piece at
a time. The scheduler forwards, journals and resends only the reference.

Who frees what: the client deletes a job's files once none of its futures is pending (each
completed, failed or cancelled) and its whole spool folder when it closes; a client that dies
without closing leaves a folder whose `owner.pid` no longer runs, which the next client on
the host sweeps away. A task whose data is gone (its client left) fails with DataUnavailable.

Discussion: why not through the scheduler. Its one loop decoded, journaled and re-sent every
byte: one job of two 2.9 MB partitions cost it ~40 ms of commit and ~10 ms of sends, and the
first stream task after it waited that out (docs/notes.md). A file in `/dev/shm` costs one
write by the client and one read by the executor, and no other process touches the bytes.

Big results take the same path the other way (runtime/results.py): the executor spools
them, the client reads or fetches each one and then deletes it (`read_and_release`).

Discussion: security. On a cluster with CURVE keys (runtime/auth.py) the data server is a
CURVE server with its owner's key pair, and a reference carries that public key, so the
bytes are encrypted between hosts as the control messages are. The server does not check
who connects (it has no list of authorised keys: only the scheduler does); what it hands
out is guarded by the key in each reference, 64 random bits that travel only on the
authenticated control path. Without cluster keys the data server, like the scheduler,
is meant for a trusted network (it binds loopback for a local scheduler).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import msgpack
import zmq

from tidal.runtime.auth import PeerKeys, is_loopback

__all__ = [
    "DATA_THRESHOLD",
    "DataAddressError",
    "DataStore",
    "DataUnavailable",
    "Reference",
    "bind_host_for",
    "fetch_chunks",
    "read_and_release",
    "release",
    "spool_folder",
    "spool_root",
    "sweep_stale",
]

log = logging.getLogger("tidal.datastore")

# Payloads this big or bigger are spooled. Below it a payload is cheaper inline: a file
# write and read cost ~20-40 us each, a 64 KiB frame ~10 us through each hop.
DATA_THRESHOLD = 64 * 1024
# The executor reads (or fetches) a payload this much at a time, with a record boundary
# between pieces: ~0.2-0.5 ms each from /dev/shm, ~1 ms over loopback TCP.
PIECE_BYTES = 1024 * 1024
# How long an executor waits for a client's data server to answer one request, looking
# up (an empty piece: a record boundary) every WAIT_SLICE_S.
FETCH_TIMEOUT_S = 30.0
WAIT_SLICE_S = 0.005
_OWNER_FILE = "owner.pid"


class DataUnavailable(RuntimeError):
    """A task's spooled data cannot be had: its client is gone, or its file was deleted."""


@dataclass(frozen=True, slots=True)
class Reference:
    """Where a spooled payload is: a file on `host`, served by `address` (any host)."""

    host: str
    path: str
    size: int
    address: str  # the owner's data server ("" if it has none)
    key: str
    server_key: str = ""  # the data server's CURVE public key (z85), "" without keys

    def describe(self) -> str:
        return f"{self.size:,} bytes spooled at {self.host}:{self.path}"


def spool_root() -> str:
    """Where spools go: RAM-backed `/dev/shm` where it exists, else the temp directory."""
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
    return os.path.join(base, "tidal-spool")


class DataStore:
    """One process's spool of big payloads, and the server that hands them to other hosts.

    `put(payload)` writes the bytes to a new file and returns its Reference; `drop(keys)`
    deletes files; `close()` stops the server and deletes the folder. The server (a thread
    with a ROUTER socket on `bind_host`) starts with the first `put`.
    """

    def __init__(
        self,
        owner_id: str,
        *,
        bind_host: str = "127.0.0.1",
        root: str | None = None,
        keys: PeerKeys | None = None,
    ):
        self.owner_id = owner_id
        self.keys = keys  # the owner's CURVE pair, which its data server uses too
        self.root = root or spool_root()
        self.folder = spool_folder(owner_id, self.root)
        self.bind_host = bind_host
        os.makedirs(self.folder, mode=0o700, exist_ok=True)  # its owner's user only
        # Held locked while this store lives: a folder whose owner file no one holds is
        # stale (its process died), whatever its pid says (pids are reused, and containers
        # sharing /dev/shm do not share them).
        # Discussion: locked under another name, then renamed: another process sweeping
        # the root between this file's creation and its lock took the folder for a dead
        # one's and deleted it (CI saw it: the executor's results then went unspooled).
        making = os.path.join(self.folder, f".{_OWNER_FILE}.{secrets.token_hex(4)}")
        self._owner = open(making, "w")  # noqa: SIM115
        fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._owner.write(str(os.getpid()))
        self._owner.flush()
        os.rename(making, os.path.join(self.folder, _OWNER_FILE))
        sweep_stale(self.root, keep=self.folder)
        self._keys = itertools.count(1)
        self._server: _DataServer | None = None
        self._lock = threading.Lock()
        self.host = socket.gethostname()

    def put(self, payload: bytes) -> Reference:
        """Spool `payload`; the reference to send in its place."""
        # Not guessable: anyone who can reach the data server could otherwise ask for them.
        key = f"{next(self._keys)}-{secrets.token_hex(8)}"
        path = os.path.join(self.folder, key)
        try:
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(payload)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        with self._lock:
            if self._server is None:
                self._server = _DataServer(self.folder, self.bind_host, self.keys)
            address = self._server.address
        server_key = "" if self.keys is None else self.keys.public.decode()
        return Reference(self.host, path, len(payload), address, key, server_key)

    def drop(self, references: list[Reference]) -> None:
        """Delete these spooled payloads (missing ones are ignored)."""
        for reference in references:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(reference.path)

    def held(self) -> list[str]:
        """The paths of the payloads spooled here and not yet deleted."""
        with os.scandir(self.folder) as entries:  # (keys never start with ".")
            return [
                e.path
                for e in entries
                if e.name[0] != "." and e.name != _OWNER_FILE and e.is_file()
            ]

    def expire(self, max_age_s: float, keep: Collection[str] = ()) -> int:
        """Delete the payloads spooled more than `max_age_s` ago (but the paths in `keep`);
        how many went."""
        cutoff, gone = time.time() - max_age_s, 0
        for path in self.held():
            if path in keep:
                continue
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
                    gone += 1
        return gone

    def close(self, wait_s: float = 0.0) -> None:
        """Stop the data server and delete every spooled payload (and the folder), after
        waiting up to `wait_s` for their readers to release them (`read_and_release`)."""
        deadline = time.monotonic() + wait_s
        while wait_s > 0 and self.held() and time.monotonic() < deadline:
            time.sleep(0.05)  # readers on other hosts release through the server, still up
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        self._owner.close()  # releases its lock


def sweep_stale(root: str, keep: str) -> None:
    """Delete spool folders under `root` whose owner no longer holds its lock."""
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        folder = os.path.join(root, name)
        if folder == keep:
            continue
        try:
            owner = open(os.path.join(folder, _OWNER_FILE))  # noqa: SIM115
        except OSError:
            continue  # not a spool, or being created: leave it
        with owner:
            try:
                fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner lives
            shutil.rmtree(folder, ignore_errors=True)


def spool_folder(owner_id: str, root: str | None = None) -> str:
    """The folder of `owner_id`'s spool (under `root`, by default `spool_root()`)."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in owner_id)[:120]
    return os.path.join(root or spool_root(), name)


class _DataServer:
    """Serves a spool folder's files to other hosts: a request `[key, offset, length]`
    gets `[size, piece]` (size -1 and an error message if there is no such file); a
    request `[key]` deletes the file (its reader is done with it) and gets `[0, b""]`."""

    def __init__(self, folder: str, bind_host: str, keys: PeerKeys | None) -> None:
        self._folder = folder
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.linger = 0
        if keys is not None:  # encrypted; anyone may connect (see the module docstring)
            self._socket.curve_server = True
            self._socket.curve_secretkey = keys.secret
            self._socket.curve_publickey = keys.public
        advertised, port = advertised_address()
        where = f"tcp://{'*' if advertised else bind_host}:{port or '*'}"
        try:
            if advertised and advertised.startswith("["):
                self._socket.ipv6 = True
            self._socket.bind(where)
        except zmq.ZMQError as exc:
            self._socket.close()
            self._context.term()
            raise OSError(f"the data server cannot listen on {where}: {exc}") from None
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if advertised:  # others reach it by another address (NAT, a proxy)
            self.address = f"tcp://{advertised}:{self.address.rsplit(':', 1)[1]}"
        self._stop = self._context.socket(zmq.PAIR)
        self._stop.bind(f"inproc://stop-{id(self)}")
        self._thread = threading.Thread(target=self._serve, name="tidal-data", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with contextlib.suppress(zmq.Again):  # a thread that died takes no stop frame
            self._stop.send(b"", zmq.NOBLOCK)
        self._thread.join(timeout=10)
        self._stop.close(linger=0)
        if not self._thread.is_alive():  # term() would wait for its socket for ever
            self._context.term()

    def _serve(self) -> None:
        stop = self._context.socket(zmq.PAIR)
        stop.connect(f"inproc://stop-{id(self)}")
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if stop in ready:
                    return
                with contextlib.suppress(zmq.Again):
                    while True:
                        frames = self._socket.recv_multipart(zmq.NOBLOCK)
                        self._socket.send_multipart([frames[0], *self._answer(frames[1:])])
        finally:
            stop.close(linger=0)
            self._socket.close(linger=0)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        try:
            request = msgpack.unpackb(frames[0]) if len(frames) == 1 else None
            if type(request) is list and len(request) == 1:  # [key]: its reader is done
                request = [*request, -1, 0]
            key, offset, length = request if type(request) is list else (0, 0, 0)
            if not (is_key(key) and type(offset) is int and offset >= -1 and type(length) is int):
                raise ValueError("a request is [key, offset, length], or [key] to release it")
            if offset == -1:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self._folder, key))
                return [msgpack.packb(0), b""]
            with open(os.path.join(self._folder, key), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(offset)
                piece = f.read(max(0, min(length, PIECE_BYTES)))
            return [msgpack.packb(size), piece]
        except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
            return [msgpack.packb(-1), str(exc)[:200].encode()]


def is_key(key: object) -> bool:
    """Whether `key` may name a spooled payload: a plain file name in a spool's folder, never
    its owner file, a hidden name or a path."""
    return (
        type(key) is str
        and key != ""
        and os.path.basename(key) == key
        and not key.startswith(".")
        and key != _OWNER_FILE
        and "\0" not in key
    )


def local_file(reference: Reference, host: str | None = None) -> str | None:
    """The file a reference names, if this process may read (and its reader delete) it
    here: on this host, in a spool, named by the reference's key; else None (fetch it).

    Discussion: a reference names a path, and a peer's reference must not make an executor
    read, or a client delete, whatever file it names."""
    if (host or socket.gethostname()) != reference.host or not is_key(reference.key):
        return None
    path = os.path.realpath(reference.path)
    if os.path.basename(path) != reference.key:
        return None
    if not path.startswith(os.path.realpath(spool_root()) + os.sep):
        return None
    return path


def fetch_chunks(
    reference: Reference,
    context: zmq.Context | None = None,
    host: str | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
    *,
    release: bool = False,
) -> Iterator[bytes]:
    """The spooled payload's bytes, a piece at a time: read from the file when it is on this
    host, else fetched from its owner's data server (empty pieces while it waits for an
    answer). DataUnavailable if neither has it. With `release`, a fetched payload's owner
    is told to delete it after the last piece (a local file is the reader's to delete)."""
    path = local_file(reference, host)
    if path is not None:
        try:
            f = open(path, "rb")  # noqa: SIM115 (closed below, between yields)
        except OSError:
            pass  # same name, another machine (or deleted, or not ours to read): ask the server
        else:
            with f:
                while piece := f.read(PIECE_BYTES):
                    yield piece
            return
    if not reference.address:
        raise DataUnavailable(f"{reference.describe()} is not on this host and has no server")
    if reference.host != (host or socket.gethostname()) and is_loopback(reference.address):
        raise DataUnavailable(
            f"{reference.describe()}: its owner's data server listens on loopback only (it "
            f"reaches the scheduler by loopback); set {DATA_ADDRESS_ENV} on {reference.host} "
            "to an address this host can reach"
        )
    yield from _fetch_remote(reference, context, timeout_s, release)


def read_and_release(
    reference: Reference,
    host: str | None = None,
    timeout_s: float = FETCH_TIMEOUT_S,
    *,
    stopped: Callable[[], bool] = lambda: False,
    keep_folder: str | None = None,
) -> bytes:
    """A spooled payload's bytes, whole (read or fetched as `fetch_chunks` does); then it is
    deleted: this reader was the one its owner kept it for (a task's result). `stopped()`
    is asked between pieces (DataUnavailable when it says so); a file in `keep_folder` (the
    reader's own spool) is never deleted here."""
    pieces = []
    for piece in fetch_chunks(reference, None, host, timeout_s, release=True):
        if stopped():
            raise DataUnavailable(f"{reference.describe()}: its reader stopped")
        if piece:
            pieces.append(piece)
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    if len(data) != reference.size:
        raise DataUnavailable(f"{reference.describe()}: {len(data):,} bytes were there")
    if local_file(reference, host) is not None:  # read here: delete it here
        release(reference, host, keep_folder)
    return data


def release(reference: Reference, host: str | None = None, keep_folder: str | None = None) -> None:
    """Delete a spooled payload no one will read: the file if it is here (never one in
    `keep_folder`), else through its owner's data server (not waited for)."""
    path = local_file(reference, host)
    if path is not None:
        if os.path.dirname(path) != (os.path.realpath(keep_folder) if keep_folder else None):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return
    if not reference.address:
        return
    context = zmq.Context()
    try:
        dealer = _data_socket(context, reference)
        dealer.linger = 200  # enough to hand the request over
        dealer.send(msgpack.packb([reference.key]))
        dealer.close()
    finally:
        context.term()


def _fetch_remote(
    reference: Reference, context: zmq.Context | None, timeout_s: float, release: bool
) -> Iterator[bytes]:
    own = context is None
    context = context or zmq.Context()
    dealer = None
    try:
        dealer = _data_socket(context, reference)
        offset = 0
        while offset < reference.size:
            dealer.send(msgpack.packb([reference.key, offset, PIECE_BYTES]))
            # Discussion: waited for in slices, each followed by an empty piece, so that the
            # task (which reads this on its own thread) still passes a record boundary:
            # a client that is gone must not keep a suspend or a kill waiting.
            waited = 0.0
            while not dealer.poll(WAIT_SLICE_S * 1000):
                waited += WAIT_SLICE_S
                if waited >= timeout_s:
                    raise DataUnavailable(
                        f"{reference.describe()}: its owner's data server at "
                        f"{reference.address} did not answer within {timeout_s:g} s "
                        "(its client is gone?)"
                    )
                yield b""
            header, piece = [*dealer.recv_multipart(), b"", b""][:2]
            size = msgpack.unpackb(header) if header else -1
            if size != reference.size or not piece:
                why = piece.decode(errors="replace") if size == -1 else f"size {size}"
                raise DataUnavailable(f"{reference.describe()} is gone from its owner: {why}")
            offset += len(piece)
            if offset >= reference.size and release:
                dealer.linger = 200  # enough to hand the request over; no answer is awaited
                dealer.send(msgpack.packb([reference.key]))
            yield piece
    finally:
        if dealer is not None:
            dealer.close()
        if own:
            context.term()


# Where other hosts reach this process's data server, if not at the address it binds
# (behind NAT, say): "HOST" or "HOST:PORT". With it the server listens on every interface,
# on PORT if given (forward that port; one process per port), and references name HOST.
DATA_ADDRESS_ENV = "TIDAL_DATA_ADDRESS"


class DataAddressError(ValueError):
    """TIDAL_DATA_ADDRESS is not HOST or HOST:PORT."""


def advertised_address() -> tuple[str, int | None]:
    """(host, port) from TIDAL_DATA_ADDRESS, ("", None) if unset; DataAddressError if it is
    not HOST or HOST:PORT (an IPv6 HOST in brackets)."""
    value = os.environ.get(DATA_ADDRESS_ENV, "").strip()
    if not value:
        return "", None
    parsed = urllib.parse.urlsplit(f"//{value}")
    try:
        port = parsed.port
    except ValueError:
        port = 0
    if (
        not parsed.hostname
        or port == 0
        or parsed.path
        or parsed.query
        or parsed.fragment
        or "@" in parsed.netloc
    ):
        raise DataAddressError(f"{DATA_ADDRESS_ENV} must be HOST or HOST:PORT, not {value!r}")
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return host, port


def bind_host_for(scheduler_address: str) -> str:
    """The address of this host that the scheduler's host reaches us by (where a data
    server binds): loopback for a local scheduler, else the interface that routes there."""
    if is_loopback(scheduler_address):
        return "127.0.0.1"
    parsed = urllib.parse.urlsplit(scheduler_address)
    host = parsed.hostname or "127.0.0.1"
    try:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.connect((host, parsed.port or 9))
            return probe.getsockname()[0]
        finally:
            probe.close()
    except OSError:
        return "127.0.0.1"


def _data_socket(context: zmq.Context, reference: Reference) -> zmq.Socket:
    """A connection to the data server that holds `reference`: a CURVE client (with a pair
    of its own, made for it) if the server has a key. DataUnavailable if the reference's
    address or key cannot be used."""
    dealer = context.socket(zmq.DEALER)
    dealer.linger = 0
    try:
        if reference.server_key:
            dealer.curve_publickey, dealer.curve_secretkey = zmq.curve_keypair()
            dealer.curve_serverkey = reference.server_key.encode()
        dealer.connect(reference.address)
    except zmq.ZMQError as exc:
        dealer.close()
        raise DataUnavailable(
            f"{reference.describe()}: cannot connect to {reference.address[:80]!r}: {exc}"
        ) from None
    return dealer
