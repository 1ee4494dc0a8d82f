"""Policies from outside Tidal: an installed distribution's `tidal.policies` entry point, a
"module:Class" path, a class, an instance; and `tidal policy list`, which shows them.

The "installed distribution" is a module and a `*.dist-info` directory written to tmp_path,
which is put on sys.path: importlib.metadata finds it as it finds any installed package.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from tidal.runtime import protocol as p
from tidal.runtime.cli import main
from tidal.scheduler.core import ClientJoined, ClientRequest, SchedulerCore, ToClient
from tidal.scheduler.events import PolicyChanged
from tidal.scheduler.policies import (
    BUILTIN_POLICIES,
    ENTRY_POINT_GROUP,
    Policy,
    UnknownPolicy,
    known_policy_names,
    resolve_policy,
)

MODULE = "mypolicies"

POLICY_SOURCE = '''
"""A third-party policy: the newest pending task first."""

from tidal.scheduler.decisions import Launch
from tidal.scheduler.policies import Policy


class NewestFirst(Policy):
    name = "newest"

    def tasks_submitted(self, view, tasks):
        return self._fill(view)

    def slot_freed(self, view, executor):
        return self._fill(view)

    def _fill(self, view):
        newest = sorted(view.pending(), key=lambda t: t.seq, reverse=True)
        for executor in view.executors():
            for _ in range(executor.free_capacity):
                if not newest:
                    return
                yield Launch(newest.pop(0).task_id, executor.executor_id)
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A distribution `mypolicies` registering `newest = mypolicies:NewestFirst`."""
    (tmp_path / f"{MODULE}.py").write_text(POLICY_SOURCE)
    dist_info = tmp_path / f"{MODULE}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MODULE}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
            [{ENTRY_POINT_GROUP}]
            newest = {MODULE}:NewestFirst
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop(MODULE, None)  # the next test's tmp_path holds another copy


def newest_first_class() -> type[Policy]:
    return sys.modules[MODULE].NewestFirst


def test_a_policy_registered_as_an_entry_point_is_found_by_name(installed):
    policy = resolve_policy("newest")
    assert isinstance(policy, newest_first_class()) and policy.name == "newest"
    assert "newest" in known_policy_names()
    assert set(BUILTIN_POLICIES) <= set(known_policy_names())
    with pytest.raises(UnknownPolicy, match=r"known policies are .*newest"):
        resolve_policy("oldest")


def test_the_dotted_path_a_class_and_an_instance_name_the_same_policy(installed):
    by_path = resolve_policy(f"{MODULE}:NewestFirst")
    cls = newest_first_class()
    assert type(by_path) is cls
    by_class = resolve_policy(cls)
    assert type(by_class) is cls and by_class is not by_path
    instance = cls()
    assert resolve_policy(instance) is instance


def test_without_the_distribution_the_name_is_unknown():
    assert "newest" not in known_policy_names()
    with pytest.raises(UnknownPolicy, match="unknown policy 'newest'"):
        resolve_policy("newest")


def test_a_running_scheduler_switches_to_an_entry_point_policy_by_name(installed):
    core = SchedulerCore("fifo", clock=lambda: 0)
    core.handle(ClientJoined("c"))
    out = core.handle(ClientRequest("c", p.SetPolicy("r1", "newest")))
    (answer,) = [i for i in out if isinstance(i, ToClient)]
    assert PolicyChanged("newest", "fifo", "requested by client c") in out  # for the event log
    assert answer.message == p.PolicySet("r1", True, "newest", "policy is now newest (was fifo)")
    assert isinstance(core.policy, newest_first_class())


def test_tidal_policy_list_shows_built_in_and_installed_policies(installed, capsys):
    assert main(["policy", "list"]) == 0
    assert capsys.readouterr().out.split() == known_policy_names()
    assert "newest" in known_policy_names()
