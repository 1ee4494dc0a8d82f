"""The `tidal` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from tidal import __version__
from tidal.runtime.config import (
    KEYS,
    LOG_LEVEL,
    LOG_LEVELS,
    SCHEDULER_ADDRESS,
    VARIABLES,
    ConfigError,
    FromEnvironment,
    settle_defaults,
)
from tidal.runtime.logs import CutLongLines

PEER_KEYS_HELP = "connect with DIR/peer.key_secret to a scheduler keyed DIR/scheduler.key"
PYTHONPATH_HELP = (
    "also import user code (task functions, a policy's path) from DIR, after the working "
    "directory, which comes first as with `python -m`; repeatable, or DIRs separated by "
    f"{os.pathsep!r}"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settle_defaults(args)
    except ConfigError as exc:  # it names the variable
        print(f"tidal: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(CutLongLines())
    if "TIDAL_PARENT_PID" in os.environ:  # a LocalCluster's child: gone with the program
        from tidal.runtime.processes import exit_with_parent

        exit_with_parent()
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


def _use_pythonpath(args: argparse.Namespace, command: str) -> bool:
    """Put the working directory and --pythonpath's folders on sys.path; False (said on
    stderr) if a folder is not there."""
    from tidal.runtime.functions import use_import_path

    try:
        use_import_path(args.pythonpath)
    except ValueError as exc:
        print(f"tidal {command}: --pythonpath: {exc}", file=sys.stderr)
        return False
    return True


def _add_keys_option(parser: argparse.ArgumentParser, who: str) -> None:
    parser.add_argument(
        "--keys",
        metavar="DIR",
        default=FromEnvironment(KEYS, None),
        help=f"CURVE key directory (`tidal keys generate DIR`): {who} (default: $TIDAL_KEYS)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidal",
        description="Tidal: suspendable tasks for unified stream/batch applications.",
        epilog="environment (a flag given wins): "
        + "; ".join(f"{v.name}: the default of {v.default_of}" for v in VARIABLES),
    )
    parser.add_argument("--version", action="version", version=f"tidal {__version__}")
    parser.add_argument(
        "--log-level",
        default=FromEnvironment(LOG_LEVEL, "warning"),
        choices=LOG_LEVELS,
        help="(default: $TIDAL_LOG_LEVEL, else warning)",
    )
    commands = parser.add_subparsers(title="commands")

    executor = commands.add_parser("executor", help="run an executor process")
    executor.add_argument(
        "--scheduler",
        default=None,
        help="scheduler address, e.g. tcp://127.0.0.1:5555 (default: $TIDAL_SCHEDULER_ADDRESS)",
    )
    executor.add_argument(
        "--nworkers",
        type=int,
        default=1,
        metavar="N",
        help="run N executor processes (slots), each with an id of its own (--id ID: ID-0, "
        "ID-1, ...), and start again one that dies unexpectedly; SIGTERM and SIGINT stop "
        "them all (default 1: this process is the executor)",
    )
    executor.add_argument(
        "--pythonpath", action="append", default=[], metavar="DIR", help=PYTHONPATH_HELP
    )
    executor.add_argument("--node", default="local", help="node label for locality policies")
    executor.add_argument("--id", dest="executor_id", default=None, help="executor id")
    executor.add_argument(
        "--switch-interval-us",
        type=float,
        default=100.0,
        help="GIL switch interval; bounds how long a busy executor takes to "
        "notice a command (default 100)",
    )
    executor.add_argument(
        "--suspend-timeout-ms",
        type=float,
        default=100.0,
        help="report a suspension as failed when the task reaches no record "
        "boundary within this time (default 100, at most 125)",
    )
    executor.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the scheduler's welcome (default 30)",
    )
    executor.add_argument(
        "--reconnect-timeout",
        type=float,
        default=60.0,
        help="seconds to keep trying to reach a scheduler that went away, tasks kept, "
        "before giving up and exiting (default 60)",
    )
    executor.add_argument(
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="keep the I/O and listener threads at normal priority (by default "
        "they run SCHED_FIFO where permitted, see README)",
    )
    executor.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="fail the task that takes this executor's memory (RSS, suspended tasks "
        "included) over SIZE, e.g. 512MiB or 2GB; exit (code 3) if that is not enough",
    )
    _add_keys_option(executor, PEER_KEYS_HELP)
    executor.add_argument(
        "--quiet-exit",
        action="store_true",
        help=argparse.SUPPRESS,  # a clean exit said at info level: LocalCluster's executors
    )
    # (A new executor option is also one of each --nworkers slot's: see `_slot_args`.)
    executor.set_defaults(run=_run_executor)

    scheduler = commands.add_parser("scheduler", help="run the central scheduler")
    scheduler.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        help="address to listen on (default tcp://127.0.0.1:5555, loopback "
        "only; use tcp://0.0.0.0:5555 for executors on other hosts, with --keys: without "
        "keys that warns, as traffic is then unauthenticated and unencrypted)",
    )
    scheduler.add_argument(
        "--policy", default="lb", help="policy name or 'module:Class' path (default lb)"
    )
    scheduler.add_argument(
        "--pythonpath", action="append", default=[], metavar="DIR", help=PYTHONPATH_HELP
    )
    scheduler.add_argument(
        "--max-suspensions",
        type=int,
        default=3,
        help="times a task may be suspended before it runs uninterrupted",
    )
    scheduler.add_argument(
        "--heartbeat-ms", type=int, default=500, help="executor heartbeat interval (default 500)"
    )
    scheduler.add_argument(
        "--missed-heartbeats",
        type=int,
        default=3,
        help="an executor silent this many intervals is lost (default 3)",
    )
    scheduler.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="a task whose executor is lost more than this many times fails (default 3)",
    )
    scheduler.add_argument(
        "--journal",
        metavar="PATH",
        default=None,
        help="keep jobs and results in this SQLite file, so that a restarted scheduler "
        "finds them (default: $XDG_STATE_HOME/tidal/journal-PORT.sqlite, or "
        "~/.local/state/tidal/...; none for a wildcard port, * or 0)",
    )
    scheduler.add_argument(
        "--no-journal", action="store_true", help="keep no journal: a restart forgets everything"
    )
    scheduler.add_argument(
        "--journal-sync",
        choices=["normal", "full"],
        default="normal",
        help="normal: a commit survives the scheduler being killed; full: also an OS crash, "
        "at an fsync per commit (default normal)",
    )
    scheduler.add_argument(
        "--announce", action="store_true", help="print the bound address on stdout (for scripts)"
    )
    scheduler.add_argument(
        "--no-stealing",
        dest="stealing",
        action="store_false",
        help="do not move not-yet-started subtasks of chunks to idle executors",
    )
    scheduler.add_argument(
        "--allow-policy-paths",
        action="store_true",
        help="let clients switch to a 'module:Class' policy path (imported in the scheduler); "
        "by default only policy names are accepted over the wire",
    )
    scheduler.add_argument(
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="keep ZeroMQ's I/O thread at normal priority",
    )
    scheduler.add_argument(
        "--event-log",
        metavar="PATH",
        default=None,
        help="write every scheduling decision and report to PATH, one JSON object a line "
        "(draw it with `tidal timeline PATH`)",
    )
    scheduler.add_argument(
        "--client-timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="a client whose connection is gone and that does not come back within S "
        "seconds is taken to have said goodbye: its jobs go (default 300)",
    )
    scheduler.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        nargs="?",
        const=True,  # no address given: the default one, or a free port if it is taken
        default=None,
        help="serve the live dashboard, /metrics (Prometheus) and /api/status there; "
        "without a value on 127.0.0.1:8787, or a free port if that is taken (default: off)",
    )
    _add_keys_option(
        scheduler, "use DIR/scheduler.key_secret and let in only the keys in DIR/authorized"
    )
    scheduler.set_defaults(run=_run_scheduler)

    status = commands.add_parser("status", help="show executors and jobs of a scheduler")
    status.add_argument(
        "--scheduler",
        default="tcp://127.0.0.1:5555",
        help="scheduler address (default tcp://127.0.0.1:5555)",
    )
    status.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    status.add_argument(
        "--watch", action="store_true", help="redraw it live until Ctrl-C (see --interval)"
    )
    status.add_argument(
        "--interval", type=float, default=1.0, help="seconds between redraws (default 1)"
    )
    status.add_argument(
        "--tasks", action="store_true", help="also list each executor's tasks by id"
    )
    _add_keys_option(status, PEER_KEYS_HELP)
    status.set_defaults(run=_run_status)

    policy = commands.add_parser("policy", help="switch a running scheduler's policy, or list them")
    policy_commands = policy.add_subparsers(
        title="policy commands", dest="policy_command", metavar="{set,list}", required=True
    )
    policy_set = policy_commands.add_parser(
        "set", help="switch the scheduler's policy; running and pending tasks carry on"
    )
    policy_set.add_argument(
        "name", help="policy name (see `tidal policy list`) or 'module:Class' path"
    )
    policy_set.add_argument(
        "--scheduler",
        default="tcp://127.0.0.1:5555",
        help="scheduler address (default tcp://127.0.0.1:5555)",
    )
    _add_keys_option(policy_set, PEER_KEYS_HELP)
    policy_set.set_defaults(run=_run_policy_set)
    policy_list = policy_commands.add_parser(
        "list",
        help="list the policy names installed here (built-in and entry points); a scheduler "
        "in another environment may know others",
    )
    policy_list.set_defaults(run=_run_policy_list)

    keys = commands.add_parser("keys", help="create CURVE keys for an authenticated cluster")
    keys_commands = keys.add_subparsers(
        title="keys commands", dest="keys_command", metavar="{generate}", required=True
    )
    keys_generate = keys_commands.add_parser(
        "generate",
        help="create DIR with a key pair for the scheduler and one for its peers (executors "
        "and clients), the peers' public key authorised; with --peer NAME, add a named pair",
    )
    keys_generate.add_argument("dir", help="the key directory")
    keys_generate.add_argument(
        "--peer",
        metavar="NAME",
        default=None,
        help="add a pair for one peer, in DIR/peers/NAME (copy that folder to its host and "
        "pass it as --keys), and authorise it",
    )
    keys_generate.add_argument(
        "--force", action="store_true", help="overwrite keys that exist (old ones stop working)"
    )
    keys_generate.set_defaults(run=_run_keys_generate)

    timeline = commands.add_parser(
        "timeline",
        help="draw a scheduler's event log as a timeline per executor (a PNG, or a Chrome "
        "trace for Perfetto)",
    )
    timeline.add_argument("log", help="an event log (`tidal scheduler --event-log PATH`)")
    timeline.add_argument(
        "--out", default=None, help="the PNG to write (default: the log's path with .png)"
    )
    timeline.add_argument("--title", default=None, help="the plot's title")
    timeline.add_argument(
        "--chrome-trace",
        default=None,
        metavar="OUT.json",
        help="write the log as a Chrome trace for Perfetto or chrome://tracing instead of "
        "the PNG (with --out too: both)",
    )
    timeline.set_defaults(run=_run_timeline)

    from tidal.runtime.bench import BENCHMARKS

    bench = commands.add_parser(
        "bench", help="run a benchmark, or all of them (see docs/benchmarks.md)"
    )
    bench.add_argument("name", choices=[*BENCHMARKS, "all"], help="which benchmark")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true", help="fewer iterations")
    bench.add_argument("--out", default=None, help="also write the JSON result to this file")
    bench.set_defaults(run=_run_bench)

    demo = commands.add_parser(
        "demo", help="the unified stream/batch application under each policy, with a report"
    )
    demo.add_argument(
        "--policies",
        default="fifo,fair,kill,lb",
        help="comma-separated (default fifo,fair,kill,lb)",
    )
    demo.add_argument("--executors", type=int, default=2, help="executor processes (default 2)")
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of batch work per policy, on an idle cluster (default 15; 3 with --quick)",
    )
    demo.add_argument("--quick", action="store_true", help="a short run (well under a minute)")
    demo.add_argument("--out", default="tidal-report", help="report folder (default tidal-report)")
    demo.add_argument("--seed", type=int, default=0, help="seed of every generated input")
    demo.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        nargs="?",
        const=True,
        default=False,
        help="watch it live: each policy's cluster serves the dashboard there (without a "
        "value on 127.0.0.1:8787, or a free port if that is taken)",
    )
    demo.add_argument(
        "--source",
        metavar="redis://HOST:PORT",
        help="run the stream job on a real broker: events produced into a Redis Stream at the "
        "set rate and consumed by a stream driver, counted in Redis exactly once; latencies "
        "are then from each event's production to its counts written (needs tidal[streams])",
    )
    demo.set_defaults(run=_run_demo)

    # --scheduler's default comes from the environment (runtime/config.py), read once parsed.
    for command in (executor, status, policy_set):
        fallback = command.get_default("scheduler")
        command.set_defaults(scheduler=FromEnvironment(SCHEDULER_ADDRESS, fallback))
    return parser


def _run_executor(args: argparse.Namespace) -> int:
    from tidal.runtime.auth import KeyFileError
    from tidal.runtime.datastore import DataAddressError
    from tidal.runtime.executor import Executor
    from tidal.runtime.memory import parse_size
    from tidal.runtime.runstate import suspend_timeout_problem

    if args.scheduler is None:
        print(
            "tidal executor: no scheduler: give --scheduler ADDRESS or set "
            f"{SCHEDULER_ADDRESS.name}",
            file=sys.stderr,
        )
        return 2
    if args.nworkers < 1:
        print(f"tidal executor: --nworkers must be >= 1, not {args.nworkers}", file=sys.stderr)
        return 2
    # Checked here too: an executor of `--nworkers` is built in a process of its own.
    if (problem := suspend_timeout_problem(int(args.suspend_timeout_ms * 1e6))) is not None:
        print(f"tidal executor: --suspend-timeout-ms: {problem}", file=sys.stderr)
        return 2
    if not _use_pythonpath(args, "executor"):
        return 2
    try:
        memory_limit = None if args.memory_limit is None else parse_size(args.memory_limit)
        if args.nworkers > 1:
            executor = _executor_slots(args)
        else:
            executor = Executor(
                args.scheduler,
                node=args.node,
                executor_id=args.executor_id,
                switch_interval_s=args.switch_interval_us / 1e6,
                suspend_timeout_ns=int(args.suspend_timeout_ms * 1e6),
                connect_timeout_s=args.connect_timeout,
                reconnect_timeout_s=args.reconnect_timeout,
                realtime=args.realtime,
                memory_limit=memory_limit,
                keys=args.keys,
                clean_exit_level=logging.INFO if args.quiet_exit else logging.WARNING,
            )
    except (KeyFileError, DataAddressError) as exc:  # each names the file or the variable
        print(f"tidal executor: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a bad --memory-limit, or one below the executor's own RSS
        print(f"tidal executor: --memory-limit: {exc}", file=sys.stderr)
        return 2
    return executor.run()


def _executor_slots(args: argparse.Namespace) -> Any:
    """`tidal executor --nworkers N`: N executors in processes of their own, to supervise
    here (runtime/processes.py, `ExecutorSlots`). Raises what would fail each of them."""
    from tidal.runtime.auth import load_peer_keys
    from tidal.runtime.datastore import advertised_address
    from tidal.runtime.processes import ExecutorSlots, spawn_executor

    if args.keys is not None:
        load_peer_keys(args.keys)
    advertised_address()

    def start(slot: int, restart: int) -> subprocess.Popen[bytes]:
        return spawn_executor(
            args.scheduler,
            node=args.node,
            extra_args=_slot_args(args, slot, restart),
            log_level=args.log_level,
            die_with_parent=True,  # a supervisor killed -9 leaves no executor behind
        )

    return ExecutorSlots(args.nworkers, start)


def _slot_args(args: argparse.Namespace, slot: int, restart: int) -> list[str]:
    """The options of slot `slot` of `tidal executor --nworkers N`, started for the
    `restart`-th time (0: the first): this command's, with an id of its own if it has one
    (`ID-2`, then `ID-2-r1`, ...: never the id of a slot that died, which the scheduler may
    not have seen go yet). The scheduler, node and log level are passed apart."""
    out = [
        *("--switch-interval-us", str(args.switch_interval_us)),
        *("--suspend-timeout-ms", str(args.suspend_timeout_ms)),
        *("--connect-timeout", str(args.connect_timeout)),
        *("--reconnect-timeout", str(args.reconnect_timeout)),
    ]
    if args.executor_id is not None:
        out += ["--id", f"{args.executor_id}-{slot}" + (f"-r{restart}" if restart else "")]
    if not args.realtime:
        out.append("--no-realtime")
    if args.quiet_exit:
        out.append("--quiet-exit")
    if args.memory_limit is not None:
        out += ["--memory-limit", args.memory_limit]
    if args.keys is not None:
        out += ["--keys", os.path.abspath(args.keys)]
    for entry in args.pythonpath:
        out += ["--pythonpath", entry]
    return out


def _run_scheduler(args: argparse.Namespace) -> int:
    from tidal.scheduler.policies import UnknownPolicy, resolve_policy

    if not _use_pythonpath(args, "scheduler"):  # before a 'module:Class' policy is imported
        return 2
    try:
        resolve_policy(args.policy)
    except UnknownPolicy as exc:
        print(f"tidal scheduler: {exc}", file=sys.stderr)
        return 2
    if args.keys is not None:  # the warning on a bind beyond loopback without keys: server
        from tidal.runtime.auth import KeyFileError, load_server_keys

        try:
            load_server_keys(args.keys)
        except KeyFileError as exc:
            print(f"tidal scheduler: {exc}", file=sys.stderr)
            return 2
    if args.event_log is not None:
        try:  # fail here, with the reason, rather than in the server's traceback
            open(args.event_log, "a").close()
        except OSError as exc:
            print(f"tidal scheduler: cannot write the event log: {exc}", file=sys.stderr)
            return 2
    for name in ("heartbeat_ms", "missed_heartbeats"):
        if getattr(args, name) < 1:
            print(f"tidal scheduler: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.max_retries < 0:
        print("tidal scheduler: --max-retries must be >= 0", file=sys.stderr)
        return 2
    if args.client_timeout <= 0:
        print("tidal scheduler: --client-timeout must be > 0", file=sys.stderr)
        return 2
    from tidal.scheduler.dashboard import DEFAULT_DASHBOARD, DashboardUnavailable
    from tidal.scheduler.journal import JournalError, default_journal_path
    from tidal.scheduler.service import serve

    journal = None if args.no_journal else (args.journal or default_journal_path(args.bind))
    try:
        return serve(
            args.bind,
            announce=args.announce,
            event_log=args.event_log,
            allow_policy_paths=args.allow_policy_paths,
            stealing=args.stealing,
            policy=args.policy,
            max_suspensions=args.max_suspensions,
            heartbeat_ns=args.heartbeat_ms * 1_000_000,
            missed_heartbeats=args.missed_heartbeats,
            realtime=args.realtime,
            max_retries=args.max_retries,
            journal=journal,
            journal_sync=args.journal_sync,
            keys=args.keys,
            dashboard=DEFAULT_DASHBOARD if args.dashboard is True else args.dashboard,
            dashboard_fall_back=args.dashboard is True,
            client_timeout_ns=int(args.client_timeout * 1e9),
        )
    except (JournalError, DashboardUnavailable) as exc:
        print(f"tidal scheduler: {exc}", file=sys.stderr)
        if args.announce:  # where LocalCluster reads, so that its error says why
            print(f"tidal scheduler: {exc}", flush=True)
        return 2


def _run_status(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.live import Live

    from tidal.runtime.client import Client
    from tidal.runtime.status_view import render

    if args.interval <= 0:
        print("tidal status: --interval must be > 0", file=sys.stderr)
        return 2
    try:
        with Client(args.scheduler, timeout=5.0, keys=args.keys) as client:
            snapshot = client.status()
            if args.json:
                print(json.dumps(snapshot, indent=2))
                return 0
            console = Console()
            if not args.watch:
                console.print(render(snapshot, tasks=args.tasks))
                return 0
            with Live(render(snapshot, tasks=args.tasks), console=console) as live:
                try:
                    while True:
                        time.sleep(args.interval)  # the redraw's pace, nothing waits on it
                        live.update(render(client.status(), tasks=args.tasks))
                except KeyboardInterrupt:
                    pass
            return 0
    except (ConnectionError, ValueError, TimeoutError) as exc:  # ValueError: bad keys
        print(f"tidal status: {exc}", file=sys.stderr)
        return 1


def _run_policy_set(args: argparse.Namespace) -> int:
    from tidal.runtime.client import Client

    try:
        with Client(args.scheduler, timeout=5.0, keys=args.keys) as client:
            active = client.set_policy(args.name)
    except (ConnectionError, TimeoutError) as exc:
        print(f"tidal policy set: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # refused by the scheduler, or an address Client cannot use
        print(f"tidal policy set: {exc}", file=sys.stderr)
        return 2
    print(f"policy is now {active}")
    return 0


def _run_policy_list(args: argparse.Namespace) -> int:
    from tidal.scheduler.policies import known_policy_names

    for name in known_policy_names():
        print(name)
    return 0


def _run_keys_generate(args: argparse.Namespace) -> int:
    from tidal.runtime.auth import generate_keys

    try:
        written = generate_keys(args.dir, peer=args.peer, force=args.force)
    except (OSError, ValueError) as exc:  # FileExistsError, KeyFileError, a bad name
        print(f"tidal keys generate: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    where = args.dir if args.peer is None else os.path.join(args.dir, "peers", args.peer)
    print(
        f"scheduler: --keys {args.dir} (keep scheduler.key_secret on its host); "
        f"executors and clients: --keys {where} (needs peer.key_secret and scheduler.key)"
    )
    return 0


def _run_timeline(args: argparse.Namespace) -> int:
    import os

    from tidal.runtime.timeline import plot_timeline
    from tidal.runtime.trace import write_chrome_trace
    from tidal.scheduler.eventlog import read_events

    trace = args.chrome_trace
    if trace is not None and os.path.abspath(trace) == os.path.abspath(args.log):
        print("tidal timeline: --chrome-trace names the log itself", file=sys.stderr)
        return 1
    out = args.out or (None if trace else os.path.splitext(args.log)[0] + ".png")
    if out is not None and os.path.abspath(out) == os.path.abspath(args.log):
        out = args.log + ".png"  # never draw over the log itself
    try:
        events = read_events(args.log)
        if trace is not None:
            count = write_chrome_trace(events, trace)
            print(f"wrote {trace} ({count} trace events from {len(events)} log events)")
        if out is not None:
            plot_timeline(events, out, title=args.title)
            print(f"wrote {out} ({len(events)} events)")
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"tidal timeline: {exc}", file=sys.stderr)
        return 1
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tidal.runtime.bench import suite

    if args.name == "all":
        results = suite.run_all(quick=args.quick)
        failed = [name for name, r in results["benchmarks"].items() if "error" in r]
    else:
        results = suite.run_benchmark(args.name, quick=args.quick)
        failed = []
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(results))
    elif args.name == "all":
        suite.print_summary(results)
    else:
        suite.print_results(results)
    for name in failed:
        print(
            f"tidal bench all: {name} failed:\n{results['benchmarks'][name]['error']}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tidal.runtime import demo
    from tidal.scheduler.policies import UnknownPolicy, resolve_policy

    policies = demo.parse_policies(args.policies)
    try:
        for name in policies:
            resolve_policy(name)
    except UnknownPolicy as exc:
        print(f"tidal demo: {exc}", file=sys.stderr)
        return 2
    if args.executors < 1:
        print("tidal demo: --executors must be at least 1", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "policies": policies,
        "executors": args.executors,
        "out": Path(args.out),
        "seed": args.seed,
        "dashboard": args.dashboard,
    }
    if args.duration is not None:
        options["duration_s"] = args.duration
    if args.source is not None:
        problem = demo.source_problem(args.source)
        if problem:
            print(f"tidal demo: {problem}", file=sys.stderr)
            return 2
        options["source"] = args.source
    config = demo.DemoConfig.quick(**options) if args.quick else demo.DemoConfig(**options)
    result = demo.run(config)
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
