"""Tidal's wire protocol: every message, its fields, its direction, and the codec.

The contract (docs/protocol.md is the same thing for humans):

* A frame is one msgpack array `[op, field1, field2, ...]`: `op` is a short string, the
  fields follow in the order the message class declares them, all of them, no more.
* Every connection starts with a handshake: the peer sends `hello` carrying
  `PROTOCOL_VERSION`; the scheduler answers `welcome` or `reject` (naming both versions).
* A frame larger than the receiver's `max_frame_bytes`, one that is not msgpack, not an
  array, has an unknown op, the wrong number of fields or a field of the wrong type, raises
  `ProtocolError` in `decode()`. Receivers log it (rate-limited) and drop the frame; they never
  assert on peer input and never crash for it. Decoding never executes code: msgpack
  extension types are refused, and functions travel as `module:qualname` strings that only
  the executor resolves, by import, when it launches a task.
* Task arguments and results are opaque payloads: each is one msgpack blob (`bytes`, sent as
  msgpack bin) that only the ends open (runtime/payloads.py packs and opens them). The
  scheduler moves the bytes and never decodes or re-encodes them.

Messages are small frozen dataclasses. `encode(msg)` and `decode(frame)` are the only codec;
receivers dispatch with a `{MessageClass: handler}` table.
"""

from __future__ import annotations

import dataclasses
import operator
import typing
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import msgpack

from tidal.runtime.fieldtypes import field_type, find_unencodable

__all__ = [
    "MAX_BATCH_ITEMS",
    "MAX_FRAME_BYTES",
    "MAX_ID_CHARS",
    "MAX_STRANGER_FRAME_BYTES",
    "MESSAGES",
    "PRIORITY_CLASSES",
    "PROTOCOL_VERSION",
    "EncodeError",
    "Message",
    "ProtocolError",
    "batch_key",
    "decode",
    "encode",
    "find_unencodable",
    "hashable_keys",
    "iter_batch",
    "refuse_extension",
    "unpack_value",
]

# 2: chunks (launch_chunk, steal, chunk_results, stolen) and submit's options field.
# 3: opaque payloads: task arguments and results travel as msgpack blobs (bytes) the
#    scheduler only forwards (submit.tasks, launch.payload, launch_chunk.subtasks,
#    finished.result, chunk_results and results values).
# 4: heartbeat.memory_limit_bytes and heartbeat.task_memory (executor memory limits);
#    restarts: hello.holding (what a reconnecting executor holds), ack (results kept safe;
#    the scheduler's answer to heartbeats), rejoin (say hello again), reattach and
#    reattached (a client finds its futures on a restarted scheduler).
# 5: payloads off the control path: a payload may be a reference to a spooled one (0xc1 and
#    [host, path, size, address, key, server_key]), big results included; a call's kwargs
#    may be a reference to a map's shared kwargs; blocked arguments (0x93) (docs/protocol.md);
#    welcome.attach_token and attach.token.
# 6: received (an executor has these launches): a loss counts toward max_retries from there.
# 7: the bulk path (a chunked map as ranges): submit.bulk, launch_chunk.span, chunk_batch,
#    batch_results.
# 8: executors hold batch reports (fold a start into its end); clients send batches.
# 9: release (jobs a client holds no future of).
# 10: kept results and futures as arguments: launch.keep and launch.inputs, drop (S2E),
#     missing (C2S); a submit task's options may carry "inputs". stream_lag (C2S).
# 11: heartbeat.task_records (how long tasks' records take, before any suspension).
# 12: a batch's values may be one packed array (chunk_batch and batch_results `values` as
#     bytes: runtime/batches.py).
# 13: columnar bulk jobs: submit.bulk may be one packed array of a map's xs, with
#     submit.kwargs; launch_chunk.columns (runtime/columns.py). job_refused (S2C).
# 14: a blocked argument's block may be a block of numbers (runtime/numblocks.py), which an
#     executor of protocol 13 would refuse (and a client of 13 reading a kept result).
# 15: lanes (runtime/lanes.py): hello.lane, lanes (S2C), lane_submit (client -> executor),
#     forward (E2S), launch.suspensions_left and launch_chunk.suspensions_left.
# 16: lane_results (executor -> client, on a lane): a lane task's result, sent to its client
#     before the scheduler hears of it.
PROTOCOL_VERSION = 16

# The values of every `priority` field (submit, launch, launch_chunk), the first the one that
# goes ahead: a stream task exists to take a slot at once, batch work fills the rest.
PRIORITY_CLASSES = ("stream", "batch")

# Discussion: partitions travel inside `launch`, so frames can be large; 64 MiB bounds the
# memory one frame can cost a receiver while leaving room for real data. Configurable per
# receiver (decode's `max_frame_bytes`).
MAX_FRAME_BYTES = 64 * 1024 * 1024
# A batch holds at most this many messages (senders split bigger ones): a receiver's work for
# one frame stays bounded (~4,096 reports, a few tens of milliseconds of the scheduler's loop).
MAX_BATCH_ITEMS = 4096
# A peer that has not said who it is may send frames of at most this size (a hello listing
# what an executor holds fits; nothing bigger is decoded for a stranger).
MAX_STRANGER_FRAME_BYTES = 1024 * 1024
# Peer ids (executors', clients') are at most this long: they appear in logs and status.
MAX_ID_CHARS = 200
# Discussion: senders flush a batch of merged messages past this size, so that merging many
# small messages never brings a frame near a receiver's limit.
BATCH_FLUSH_BYTES = 1 << 20

E2S, S2E, C2S, S2C, C2E, E2C = (
    "executor->scheduler",
    "scheduler->executor",
    "client->scheduler",
    "scheduler->client",
    "client->executor",  # only `lane_submit`, on an executor's lane (runtime/lanes.py)
    "executor->client",  # only `lane_results`, on the same lane
)
EITHER = "either way"  # only `batch`: executor <-> scheduler both ways, client -> scheduler


class ProtocolError(ValueError):
    """A frame that does not follow the protocol. The message names what is wrong."""


class EncodeError(TypeError):
    """A value that msgpack cannot carry (the message names where it sits)."""


class Message:
    """Base of every wire message. Subclasses are frozen dataclasses declared below."""

    op: ClassVar[str]
    direction: ClassVar[str]
    # Per field: its name, the types its value may have (None: any), their name.
    _checks: ClassVar[tuple[tuple[str, frozenset[type] | None, str], ...]]
    # The codec's fast path (`message`): per field, the types it takes, its slot; the values.
    _types: ClassVar[tuple[frozenset[type] | None, ...]]
    _slots: ClassVar[tuple[Any, ...]]
    _values: ClassVar[Callable[[Any], tuple[Any, ...]]]


MESSAGES: dict[str, type[Message]] = {}


def message(op: str, direction: str) -> Callable[[type], type]:
    """Declare a message class: a frozen dataclass with an op, a direction and typed fields."""

    def register(cls: type) -> type:
        cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        hints = typing.get_type_hints(cls)
        cls.op = op
        cls.direction = direction
        names = [f.name for f in dataclasses.fields(cls)]
        cls._checks = tuple((name, *field_type(hints[name])) for name in names)
        # Discussion: the codec's fast path (`encode`, `decode`), ~2x a check per field and
        # the dataclass's frozen __init__: one set lookup per field, one attrgetter, and the
        # slots set directly (a decoded message is built whole; nothing else runs in
        # __init__). On every hop of every task, several messages each.
        cls._types = tuple(types for _, types, _ in cls._checks)
        getter = operator.attrgetter(*names) if names else lambda msg: ()
        cls._values = staticmethod(getter if len(names) != 1 else lambda msg: (getter(msg),))
        cls._slots = tuple(cls.__dict__[name] for name in names)
        if op in MESSAGES:
            raise TypeError(f"two messages declare op {op!r}")
        MESSAGES[op] = cls
        return cls

    return register


# ---- handshake ---------------------------------------------------------------------------


@message("hello", E2S)
class Hello(Message):
    version: int
    executor_id: str
    node: str
    slots: int
    pid: int
    hostname: str
    # What the executor holds when it says hello again (to a scheduler that restarted, or
    # that declared it lost): [[task_id, attempt, state, detail], ...]. state "running",
    # "queued", "resuming" or "suspended" (detail: nil, or for a chunk the ids of the
    # subtasks it has not reported yet), or "finished"/"failed" for a result whose `ack`
    # never came (detail: [value payload or nil, [error_type, message, traceback] or nil,
    # stats]). Empty on a first hello.
    holding: list = ()
    # Where clients may send stream tasks straight to this executor (runtime/lanes.py): a
    # ZeroMQ address, or nil (no lane).
    lane: str | None = None


@message("attach", E2S)
class Attach(Message):
    # Sent first on an executor's second connection, the one its task thread sends reports
    # on (see runtime/executor.py); no answer. Commands still go to the hello connection.
    # `token` is the one its last welcome gave it: no one else can report as it.
    version: int
    executor_id: str
    token: str


@message("welcome", S2E)
class Welcome(Message):
    version: int
    scheduler_id: str
    heartbeat_ms: int
    attach_token: str  # what the executor's `attach` must carry (random, per hello)


@message("reject", S2E)
class Reject(Message):
    reason: str


@message("rejoin", S2E)
class Rejoin(Message):
    # Say hello again, with what you hold: sent to an executor the scheduler declared lost,
    # and to any peer that speaks on a connection the scheduler does not know (it restarted).
    # Clients get it too (as they get `reject`) and answer with client_hello.
    reason: str


@message("ack", S2E)
class Ack(Message):
    # The results of these tasks (finished, failed, chunk_results items) are safe with the
    # scheduler (journaled): stop keeping them for a resend. Also the scheduler's answer to
    # every heartbeat (then often empty): the executor's sign that the scheduler lives.
    task_ids: list


@message("batch", EITHER)
class Batch(Message):
    # Several encoded messages sent as one frame, in order, to save per-frame costs when many
    # are ready at once (a burst of tiny tasks). Each is decoded as if it came alone; a batch
    # never contains a batch.
    frames: list


@message("goodbye", E2S)
class Goodbye(Message):
    reason: str


@message("shutdown", S2E)
class Shutdown(Message):
    reason: str


# ---- liveness and metrics -----------------------------------------------------------------


@message("heartbeat", E2S)
class Heartbeat(Message):
    executor_id: str
    node: str
    seq: int
    sent_ns: int
    slots: int
    running: int
    suspended: int
    queued: int
    rss_bytes: int
    mem_available_bytes: int
    mem_percent: float
    # The executor's memory limit (`--memory-limit`), 0 for none; and with a limit, each
    # started task's memory estimate here, {task_id: bytes} (runtime/memory.py).
    memory_limit_bytes: int = 0
    task_memory: dict | None = None
    # Each started task's {task_id: [running_ns, records]} in this attempt so far: how long
    # its records take, known before any suspension.
    task_records: dict | None = None


# ---- commands: scheduler -> executor -------------------------------------------------------


@message("launch", S2E)
class Launch(Message):
    task_id: str
    fn: str  # "module:qualname"
    main_path: str | None  # the user's script, for functions defined in __main__
    payload: bytes  # pack_call(args, kwargs), opened by the executor only
    attempt: int
    priority: str  # "stream" or "batch"
    sent_ns: int  # sender's time.monotonic_ns(), for latency figures
    # Keep the result here (runtime/kept.py): report its reference, and serve it to whoever
    # asks until a `drop` names the task.
    keep: bool = False
    # Inputs that are other tasks' kept results: [[path, task_id, reference payload], ...];
    # `path` says where in [args, kwargs] the value goes (an argument's index, then indices
    # or keys into it), the reference where it is kept.
    inputs: list | None = None
    # How many more times the executor may suspend this task itself, for a stream task that
    # came by its lane (runtime/lanes.py); nil: never (a stream task, or no cap known).
    suspensions_left: int | None = None


@message("drop", S2E)
class Drop(Message):
    # Delete these tasks' kept results: no one will ask for them again.
    task_ids: list


@message("suspend", S2E)
class Suspend(Message):
    task_id: str
    sent_ns: int


@message("resume", S2E)
class Resume(Message):
    task_id: str
    sent_ns: int


@message("kill", S2E)
class Kill(Message):
    task_id: str
    sent_ns: int


@message("launch_chunk", S2E)
class LaunchChunk(Message):
    # Many small tasks of one job as one kernel task: run one after the other, results
    # reported in batches (chunk_results), suspendable between them and at their records.
    chunk_id: str
    fn: str
    main_path: str | None
    subtasks: list  # [[task_id, payload], ...] in the order to run them
    attempt: int
    priority: str
    sent_ns: int
    # A range of a bulk job (submit.bulk): [job_id, first]. Then `subtasks` holds only the
    # payloads of tasks first, first + 1, ... (task i's id is f"{job_id}/{i}"), and their
    # results come back as chunk_batch reports.
    span: list | None = None
    # A span of a columnar job (submit.bulk as bytes): [count, the tasks' xs as one packed
    # array, their kwargs packed]; then `subtasks` is empty.
    columns: list | None = None
    suspensions_left: int | None = None  # as launch's


@message("steal", S2E)
class Steal(Message):
    # Give up to `count` not-yet-started subtasks from the end of a chunk (answer: stolen).
    chunk_id: str
    count: int
    sent_ns: int


# ---- reports: executor -> scheduler --------------------------------------------------------


@message("chunk_results", E2S)
class ChunkResults(Message):
    # Results of a chunk's subtasks so far: [[task_id, outcome, value, error, stats], ...]
    # with outcome "finished" (value: the result's payload, bytes) or "failed" (value nil),
    # and error [error_type, message, traceback] or nil.
    chunk_id: str
    items: list


@message("chunk_batch", E2S)
class ChunkBatch(Message):
    # Results of a span chunk's subtasks start, start + 1, ... (the job's indices), in the
    # order they ran: `values` one per subtask, the result's payload (bytes) or nil for one
    # that failed; `errors` [[index, [error_type, message, traceback]], ...] for those;
    # `running_ns` the batch's running time, all subtasks together. The scheduler acks it as
    # f"{chunk_id}@{start}" (`batch_key`). A batch with no failure, no reference and every
    # payload under DATA_MIN_BYTES may send its `values` as one bytes: the payloads
    # concatenated behind an array header, that is the values packed as one array, which
    # the scheduler forwards and journals without opening (runtime/batches.py).
    chunk_id: str
    job_id: str
    start: int
    values: list | bytes
    errors: list
    running_ns: int


@message("stolen", E2S)
class Stolen(Message):
    # The subtasks this executor gave up (none already started); they will not run here.
    chunk_id: str
    task_ids: list


@message("received", E2S)
class Received(Message):
    # These launches reached the executor, as [[task_id, attempt, sent_ns], ...] (a chunk by
    # its chunk_id; sent_ns: the launch's own, which tells a launch from an earlier one of
    # the same attempt): sent before they are handed to its kernel. From here a loss of the
    # executor counts toward the task's max_retries.
    launches: list


@message("started", E2S)
class Started(Message):
    task_id: str
    attempt: int
    at_ns: int


@message("suspended", E2S)
class Suspended(Message):
    task_id: str
    latency_ns: int  # request arrived -> the hub regained control
    records: int  # input records consumed so far
    at_ns: int  # time.monotonic_ns() when the hub regained control


@message("resumed", E2S)
class Resumed(Message):
    task_id: str
    latency_ns: int  # hub decided to resume -> the task runs again
    at_ns: int


@message("finished", E2S)
class Finished(Message):
    task_id: str
    attempt: int
    result: bytes  # pack_payload(the task's result); a chunk's is the payload of nil
    stats: dict


@message("failed", E2S)
class Failed(Message):
    task_id: str
    attempt: int
    error_type: str
    message: str
    traceback: str
    stats: dict


@message("killed", E2S)
class Killed(Message):
    task_id: str
    attempt: int
    stats: dict  # running_ns here is the work that was lost


@message("suspend_failed", E2S)
class SuspendFailed(Message):
    task_id: str
    reason: str
    waited_ns: int


@message("refused", E2S)
class Refused(Message):
    command: str
    task_id: str
    reason: str


@message("forward", E2S)
class Forward(Message):
    # A stream task's submit that came by this executor's lane (runtime/lanes.py), as its
    # client sent it: `token` is the one the scheduler gave that client. `taken`: the task
    # runs here already (launched, attempt 0), in the slot of `parked` (the task suspended
    # for it) or a free one; else the scheduler places it as any submit.
    token: str
    submit: bytes
    taken: bool
    parked: str | None


# ---- lanes: client -> executor (runtime/lanes.py) -------------------------------------------


@message("lane_submit", C2E)
class LaneSubmit(Message):
    token: str  # the client's, from its `lanes`: the scheduler knows the client by it
    submit: bytes  # an encoded `submit` of one stream task
    sent_ns: int  # when the client sent it by this lane (its time.monotonic_ns())
    # Sent again, by a second lane: take it only into a free slot (its first lane may be
    # running it, and a copy must not cost a batch task a suspension).
    again: bool = False


@message("lane_results", E2C)
class LaneResults(Message):
    # The results of tasks that came by this lane, as in `results` (the scheduler's copy
    # follows, and the client drops it): sent to the client that sent them, at their end.
    items: list


# ---- clients: client <-> scheduler ----------------------------------------------------------


@message("client_hello", C2S)
class ClientHello(Message):
    version: int
    client_id: str
    pid: int
    hostname: str


@message("client_welcome", S2C)
class ClientWelcome(Message):
    version: int
    scheduler_id: str
    policy: str
    max_suspensions: int


@message("lanes", S2C)
class Lanes(Message):
    # The executors this client may send stream tasks to directly: [[executor_id, address],
    # ...], and the token its lane submits carry. Sent after the welcome and on each change.
    token: str
    lanes: list


@message("submit", C2S)
class Submit(Message):
    job_id: str
    priority: str  # "stream" or "batch"
    order: int  # order within the class: lower runs first
    max_suspensions: int | None  # None: the cluster's cap
    fn: str  # "module:qualname", one function for the whole job
    main_path: str | None
    tasks: list  # [[task_id, payload], ...] (payload: pack_call(args, kwargs)), one per task
    sent_ns: int  # client's time.monotonic_ns(), for latency figures
    # Job options: {"chunksize": int >= 1 or "auto"} groups the job's tasks into chunks.
    options: dict | None = None
    # A bulk job (a chunked map): its tasks' payloads in order, task i's id f"{job_id}/{i}";
    # then `tasks` is empty. The scheduler keeps them as ranges, not one record per task.
    # Or, a columnar job (protocol 13, runtime/columns.py), one packed array of the xs of
    # calls fn(x, **kwargs), with `kwargs` their kwargs packed once.
    bulk: list | bytes | None = None
    kwargs: bytes | None = None


@message("results", S2C)
class Results(Message):
    # [[task_id, outcome, value, error, stats], ...]; outcome is "finished", "failed" or
    # "cancelled"; value the result's payload (bytes, as the executor sent it) for
    # "finished", else nil; error is [error_type, message, traceback] or nil; stats a dict.
    items: list


@message("batch_results", S2C)
class BatchResults(Message):
    # Results of a bulk job's tasks start, start + 1, ...: `values` and `errors` as in
    # chunk_batch (a task in `errors` failed, the others finished; `values` one packed array
    # as the executor sent it, or a list); `stats` what they share (executor_id, attempt,
    # running_ns: the batch's mean per task, queued_ns).
    job_id: str
    start: int
    values: list | bytes
    errors: list
    stats: dict


@message("job_refused", S2C)
class JobRefused(Message):
    # Since protocol 13: a bulk job the scheduler refused (the job is not sound, or its submit
    # did not decode but named it): every task of it fails with `error`, [error_type,
    # message, traceback]. One message, however many tasks the job names (a classic job's
    # refusal is a `results` item per task).
    job_id: str
    error: list


@message("cancel", C2S)
class Cancel(Message):
    task_ids: list


@message("release", C2S)
class Release(Message):
    # Jobs the client holds no future of any more: the scheduler forgets each once it is
    # done (scheduler/records/retire.py).
    job_ids: list


@message("missing", C2S)
class Missing(Message):
    # The kept results of these tasks cannot be had where the scheduler said they were: the
    # scheduler computes them again (their lineage) and sends the new results.
    task_ids: list


@message("stream_lag", C2S)
class StreamLag(Message):
    # A stream driver's source (runtime/streams.py) is this far behind: entries not yet
    # acknowledged, and the age of the oldest in ms (-1: unknown, or none).
    source: str
    pending: int
    oldest_age_ms: float


@message("status_request", C2S)
class StatusRequest(Message):
    request_id: str


@message("status", S2C)
class Status(Message):
    request_id: str
    snapshot: dict


@message("ping", C2S)
class Ping(Message):
    request_id: str
    sent_ns: int


@message("pong", S2C)
class Pong(Message):
    request_id: str
    sent_ns: int  # echoed from the ping


@message("reattach", C2S)
class Reattach(Message):
    # After a reconnect: "these are the tasks I still wait for". The scheduler sends the
    # results it has (in `results`), routes the others' results here when they come, and
    # names the ones it does not know in `reattached` (the client submits those again).
    request_id: str
    task_ids: list


@message("reattached", S2C)
class Reattached(Message):
    request_id: str
    unknown: list  # task ids of the reattach this scheduler has never heard of


@message("client_goodbye", C2S)
class ClientGoodbye(Message):
    reason: str


@message("set_policy", C2S)
class SetPolicy(Message):
    # Switch the running scheduler's policy; running, suspended and pending tasks carry on
    # under the new one. The scheduler resolves `policy` itself, so a "module:Class" path
    # must be importable in the scheduler's process.
    request_id: str
    policy: str  # a name (built-in or entry point "tidal.policies") or "module:Class"


@message("policy_set", S2C)
class PolicySet(Message):
    # The answer to `set_policy`. ok=False: refused, `message` says why (listing the known
    # policies for an unknown name).
    request_id: str
    ok: bool
    policy: str  # the name of the policy active afterwards, whether or not the switch happened
    message: str


# ---- codec --------------------------------------------------------------------------------


def refuse_extension(code: int, data: bytes) -> Any:
    """msgpack's ext_hook here: no extension type is data Tidal sends."""
    raise ProtocolError(f"msgpack extension type {code} is not allowed")


def encode(msg: Message) -> bytes:
    """Encode a message as one frame. Raises EncodeError naming a field msgpack can't carry."""
    values = msg._values(msg)
    try:
        return msgpack.packb([msg.op, *values], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        for name, value in zip((c[0] for c in msg._checks), values, strict=True):
            where = find_unencodable(value, f"{msg.op}.{name}")
            if where:
                raise EncodeError(where) from None
        raise EncodeError(f"cannot encode {msg.op} message: {exc}") from None


def _unpack(frame: bytes | bytearray | memoryview, **options: Any) -> Any:
    # Discussion: msgpack decodes its predefined timestamp extension (-1) itself, without
    # calling ext_hook; it arrives as a msgpack.Timestamp, which is plain data. Every other
    # extension type is refused.
    return msgpack.unpackb(
        frame, raw=False, use_list=True, strict_map_key=False, ext_hook=refuse_extension, **options
    )


def unpack_value(frame: bytes | bytearray | memoryview) -> Any:
    """Unpack a frame or a payload; dict keys sent as arrays (from tuple keys) come back as
    tuples."""
    try:
        return _unpack(frame)
    except TypeError as exc:
        # Discussion: a dict with tuple keys travels as a map with array keys, which the fast
        # path cannot hash. Such data is legal (the sender packed it), so rather than lose it,
        # decode once more, slowly, turning array keys back into tuples.
        if "unhashable" not in str(exc):
            raise
        return _unpack(frame, object_pairs_hook=hashable_keys)


def hashable_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """Build a dict whose array keys (sent from tuple keys) become tuples again."""
    return {_freeze(key): value for key, value in pairs}


def _freeze(key: Any) -> Any:
    if type(key) is list:
        return tuple(_freeze(k) for k in key)
    if type(key) is dict:
        raise ProtocolError("a map key is itself a map, which cannot be a dict key")
    return key


# ---- frames ----------------------------------------------------------------------------------


def batch_key(chunk_id: str, start: int) -> str:
    """The id under which a chunk_batch is acked (and kept by its executor until then)."""
    return f"{chunk_id}@{start}"


def decode(frame: bytes, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Decode one frame into its message, or raise ProtocolError saying what is wrong."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError(f"a frame must be bytes, not {type(frame).__name__}")
    if len(frame) > max_frame_bytes:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {max_frame_bytes}-byte limit")
    try:
        body = unpack_value(frame)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for bad input; all mean "malformed"
        raise ProtocolError(f"frame is not valid msgpack ({type(exc).__name__}: {exc})") from None
    if type(body) is not list or not body:
        raise ProtocolError(f"frame must be a non-empty msgpack array, got {type(body).__name__}")
    op = body[0]
    if type(op) is not str:
        raise ProtocolError(f"op must be a string, got {type(op).__name__}")
    cls = MESSAGES.get(op)
    if cls is None:
        raise ProtocolError(f"unknown op {op[:40]!r}")
    allowed = cls._types
    if len(body) != len(allowed) + 1:
        raise ProtocolError(f"{op} takes {len(allowed)} fields, frame has {len(body) - 1}")
    msg = object.__new__(cls)
    for types_, slot, value in zip(allowed, cls._slots, body[1:], strict=True):
        if types_ is not None and type(value) not in types_:
            name, _, type_name = cls._checks[cls._slots.index(slot)]
            raise ProtocolError(f"{op}.{name} must be {type_name}, got {type(value).__name__}")
        slot.__set__(msg, value)
    return msg


def decode_parts(
    parts: list[bytes], *, max_frame_bytes: int = MAX_FRAME_BYTES, after: str = ""
) -> Message:
    """Decode a ZeroMQ message that must be exactly one frame (`after` names what came
    before it, for the error, e.g. "the routing id")."""
    if len(parts) != 1:
        where = f" after {after}" if after else ""
        raise ProtocolError(f"expected 1 frame{where}, got {len(parts)}")
    return decode(parts[0], max_frame_bytes=max_frame_bytes)


def unbatch(
    batch: Batch, *, max_frame_bytes: int = MAX_FRAME_BYTES
) -> list[Message | ProtocolError]:
    """Decode the frames of a batch; a bad one becomes its ProtocolError, the rest still count."""
    return list(iter_batch(batch, max_frame_bytes=max_frame_bytes))


def iter_batch(
    batch: Batch, *, max_frame_bytes: int = MAX_FRAME_BYTES
) -> Iterator[Message | ProtocolError]:
    """The frames of a batch, each decoded as it is asked for (a receiver that gives up at a
    bad one decodes no more); a bad one comes as its ProtocolError."""
    for i, frame in enumerate(batch.frames):
        try:
            if type(frame) is not bytes:
                raise ProtocolError(f"batch item {i} is {type(frame).__name__}, not bytes")
            msg = decode(frame, max_frame_bytes=max_frame_bytes)
            if isinstance(msg, Batch):
                raise ProtocolError(f"batch item {i} is itself a batch")
            yield msg
        except ProtocolError as exc:
            yield exc
