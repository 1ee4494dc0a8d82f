"""A task's exception as its failure report carries it: `[error_type, message, traceback]`.

`error_type` is the bare name of a builtin exception (`ValueError`), else `module.qualname`
(the client rebuilds builtins as themselves, the rest as `TaskError`: runtime/futures.py's
`rebuild_error`); the traceback is the formatted text, starting at the task's own code.

Discussion: the exception comes from user code, and so may its `__str__`; every part is
built guarded, so that describing a failure can never fail the kernel that reports it.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

__all__ = ["describe_failure", "qualified_name"]


def describe_failure(exc: BaseException, hidden_file: str | tuple[str, ...]) -> list[str]:
    """[type name, message, traceback] of a task's exception; the traceback leaves out its
    leading frames in `hidden_file` (the kernel's, which called the task: one file, or a
    tuple of them)."""
    hidden = (hidden_file,) if isinstance(hidden_file, str) else hidden_file
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in hidden:
        tb = tb.tb_next
    formatted = _safe(lambda: "".join(traceback.format_exception(type(exc), exc, tb)))
    return [qualified_name(type(exc)), _safe(lambda: str(exc)), formatted]


def qualified_name(cls: type) -> str:
    """`cls`'s name as a failure report gives it: bare for builtins, else module.qualname."""
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _safe(describe: Callable[[], str]) -> str:
    """`describe()`, or a note that it failed (for user objects whose __str__ may raise)."""
    try:
        return describe()
    except BaseException as exc:  # any failure of user code here must not reach the hub
        return f"<could not describe the error: {type(exc).__name__}>"
