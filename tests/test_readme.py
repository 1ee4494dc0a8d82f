"""The README's policy example is real code: run it on the scripted scheduler harness."""

from __future__ import annotations

import pathlib
import re

from tests.scheduler.test_core import Harness
from tidal.runtime import protocol as p

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_block(marker: str) -> str:
    """The fenced python block of the README that contains `marker`."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_the_write_your_own_policy_example_works():
    namespace: dict = {}
    exec(readme_block("class StreamFirstNewestBatch"), namespace)  # our own README
    h = Harness(policy=namespace["StreamFirstNewestBatch"](), executors=[("e0", "n0")])
    h.submit("old", "batch", 1)
    h.submit("new", "batch", 1)
    (first,) = h.sent("e0", p.Launch)
    h.start("e0", first.task_id)
    h.finish("e0", first.task_id)
    assert [m.task_id for m in h.sent("e0", p.Launch)] == ["new/0"]  # newest first
    h.start("e0", "new/0")
    (stream,) = h.submit("s", "stream", 1)
    assert [type(m) for m in h.sent("e0")] == [p.Suspend, p.Launch]
    h.report("e0", p.Suspended("new/0", 1, 1, 1))
    h.start("e0", stream)
    h.finish("e0", stream)
    assert [(type(m), m.task_id) for m in h.sent("e0")] == [(p.Resume, "new/0")]
    assert h.core.refused == []


def test_every_readme_example_imports_from_tidal_alone():
    # One public face: a first program needs no submodule of tidal.
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    imports = [line for b in blocks for line in b.splitlines() if "import" in line]
    assert any(line.startswith("from tidal import") for line in imports)
    assert [line for line in imports if "tidal." in line] == []


def test_the_public_face_lists_every_name_it_serves():
    # `__all__` is written out for tools that read it statically; it must not drift from
    # the names `tidal` loads on first use.
    import tidal

    assert set(tidal.__all__) == {*tidal._HOMES, "__version__"}
    assert all(getattr(tidal, name) is not None for name in tidal.__all__)
