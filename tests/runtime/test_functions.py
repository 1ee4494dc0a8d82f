"""Function references: what the client may send, and what the executor can find."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest

from tidal.runtime import protocol as p
from tidal.runtime.functions import (
    MAIN_ALIAS,
    FunctionNotFound,
    FunctionNotImportable,
    FunctionRef,
    function_ref,
    use_import_path,
)
from tidal.runtime.processes import child_env
from tidal.workloads import synthetic


def test_a_module_level_task_travels_as_module_and_qualname():
    ref = function_ref(synthetic.total)
    assert ref == FunctionRef("tidal.workloads.synthetic:total", None)
    assert ref.resolve() is synthetic.total


def test_lambdas_and_nested_functions_are_refused_with_the_reason():
    def nested():
        pass

    with pytest.raises(FunctionNotFound, match="lambda or is defined inside another function"):
        function_ref(lambda: None)
    with pytest.raises(FunctionNotFound, match="top level of a module"):
        function_ref(nested)
    with pytest.raises(FunctionNotFound, match="not a module-level function"):
        function_ref(42)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no_colon", "expected 'module:qualname'"),
        ("no_such_module_abc:f", "cannot import module 'no_such_module_abc'"),
        ("tidal.workloads.synthetic:missing", "has no attribute 'missing'"),
        ("tidal.workloads.synthetic:time", "is a module, not a function"),
        ("__main__:f", "no script path came with it"),
    ],
)
def test_unresolvable_references_name_the_problem(ref, message):
    with pytest.raises(FunctionNotFound, match=message):
        FunctionRef(ref).resolve()


def test_main_script_functions_load_without_running_the_main_block(tmp_path, monkeypatch):
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent("""
        def triple(x):
            return 3 * x

        if __name__ == "__main__":
            raise SystemExit("must not run")
    """)
    )
    monkeypatch.delitem(sys.modules, MAIN_ALIAS, raising=False)
    fn = FunctionRef("__main__:triple", str(script)).resolve()
    assert fn(2) == 6
    missing = FunctionRef("__main__:triple", str(tmp_path / "gone.py"))
    with pytest.raises(FunctionNotFound, match="cannot read"):
        missing.resolve()
    monkeypatch.delitem(sys.modules, MAIN_ALIAS, raising=False)


def test_task_functions_pickle_by_reference_like_plain_functions():
    import pickle

    assert pickle.loads(pickle.dumps(synthetic.total)) is synthetic.total


# ---- functions of an interactive __main__: refused at submit time ----------------------------


def main_function(source: str, name: str, *, compiled_from: str, main_file: str | None):
    """`name`, defined by running `source` as a `__main__` module whose `__file__` is
    `main_file` (None: no file, as in the interpreter), compiled as if from `compiled_from`."""
    module = types.ModuleType("__main__")
    if main_file is not None:
        module.__file__ = main_file
    exec(compile(source, compiled_from, "exec"), module.__dict__)
    return module, getattr(module, name)


@pytest.mark.parametrize(
    ("compiled_from", "main_file", "why"),
    [
        ("<stdin>", None, "its module, __main__, is no script file"),  # the interpreter
        ("<string>", None, "its module, __main__, is no script file"),  # python -c
        ("<stdin>", "<stdin>", "its module, __main__, is no script file"),  # python - < f.py
        ("/tmp/ipykernel_1/123.py", None, "no script file"),  # a notebook cell
        ("<stdin>", "SCRIPT", "its code comes from '<stdin>', not from the script"),  # -i
    ],
)
def test_a_function_defined_interactively_is_refused_naming_it_and_why(
    tmp_path, monkeypatch, compiled_from, main_file, why
):
    script = tmp_path / "app.py"
    script.write_text("print('the script')\n")
    main_file = str(script) if main_file == "SCRIPT" else main_file
    source = "def square(x):\n    return x * x\n"
    module, fn = main_function(source, "square", compiled_from=compiled_from, main_file=main_file)
    monkeypatch.setitem(sys.modules, "__main__", module)
    with pytest.raises(FunctionNotImportable) as refused:
        function_ref(fn)
    message = str(refused.value)
    assert message.startswith("cannot submit 'square': it was defined interactively")
    assert why in message and "put it in a module" in message
    assert isinstance(refused.value, TypeError) and isinstance(refused.value, FunctionNotFound)


def test_a_function_of_the_users_script_still_travels_with_the_scripts_path(tmp_path, monkeypatch):
    script = tmp_path / "app.py"
    source = "def square(x):\n    return x * x\n"
    script.write_text(source)
    module, fn = main_function(source, "square", compiled_from=str(script), main_file=str(script))
    monkeypatch.setitem(sys.modules, "__main__", module)
    assert function_ref(fn) == FunctionRef("__main__:square", str(script))
    # Redefined after the script ran (by hand in `python -i`, say): the script's would run.
    module.square = lambda x: x
    with pytest.raises(FunctionNotImportable, match="does not lead back"):
        function_ref(fn)


@pytest.mark.slow
def test_python_dash_c_gets_the_refusal_at_submit_with_a_real_client(fake):
    # A real interpreter's __main__ (what `python -c` makes), a real Client: refused at
    # submit, before anything is sent.
    program = textwrap.dedent(f"""
        from tidal.runtime.client import Client

        def square(x):
            return x * x

        with Client({fake.address!r}, timeout=10) as client:
            try:
                client.submit(square, 3)
            except TypeError as exc:
                print(type(exc).__name__, exc)
    """)
    done = subprocess.run(
        [sys.executable, "-c", program], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("FunctionNotImportable cannot submit 'square': it was defined")
    assert fake.received(p.Submit) == []


# ---- where executors import from ------------------------------------------------------------


def test_the_working_directory_then_pythonpath_folders_come_first_on_sys_path(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(sys, "path", ["/already/there"])
    one, two, three = (tmp_path / name for name in ("one", "two", "three"))
    for folder in (one, two, three):
        folder.mkdir()
    use_import_path([str(one), f"{two}{os.pathsep}{three}", str(one)], working_directory="/w")
    assert sys.path == ["/w", str(one), str(two), str(three), "/already/there"]
    with pytest.raises(ValueError, match="'/no/such/folder' is not a directory"):
        use_import_path(["/no/such/folder"])


def test_a_module_an_executor_cannot_import_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FunctionNotFound) as missing:
        FunctionRef("firsthour_nowhere:f").resolve()
    assert f"working directory {str(tmp_path)!r}" in str(missing.value)
    assert "--pythonpath" in str(missing.value)
