"""Functions travel by reference: "module:qualname", plus the path of the user's script.

Nothing executable crosses the wire. The client turns a function into a reference, checking
that an executor will be able to import it; the executor imports it when the task starts.

Functions defined in the user's `__main__` script work the way multiprocessing's spawn start
method makes them work: the executor runs that script once under the module name
`__mp_main__` (so its `if __name__ == "__main__":` block does not run again) and looks the
function up there. A function of a `__main__` that is no script (the interactive
interpreter, `python -c`, a notebook cell) has nothing an executor could run or import: it
is refused at submit time (`FunctionNotImportable`), as are lambdas and nested functions.

Where an executor imports from: its `sys.path`, which `tidal executor` (and `tidal
scheduler`, for a policy's path) starts with its working directory and the folders given as
`--pythonpath`, as `python -m` and PYTHONPATH would (`use_import_path`).
"""

from __future__ import annotations

import importlib
import os
import runpy
import sys
import types
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

__all__ = [
    "FunctionNotFound",
    "FunctionNotImportable",
    "FunctionRef",
    "KnownFunctions",
    "function_ref",
    "short_name",
    "use_import_path",
]

# Functions an executor keeps (`KnownFunctions`), at most: a client that names ever-new
# functions must not grow its tables for ever; they start again when full.
MAX_FUNCTIONS_KEPT = 1024

MAIN_ALIAS = "__mp_main__"


class FunctionNotFound(LookupError):
    """A task's function cannot be referenced or imported. The message says why."""


class FunctionNotImportable(FunctionNotFound, TypeError):
    """Refused at submit time: executors could not import this function (a lambda, a nested
    function, one typed into an interactive session). A TypeError too, as for an argument
    that cannot travel; the message names the function and says why."""


class FunctionRef(NamedTuple):
    """Where to find a task function: `module:qualname`, and the main script if needed.

    Discussion: a named tuple, not a frozen dataclass: it is a dict key at every task an
    executor runs (`KnownFunctions`), and a tuple hashes and compares in C (the dataclass's
    generated `__hash__` and `__eq__` were ~4% of a no-op task's cost there)."""

    ref: str
    main_path: str | None = None

    def resolve(self) -> Callable[..., Any]:
        """Import the module and look the function up, or raise FunctionNotFound."""
        module_name, sep, qualname = self.ref.partition(":")
        if not sep or not module_name or not qualname:
            raise FunctionNotFound(
                f"malformed function reference {self.ref!r}: expected 'module:qualname'"
            )
        if module_name == "__main__":
            module = _load_main_script(self.main_path, self.ref)
        else:
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise FunctionNotFound(
                    f"cannot import module {module_name!r} for task function {self.ref!r}: "
                    f"{type(exc).__name__}: {exc} (is it installed on the executor's host, or "
                    f"in the executor's working directory {os.getcwd()!r}, or in a folder "
                    "given to `tidal executor --pythonpath`?)"
                ) from exc
        obj: Any = module
        for part in qualname.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise FunctionNotFound(
                    f"module {module_name!r} has no attribute {qualname!r} "
                    f"(looking up {self.ref!r})"
                ) from None
        if not callable(obj):
            raise FunctionNotFound(f"{self.ref!r} is a {type(obj).__name__}, not a function")
        return obj


class KnownFunctions:
    """An executor's task functions: each imported once (`resolve`: an import_module call
    costs ~10 us, a tiny task a few), and its tasks' average running time (`ran`,
    `running_ns`), for the kernel to tell short tasks from long ones."""

    def __init__(self) -> None:
        self._resolved: dict[FunctionRef, Callable[..., Any]] = {}
        self._running_ns: dict[Any, float] = {}

    def resolve(self, ref: FunctionRef) -> Callable[..., Any]:
        """The function `ref` names (FunctionNotFound if none: not kept)."""
        fn = self._resolved.get(ref)
        if fn is None:
            fn = ref.resolve()
            if len(self._resolved) >= MAX_FUNCTIONS_KEPT:
                self._resolved.clear()
            self._resolved[ref] = fn
        return fn

    def ran(self, fn: Any, running_ns: int) -> None:
        """A task of `fn` (a reference or a function) ran `running_ns` in all."""
        try:
            average = self._running_ns.get(fn)
            if average is None and len(self._running_ns) >= MAX_FUNCTIONS_KEPT:
                self._running_ns.clear()
            self._running_ns[fn] = (
                running_ns if average is None else 0.7 * average + 0.3 * running_ns
            )
        except TypeError:  # a function that cannot be a key: not kept
            pass

    def running_ns(self, fn: Any) -> float | None:
        """The average running time of `fn`'s tasks so far (None: not known)."""
        try:
            return self._running_ns.get(fn)
        except TypeError:
            return None


def _load_main_script(path: str | None, ref: str) -> types.ModuleType:
    module = sys.modules.get(MAIN_ALIAS)
    if module is not None and getattr(module, "__file__", None) == path:
        return module
    if not path:
        raise FunctionNotFound(
            f"{ref!r} lives in the client's __main__ but no script path came "
            "with it (was it defined in an interactive session?)"
        )
    if not os.path.isfile(path):
        raise FunctionNotFound(
            f"{ref!r} lives in the client's script {path!r}, which this "
            "executor cannot read (on another host, put the function in an "
            "importable module instead)"
        )
    try:
        namespace = runpy.run_path(path, run_name=MAIN_ALIAS)
    except Exception as exc:
        raise FunctionNotFound(
            f"running the client's script {path!r} to find {ref!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    module = types.ModuleType(MAIN_ALIAS)
    module.__dict__.update(namespace)
    module.__file__ = path
    sys.modules[MAIN_ALIAS] = module
    return module


def function_ref(fn: Callable[..., Any]) -> FunctionRef:
    """Reference `fn` for the wire, or raise FunctionNotImportable if executors could not
    find it (the message names it and says why)."""
    target = getattr(fn, "fn", fn)  # a @task TaskFunction carries the function
    module_name = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not callable(fn) or module_name is None or qualname is None:
        raise FunctionNotImportable(
            f"{fn!r} is not a module-level function, so executors cannot import it"
        )
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise FunctionNotImportable(
            f"{qualname!r} in {module_name!r} is a lambda or is defined inside "
            "another function; executors can only import functions defined "
            "at the top level of a module"
        )
    if module_name in ("__main__", MAIN_ALIAS):
        return _main_script_ref(fn, target, sys.modules.get(module_name), qualname)
    ref = FunctionRef(f"{module_name}:{qualname}", None)
    # Check the reference leads back to this very function, as pickle does for functions.
    try:
        found = ref.resolve()
    except FunctionNotFound:
        found = None
    if found is not fn and getattr(found, "fn", found) is not target:
        raise FunctionNotImportable(
            f"{module_name}:{qualname} does not lead back to {fn!r} "
            "(was it redefined, or decorated by something that hides it?)"
        )
    return ref


def _main_script_ref(
    fn: Callable[..., Any], target: Any, main: types.ModuleType | None, qualname: str
) -> FunctionRef:
    """The reference of a function of the client's `__main__`: executors will run the main
    script to find it, so there must be one, and the function must be defined in it.

    Discussion: the script is the module's `__file__`, and the function's own code says
    where it was compiled from. They differ for a function typed into `python -i script.py`
    (`<stdin>`) or a notebook cell (a temporary name), and there is no file at all for the
    plain interpreter, `python -c` or `python - < file` (`<stdin>`): such a reference used to
    be accepted here and fail on the executor, far from the mistake.
    """
    script = getattr(main, "__file__", None)
    code = getattr(target, "__code__", None)  # a class has none: its script is checked alone
    if not script or not os.path.isfile(script):
        where = "its module, __main__, is no script file"
    elif code is not None and not _same_file(code.co_filename, script):
        where = f"its code comes from {code.co_filename!r}, not from the script {script!r}"
    else:
        where = None
    if where is not None:
        raise FunctionNotImportable(
            f"cannot submit {qualname!r}: it was defined interactively (in the interpreter, "
            f"`python -c` or a notebook cell: {where}), so executors cannot import it; put "
            "it in a module (a .py file executors can import: installed, or in their "
            "working directory or --pythonpath) and import it from there"
        )
    found: Any = main
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not fn and getattr(found, "fn", found) is not target:
        raise FunctionNotImportable(
            f"__main__:{qualname} does not lead back to {fn!r} "
            "(was it redefined, or decorated by something that hides it?)"
        )
    return FunctionRef(f"__main__:{qualname}", os.path.abspath(script))


def _same_file(a: str, b: str) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them is no file (`<stdin>`, a notebook's cell name)
        return False


def use_import_path(folders: Iterable[str] = (), *, working_directory: str | None = None) -> None:
    """Put the working directory, then `folders` (each may be several, os.pathsep-separated),
    first on sys.path, as `python -m` and PYTHONPATH do for a program started there: so that
    a process started as `tidal executor` imports a task's module from where it was started,
    as the user's program did. ValueError naming a folder that is no directory."""
    paths = [os.path.abspath(working_directory or os.getcwd())]
    for entry in folders:
        for folder in filter(None, entry.split(os.pathsep)):
            if not os.path.isdir(folder):
                raise ValueError(f"{folder!r} is not a directory")
            paths.append(os.path.abspath(folder))
    sys.path[:0] = [path for i, path in enumerate(paths) if path not in paths[:i]]
    importlib.invalidate_caches()


def short_name(ref: str) -> str:
    """A function reference as people read it: "module:qualname" -> "qualname"."""
    return ref.rpartition(":")[2] or ref
