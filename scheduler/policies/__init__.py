"""Scheduling policies, and `resolve_policy()`, which turns what a user names into one.

A policy can be named four ways: a built-in name (`"lb"`), a dotted path
(`"mypkg.policies:MyPolicy"`), a Policy subclass or instance, or a name registered by an
installed package under the entry-point group `tidal.policies`.
"""

from __future__ import annotations

import importlib
import sys
import time
from importlib import metadata
from typing import Any

from tidal.scheduler.policies.adaptive import AdaptivePolicy
from tidal.scheduler.policies.base import AssignOnChange, Policy
from tidal.scheduler.policies.fair import FairPolicy
from tidal.scheduler.policies.fifo import FifoPolicy
from tidal.scheduler.policies.kill import KillPolicy
from tidal.scheduler.policies.lb import LbPolicy
from tidal.scheduler.policies.lma import LmaPolicy
from tidal.scheduler.policies.static import StaticPolicy

__all__ = [
    "BUILTIN_POLICIES",
    "DEFAULT_POLICY",
    "ENTRY_POINT_GROUP",
    "AssignOnChange",
    "Policy",
    "UnknownPolicy",
    "known_policy_names",
    "resolve_policy",
]

BUILTIN_POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        FifoPolicy,
        FairPolicy,
        KillPolicy,
        StaticPolicy,
        LbPolicy,
        LmaPolicy,
        AdaptivePolicy,
    )
}
DEFAULT_POLICY = "lb"
ENTRY_POINT_GROUP = "tidal.policies"
# Discussion: reading entry points scans every installed distribution's metadata (~4 ms
# here), and a client's `set_policy` with an unknown name asked twice, on the scheduler's
# one loop: a cheap request that cost the loop ~9 ms. Read them at most this often (and
# again whenever sys.path changes); a package installed meanwhile is seen this much later.
ENTRY_POINTS_TTL_S = 10.0
_entry_points_cache: tuple[float, tuple[str, ...], tuple[metadata.EntryPoint, ...]] | None = None


class UnknownPolicy(ValueError):
    """A policy name or path that leads to no policy. The message lists the known ones."""


def _entry_points() -> tuple[metadata.EntryPoint, ...]:
    """The group's entry points, read at most every ENTRY_POINTS_TTL_S per sys.path."""
    global _entry_points_cache
    now, path = time.monotonic(), tuple(sys.path)
    cached = _entry_points_cache
    if cached is None or cached[1] != path or now - cached[0] >= ENTRY_POINTS_TTL_S:
        found = tuple(metadata.entry_points(group=ENTRY_POINT_GROUP))
        cached = _entry_points_cache = (now, path, found)
    return cached[2]


def known_policy_names() -> list[str]:
    """Built-in names and those installed packages registered as entry points."""
    names = set(BUILTIN_POLICIES)
    names.update(ep.name for ep in _entry_points())
    return sorted(names)


def resolve_policy(spec: Any) -> Policy:
    """Return a Policy instance for a name, dotted path, class or instance."""
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, type):
        if not issubclass(spec, Policy):
            raise UnknownPolicy(f"{spec.__qualname__} is not a subclass of tidal's Policy")
        try:
            return spec()
        except Exception as exc:
            raise UnknownPolicy(
                f"policy {spec.__qualname__} could not be created: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(spec, str) or not spec:
        raise UnknownPolicy(
            f"a policy is a name, a 'module:Class' path, a Policy subclass or an "
            f"instance, not {spec!r}"
        )
    if spec in BUILTIN_POLICIES:
        return BUILTIN_POLICIES[spec]()
    if ":" in spec:
        module_name, _, qualname = spec.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in qualname.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # whatever importing raises: the path leads to no policy
            raise UnknownPolicy(
                f"cannot load policy {spec!r}: {type(exc).__name__}: {exc}"
            ) from exc
        return resolve_policy(obj)
    for entry_point in _entry_points():
        if entry_point.name == spec:
            return resolve_policy(entry_point.load())
    raise UnknownPolicy(
        f"unknown policy {spec!r}: known policies are "
        f"{', '.join(known_policy_names())}, or give a 'module:Class' path"
    )
