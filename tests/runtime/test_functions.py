"""Function references: what the client may send, and what the executor can find."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tidal.runtime.functions import MAIN_ALIAS, FunctionNotFound, FunctionRef, function_ref
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
