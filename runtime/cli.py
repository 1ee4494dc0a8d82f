"""The `tidal` command line: one subcommand per job, each a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return args.run(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tidal", description="Tidal: suspendable tasks for unified stream/batch applications."
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(title="commands")

    executor = commands.add_parser("executor", help="run an executor process")
    executor.add_argument(
        "--scheduler", required=True, help="scheduler address, e.g. tcp://127.0.0.1:5555"
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
        "boundary within this time (default 100)",
    )
    executor.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the scheduler's welcome (default 30)",
    )
    executor.add_argument(
        "--no-realtime",
        dest="realtime",
        action="store_false",
        help="keep the I/O and listener threads at normal priority (by default "
        "they run SCHED_FIFO where permitted, see README)",
    )
    executor.set_defaults(run=_run_executor)

    bench = commands.add_parser("bench", help="run a benchmark")
    bench.add_argument("name", choices=["suspend"], help="which benchmark")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true", help="fewer iterations")
    bench.set_defaults(run=_run_bench)

    demo = commands.add_parser("demo", help="show a stream task taking a busy slot")
    demo.add_argument("--streams", type=int, default=5, help="stream tasks to send")
    demo.set_defaults(run=_run_demo)
    return parser


def _run_executor(args: argparse.Namespace) -> int:
    from runtime.executor import serve

    return serve(
        args.scheduler,
        node=args.node,
        executor_id=args.executor_id,
        switch_interval_s=args.switch_interval_us / 1e6,
        suspend_timeout_ns=int(args.suspend_timeout_ms * 1e6),
        connect_timeout_s=args.connect_timeout,
    )


def _run_bench(args: argparse.Namespace) -> int:
    from runtime.bench import suspend

    results = suspend.run(quick=args.quick)
    results["yield_overhead_ns"] = results["yield_ns_per_record"] - results["bare_ns_per_record"]
    if args.json:
        print(json.dumps(results))
    else:
        _print_table(f"tidal bench {args.name}", results, suspend.TARGETS)
    return 0


def _print_table(
    title: str, results: dict[str, Any], targets: dict[str, tuple[str, float]]
) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    for key, value in results.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        target = targets.get(key)
        if target:
            op, limit = target
            met = value <= limit if op == "<=" else value >= limit
            verdict = f"{op} {limit:g} " + ("[green]met[/]" if met else "[red]missed[/]")
        else:
            verdict = ""
        table.add_row(key, shown, verdict)
    Console().print(table)


def _run_demo(args: argparse.Namespace) -> int:
    from runtime import demo

    result = demo.run(streams=args.streams)
    return 0 if result["batch_correct"] else 1


if __name__ == "__main__":
    sys.exit(main())
