"""`tidal bench NAME` and `tidal bench all`: run benchmarks, record the machine, show tables.

Each benchmark is a module of runtime/bench with `TARGETS` ({figure: (op, limit)}) and
`run(quick=False) -> dict`. `run_benchmark` adds the machine and the reference figures
(runtime/bench/machine.py) to what it returns. `run_all` runs every benchmark in a process
of its own, one after the other (so that one's threads, memory or switch interval cannot
colour the next one's figures), with a live progress display, and gathers the results.
"""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import time
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tidal.runtime.bench import BENCHMARKS
from tidal.runtime.bench.machine import machine_info, reference_figures
from tidal.runtime.processes import child_env, tidal_command

__all__ = [
    "BENCHMARKS",
    "print_results",
    "print_summary",
    "run_all",
    "run_benchmark",
    "targets_of",
    "verdicts",
]

TIMEOUT_S = {True: 300.0, False: 1800.0}  # per benchmark, quick or not
MARKS = {True: "[green]met[/]", False: "[red]missed[/]", None: "[yellow]n/a[/]"}  # by verdict


def targets_of(name: str) -> dict[str, tuple[str, float]]:
    return importlib.import_module(f"tidal.runtime.bench.{name}").TARGETS


def run_benchmark(name: str, quick: bool = False) -> dict[str, Any]:
    """Run one benchmark here; its figures, with `benchmark`, `quick`, `elapsed_s`,
    `machine` and `reference` added."""
    module = importlib.import_module(f"tidal.runtime.bench.{name}")
    reference = reference_figures()
    start = time.monotonic()
    figures = module.run(quick=quick)
    return {
        "benchmark": name,
        "quick": quick,
        **figures,
        "elapsed_s": time.monotonic() - start,
        "machine": machine_info(),
        "reference": reference,
    }


def run_all(
    quick: bool = False, names: Sequence[str] = BENCHMARKS, console: Console | None = None
) -> dict[str, Any]:
    """Every benchmark in `names`, each in a fresh `tidal bench NAME --json` process. A
    benchmark that fails or times out is recorded with its error; the others still run."""
    console = console or Console(stderr=True)
    results: dict[str, Any] = {}
    start = time.monotonic()
    progress = Progress(
        SpinnerColumn(finished_text="•"),
        TextColumn("{task.description:<11}"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        rows = {
            name: progress.add_task(name, total=1, start=False, status="waiting") for name in names
        }
        for name in names:
            progress.start_task(rows[name])
            progress.update(rows[name], status="running")
            results[name] = _run_in_process(name, quick)
            error = results[name].get("error")
            status = (
                f"[red]failed: {error.splitlines()[-1]}[/]"
                if error
                else _status_line(results[name])
            )
            progress.update(rows[name], completed=1, status=status)
            progress.stop_task(rows[name])
    return {
        "quick": quick,
        "total_s": time.monotonic() - start,
        "machine": machine_info(),
        "reference": reference_figures(),
        "benchmarks": results,
    }


def _run_in_process(name: str, quick: bool) -> dict[str, Any]:
    command = tidal_command("bench", name, "--json")
    if quick:
        command.append("--quick")
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S[quick], env=child_env()
        )
    except subprocess.TimeoutExpired:
        return {"benchmark": name, "error": f"timed out after {TIMEOUT_S[quick]:.0f} s"}
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:]) or f"exit {done.returncode}"
        return {"benchmark": name, "error": tail}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"benchmark": name, "error": f"no JSON in its output: {done.stdout[-500:]!r}"}


def verdicts(
    figures: dict[str, Any], targets: dict[str, tuple[str, float]]
) -> Iterator[tuple[str, Any, str, bool | None]]:
    """(figure, value, "op limit", met) for each target; met is None if the figure is
    missing (a skipped peer, say)."""
    for figure, (op, limit) in targets.items():
        value = figures.get(figure)
        if not isinstance(value, int | float) or math.isnan(value):
            yield figure, value, f"{op} {limit:g}", None
        else:
            yield figure, value, f"{op} {limit:g}", value <= limit if op == "<=" else value >= limit


def _status_line(figures: dict[str, Any]) -> str:
    parts = [
        f"{figure} {_shown(value)} {MARKS[met]}"
        for figure, value, _, met in verdicts(figures, targets_of(figures["benchmark"]))
    ]
    return "; ".join(parts) or "done"


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return "-" if value is None else str(value)


def flatten(figures: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts (and lists of them) as dotted keys; machine and reference are shown
    apart."""
    for key, value in figures.items():
        if not prefix and key in ("machine", "reference", "benchmark"):
            continue
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                yield from flatten(item, f"{prefix}{key}.{i}.")
        else:
            yield f"{prefix}{key}", value


def print_results(figures: dict[str, Any], console: Console | None = None) -> None:
    """One benchmark's figures as a table, with its targets' verdicts."""
    console = console or Console()
    name = figures["benchmark"]
    checks = {f: (target, met) for f, _, target, met in verdicts(figures, targets_of(name))}
    table = Table(title=f"tidal bench {name}" + (" --quick" if figures.get("quick") else ""))
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    for key, value in flatten(figures):
        target, met = checks.get(key, ("", False))
        table.add_row(key, _shown(value), f"{target} {MARKS[met]}" if target else "")
    console.print(table)
    console.print(_machine_line(figures))


def _machine_line(results: dict[str, Any]) -> str:
    machine, ref = results["machine"], results["reference"]
    return (
        f"on {machine['cpu_model']}, {machine['cores']} cores, {machine['python']}; "
        f"reference: loop {ref['loop_ns_per_element']:.1f} ns/element, call "
        f"{ref['call_ns']:.1f} ns, thread hand-off {ref['thread_handoff_us_p50']:.1f} us"
    )


def print_summary(results: dict[str, Any], console: Console | None = None) -> None:
    """`tidal bench all`'s table: every target of every benchmark, with its verdict."""
    console = console or Console()
    table = Table(title="tidal bench all" + (" --quick" if results["quick"] else ""))
    for column in ("benchmark", "figure", "value", "target", ""):
        table.add_column(column, justify="right" if column in ("value", "target") else "left")
    for name, figures in results["benchmarks"].items():
        if "error" in figures:
            table.add_row(name, "", "", "", f"[red]failed[/]: {figures['error'].splitlines()[-1]}")
            continue
        for figure, value, target, met in verdicts(figures, targets_of(name)):
            table.add_row(name, figure, _shown(value), target, MARKS[met])
    console.print(table)
    console.print(_machine_line(results) + f"; {results['total_s']:.0f} s in all")
