"""Authentication: ZeroMQ CURVE keys for the scheduler, its executors and its clients.

A key directory (`tidal keys generate DIR`) holds:

    scheduler.key, scheduler.key_secret   the scheduler's pair (the secret stays on its host)
    peer.key, peer.key_secret             a pair for executors and clients
    authorized/*.key                      the public keys the scheduler lets in
    peers/NAME/                           with `--peer NAME`: a named pair, ready to copy to
                                          the host that uses it (peer.key, peer.key_secret
                                          and the scheduler's public key)

The scheduler reads `scheduler.key_secret` and `authorized/`; a peer (executor or client)
reads `scheduler.key` and `peer.key_secret`. So DIR serves both sides on one host, and
`DIR/peers/NAME` is all another host needs. Secret files are written mode 0600.

The scheduler runs CURVE as a server with pyzmq's ZAP authenticator; a peer whose public
key is not in `authorized/` never completes its handshake. That is silent for the peer
(ZeroMQ just retries), so peers watch their handshake with a socket monitor and turn a
refusal into an `AuthenticationFailed` naming the reason; the scheduler logs each refusal
(rate-limited) and serves everyone else as before. `authorized/` is re-read when it
changes, so a key can be added or revoked without restarting the scheduler (peers that
are already connected stay connected).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from tidal.runtime.logs import RateLimitedLog

__all__ = [
    "AuthenticationFailed",
    "HandshakeWatch",
    "KeyFileError",
    "PeerKeys",
    "SchedulerAuth",
    "generate_keys",
    "is_loopback",
    "load_peer_keys",
    "secure_peer",
]

SCHEDULER = "scheduler"
PEER = "peer"
AUTHORIZED = "authorized"
PEERS = "peers"
PEER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
GENERATE_HINT = "create keys with `tidal keys generate DIR`"

# Discussion: a refusal that says why (the scheduler's ZAP answer, or a mechanism mismatch)
# is final; a handshake that breaks off with no detail (our copy of the scheduler's public
# key is wrong, so the scheduler cannot read our hello) looks like a dropped connection,
# so it counts as a refusal only once it has happened this many times in a row (ZeroMQ
# reconnects every ~100 ms).
NO_DETAIL_FAILURES = 3
HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
# libzmq's code for "the two sides use different security mechanisms" (zmq.h).
MECHANISM_MISMATCH = 0x11000002

log = logging.getLogger("tidal.auth")


class KeyFileError(ValueError):
    """A key directory or key file is missing or unreadable; the message names it."""


class AuthenticationFailed(ConnectionError):
    """The scheduler refused this peer's CURVE handshake (or this peer refused it)."""


# ---- key files -------------------------------------------------------------------------------


def generate_keys(
    directory: str | os.PathLike[str], *, peer: str | None = None, force: bool = False
) -> list[Path]:
    """Create a key directory (or, with `peer`, one more named peer pair); return the files.

    Refuses (FileExistsError) to overwrite a key unless `force`. A named peer needs the
    directory's scheduler key (generate the directory first).
    """
    _require_curve()
    root = Path(directory)
    if peer is None:
        targets = [
            root / f"{SCHEDULER}.key",
            root / f"{SCHEDULER}.key_secret",
            root / f"{PEER}.key",
            root / f"{PEER}.key_secret",
            root / AUTHORIZED / f"{PEER}.key",
        ]
    else:
        if not PEER_NAME.fullmatch(peer):
            raise ValueError(
                f"peer name {peer!r}: use letters, digits, '.', '_' and '-' (at most 64)"
            )
        if not (root / f"{SCHEDULER}.key").is_file():
            raise KeyFileError(
                f"{root / (SCHEDULER + '.key')} not found: a named peer needs the scheduler's "
                f"key ({GENERATE_HINT} first)"
            )
        home = root / PEERS / peer
        targets = [
            home / f"{PEER}.key",
            home / f"{PEER}.key_secret",
            home / f"{SCHEDULER}.key",
            root / AUTHORIZED / f"{peer}.key",
        ]
    existing = [str(path) for path in targets if path.exists()]
    if existing and not force:
        raise FileExistsError(
            f"refusing to overwrite existing keys ({', '.join(existing)}); use --force "
            "(force=True) to replace them"
        )
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / AUTHORIZED).mkdir(mode=0o755, exist_ok=True)
    # Discussion: pyzmq writes key files with the process's umask; written in a private
    # directory (mode 0700) and made 0600 there, a secret is never readable by others,
    # not even for a moment, when it is moved into place.
    with tempfile.TemporaryDirectory(dir=root, prefix=".tidal-keys-") as scratch:
        if peer is None:
            server_public = _new_pair(scratch, SCHEDULER, root, SCHEDULER)
            peer_public = _new_pair(scratch, PEER, root, PEER)
        else:
            home.mkdir(mode=0o700, parents=True, exist_ok=True)
            peer_public = _new_pair(scratch, PEER, home, PEER)
            server_public = root / f"{SCHEDULER}.key"
            _copy_public(server_public, home / f"{SCHEDULER}.key")
        _copy_public(peer_public, targets[-1])
    return targets


def _new_pair(scratch: str, name: str, into: Path, as_name: str) -> Path:
    """Create a key pair in `scratch`, move it to `into/as_name.key(_secret)`."""
    public, secret = zmq.auth.create_certificates(scratch, name)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    os.replace(secret, into / f"{as_name}.key_secret")
    os.replace(public, into / f"{as_name}.key")
    return into / f"{as_name}.key"


def _copy_public(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)


@dataclass(frozen=True)
class PeerKeys:
    """What an executor or a client needs: its own pair and the scheduler's public key."""

    public: bytes
    secret: bytes
    server_public: bytes
    directory: str


@dataclass(frozen=True)
class ServerKeys:
    """What the scheduler needs: its pair and the directory of authorised public keys."""

    public: bytes
    secret: bytes
    authorized: Path


def load_peer_keys(directory: str | os.PathLike[str]) -> PeerKeys:
    """Read a peer's keys from `directory` (see the module docstring); KeyFileError if not."""
    _require_curve()
    root = _key_dir(directory)
    public, secret = _read_pair(root / f"{PEER}.key_secret")
    server_public, _ = _read_key(root / f"{SCHEDULER}.key", secret=False)
    return PeerKeys(public, secret, server_public, str(root))


def load_server_keys(directory: str | os.PathLike[str]) -> ServerKeys:
    """Read the scheduler's keys from `directory`; KeyFileError if they are not there."""
    _require_curve()
    root = _key_dir(directory)
    public, secret = _read_pair(root / f"{SCHEDULER}.key_secret")
    authorized = root / AUTHORIZED
    if not authorized.is_dir():
        raise KeyFileError(f"{authorized} is not a directory of authorised keys ({GENERATE_HINT})")
    return ServerKeys(public, secret, authorized)


def _key_dir(directory: str | os.PathLike[str]) -> Path:
    root = Path(directory)
    if not root.is_dir():
        raise KeyFileError(f"key directory {root} not found ({GENERATE_HINT})")
    return root


def _read_pair(path: Path) -> tuple[bytes, bytes]:
    public, secret = _read_key(path, secret=True)
    assert secret is not None  # _read_key(secret=True) raises otherwise
    if os.stat(path).st_mode & 0o077:
        log.warning("%s is readable by other users: chmod 600 it", path)
    return public, secret


def _read_key(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    """Load one key file, checking that its keys are well formed (40 z85 characters)."""
    if not path.is_file():
        raise KeyFileError(f"{path} not found ({GENERATE_HINT})")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the key file {path}: {exc}") from None
    keys = [public, secret_key] if secret else [public]
    if secret and secret_key is None:
        raise KeyFileError(f"{path} holds no secret key")
    for key in keys:
        if not _well_formed(key):
            raise KeyFileError(f"{path} holds a malformed key (expected 40 z85 characters)")
    return public, secret_key


def _well_formed(key: bytes | None) -> bool:
    if key is None or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def _require_curve() -> None:
    if not zmq.has("curve"):
        raise RuntimeError(
            "this libzmq was built without CURVE security, so keys cannot be used; "
            "install pyzmq from its wheels (they bundle a libzmq with CURVE)"
        )


def is_loopback(address: str) -> bool:
    """Whether a bound ZeroMQ address is reachable from this host only."""
    transport, _, rest = address.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface name or a wildcard
        return False


# ---- the peer side ---------------------------------------------------------------------------


def secure_peer(socket: zmq.Socket, keys: PeerKeys | None) -> None:
    """Make `socket` a CURVE client with `keys` (before it connects); None: no security."""
    if keys is None:
        return
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = keys.server_public


class HandshakeWatch:
    """Watch a connecting socket's handshakes; tell when the scheduler refused it.

    Poll `socket` with the connecting one, call `refusal()` when it is readable, and `close()`
    (from the thread that owns the watched socket) once the handshake succeeded.
    """

    def __init__(self, watched: zmq.Socket, address: str, keys: PeerKeys | None) -> None:
        self._watched = watched
        self.address = address
        self.keys = keys
        self.socket: zmq.Socket | None = watched.get_monitor_socket(HANDSHAKE_EVENTS)
        self.succeeded = False
        self._no_detail = 0

    def refusal(self) -> str | None:
        """Read the events that arrived; the reason for a refusal, if there was one."""
        while self.socket is not None and self.socket.poll(0):
            event = parse_monitor_message(self.socket.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.succeeded, self._no_detail = True, 0
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self._no_detail += 1
                if self._no_detail >= NO_DETAIL_FAILURES:
                    return self._reason(event)
            elif event["event"] in (
                zmq.EVENT_HANDSHAKE_FAILED_AUTH,
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            ):
                return self._reason(event)
        return None

    def _reason(self, event: dict[str, Any]) -> str:
        where = f"the scheduler at {self.address}"
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (
                f"{where} refused our key (CURVE authentication failed): "
                f"{self.keys.directory if self.keys else 'this peer'}/peer.key is not among its "
                "authorized keys"
            )
        if event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if event["value"] == MECHANISM_MISMATCH and self.keys is None:
                return (
                    f"{where} refused us: it requires CURVE keys and we have none "
                    "(pass --keys DIR, or keys=DIR)"
                )
            if event["value"] == MECHANISM_MISMATCH:
                return (
                    f"{where} does not use CURVE keys and we were given some: start it "
                    "with --keys, or connect without keys"
                )
            return f"{where} broke off the handshake (ZMTP protocol error {event['value']:#x})"
        if self.keys is None:
            return (
                f"{where} broke off the handshake {self._no_detail} times in a row: it "
                "probably requires CURVE keys and we have none (pass --keys DIR, or keys=DIR)"
            )
        return (
            f"the CURVE handshake with {where} failed {self._no_detail} times in a row: "
            f"either {self.keys.directory}/scheduler.key is not this scheduler's public key, "
            "or the scheduler runs without keys"
        )

    def close(self) -> None:
        if self.socket is None:
            return
        self._watched.disable_monitor()
        self.socket.close(linger=0)
        self.socket = None


# ---- the scheduler side ----------------------------------------------------------------------


class _AuthorizedKeys:
    """The ZAP credentials provider: the public keys in `authorized/`, re-read on change."""

    def __init__(self, directory: Path, refused: RateLimitedLog) -> None:
        self.directory = directory
        self._refused = refused
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._keys: dict[bytes, bool] = {}
        self._reload()

    def _reload(self) -> None:
        # Discussion: the directory's mtime alone can miss a key added within the same clock
        # tick as the last look; the names, sizes and mtimes of its files cannot. One scandir
        # per handshake costs microseconds.
        try:
            with os.scandir(self.directory) as entries:
                seen = tuple(
                    sorted(
                        (entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                        for entry in entries
                        if entry.name.endswith(".key")
                    )
                )
        except OSError as exc:  # the directory went away: no one new gets in
            if self._keys or self._seen is None:
                log.error("cannot read the authorized keys: %s", exc)
            self._keys, self._seen = {}, ()
            return
        if seen == self._seen:
            return
        self._seen = seen  # so a bad file is logged once per change, not once per handshake
        keys: dict[bytes, bool] = {}
        for name, _, _ in seen:
            try:
                public, _secret = _read_key(self.directory / name, secret=False)
            except KeyFileError as exc:  # skipped: a file we cannot read lets no one in
                log.error("ignoring an authorized key: %s", exc)
                continue
            keys[public] = True
        self._keys = keys

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP: may the peer with this public key (z85) in? Runs on the authenticator thread."""
        self._reload()
        if self._keys.get(key):
            return True
        self._refused(
            f"refused a peer: its public key {key.decode('ascii', 'replace')} is not in "
            f"{self.directory} (CURVE authentication failed)"
        )
        return False


class SchedulerAuth:
    """CURVE on the scheduler's ROUTER: the ZAP authenticator, and a log of refusals.

    Create it before the socket binds; `close()` after the socket is closed, before the
    context terminates.
    """

    def __init__(
        self, context: zmq.Context, router: zmq.Socket, directory: str | os.PathLike[str]
    ) -> None:
        keys = load_server_keys(directory)
        self.directory = str(directory)
        refused = RateLimitedLog(log)
        self._authenticator = ThreadAuthenticator(context, log=logging.getLogger("tidal.zap"))
        self._authenticator.start()
        self._authenticator.configure_curve_callback(
            domain="*", credentials_provider=_AuthorizedKeys(keys.authorized, refused)
        )
        router.curve_secretkey = keys.secret
        router.curve_publickey = keys.public
        router.curve_server = True
        self._refused = RateLimitedLog(log)

    def refused_connection(self, event: dict[str, Any]) -> None:
        """Log a refusal the authenticator never sees (a peer without keys, or one with the
        wrong scheduler key): a handshake-failed event of the ROUTER's monitor, which the
        scheduler's loop reads (one monitor per socket: it also watches disconnections)."""
        endpoint = event["endpoint"].decode(errors="replace")
        if event["value"] == MECHANISM_MISMATCH:
            why = "it does not use CURVE (a peer started without --keys?)"
        else:
            why = "its CURVE handshake failed (a peer with another scheduler's public key?)"
        self._refused(f"refused a connection on {endpoint}: {why}")

    def close(self) -> None:
        """Stop the authenticator (after the ROUTER has been closed)."""
        self._authenticator.stop()
