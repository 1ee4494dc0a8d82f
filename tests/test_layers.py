"""Which part of Tidal may import which: the layers, written down once and checked.

Tidal's one import package has three floors (a module may import its own floor and those
below it, never one above):

1. `tidal.runtime`'s machinery and `tidal.workloads`: tasks, the record gate, the kernel, the
   executor, the wire protocol and what they need (workloads are task code, as a user's is);
2. `tidal.scheduler`: the scheduler core, its records, views and policies, its server;
3. the user-facing layer: the client, the local cluster, the CLI, the demo and its report,
   the timeline, the benchmarks, and the package's face (`tidal/__init__.py`).

Any module may import the bare package `tidal` (for `__version__`, or where it is installed):
it is always imported first anyway and loads nothing else until a public name is asked for.
A public name imported from it (`from tidal import Client`) counts as an import of the
module that defines it.
Inside the scheduler, only the shells around the core import it: the server and the
simulation. And no group of modules imports each other in a circle.
"""

from __future__ import annotations

import ast
import pathlib

import tidal

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The repository's folders and the packages they install as (setup.cfg, package_dir).
PACKAGES = {
    "tidal": "tidal",
    "runtime": "tidal.runtime",
    "scheduler": "tidal.scheduler",
    "workloads": "tidal.workloads",
}

# Floor 3 inside tidal.runtime: what a user (or an operator) drives. The rest of
# tidal.runtime is floor 1; a new module lands there, the strictest floor, unless named here.
USER_FACING = {
    "tidal",
    "tidal.__main__",
    "tidal.runtime.bench",
    "tidal.runtime.bulk",
    "tidal.runtime.calls",
    "tidal.runtime.cli",
    "tidal.runtime.client",
    "tidal.runtime.client_executor",
    "tidal.runtime.client_requests",
    "tidal.runtime.client_io",
    "tidal.runtime.cluster",
    "tidal.runtime.demo",
    "tidal.runtime.futures",
    "tidal.runtime.kept_futures",
    "tidal.runtime.processes",
    "tidal.runtime.progress",
    "tidal.runtime.report",
    "tidal.runtime.status_view",
    "tidal.runtime.timeline",
    "tidal.workloads.broker",  # the demo's stream job on Redis: it drives a Client
    "tidal.workloads.unified",  # the demo's application: it drives a Client
}
CORE_IMPORTERS = {"tidal.scheduler.server", "tidal.scheduler.sim"}


def floor(module: str) -> int:
    if module in USER_FACING or any(module.startswith(f"{m}.") for m in USER_FACING - {"tidal"}):
        return 3
    return 2 if module.startswith("tidal.scheduler") else 1


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            found[".".join([package, *(p for p in parts if p != "__init__")])] = path
    return found


def imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """The Tidal modules `path` imports anywhere in it (TYPE_CHECKING and function bodies
    included: an import in a function is still a dependency)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "tidal":
            out.update(tidal._HOMES.get(alias.name, "tidal") for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            # `from tidal.scheduler import chunks` names a module; `from x import y` a name.
            out.update(n for n in names if n in known)
            if not any(n in known for n in names):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in known and m != "tidal"}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(path, set(found)) for m, path in found.items()}


def test_every_import_runs_down_or_across_a_floor_never_up():
    upward = [
        f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})"
        for module, targets in graph().items()
        for target in sorted(targets)
        if floor(target) > floor(module)
    ]
    assert upward == []


def test_only_the_shells_import_the_scheduler_core():
    importers = {m for m, targets in graph().items() if "tidal.scheduler.core" in targets}
    assert {m for m in importers if m.startswith("tidal.scheduler")} <= CORE_IMPORTERS


def test_no_modules_import_each_other_in_a_circle():
    edges = graph()
    circles, state = [], {}  # state: 1 while on the path, 2 when done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges[module]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_layers_see_the_real_imports(tmp_path):
    # The checks above would pass on an empty graph: make sure they read the code.
    edges = graph()
    assert "tidal.scheduler.records" in edges["tidal.scheduler.core"]
    assert "tidal.runtime.protocol" in edges["tidal.runtime.kernel"]
    assert floor("tidal.runtime.client") == 3 and floor("tidal.runtime.bench.scale") == 3
    assert floor("tidal.runtime.kernel") == 1 and floor("tidal.scheduler.core") == 2
    # A public name from the face is an import of its home.
    face = ROOT / "tidal" / "__main__.py"
    assert imports(face, set(modules())) == {"tidal.runtime.cli"}
