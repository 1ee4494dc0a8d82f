"""describe_failure: a task's exception as its report carries it, whatever the exception does."""

from __future__ import annotations

from tidal.runtime.tracebacks import describe_failure, qualified_name


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def raise_it(exc: BaseException) -> None:
    raise exc


def caught(exc: BaseException) -> BaseException:
    try:
        raise_it(exc)
    except BaseException as caught_exc:
        return caught_exc
    raise AssertionError("unreachable")


def test_builtins_are_named_bare_and_the_rest_with_their_module():
    assert qualified_name(ValueError) == "ValueError"
    assert qualified_name(Unprintable) == f"{__name__}.Unprintable"


def test_the_leading_frames_of_the_hidden_file_are_left_out():
    error_type, message, text = describe_failure(caught(KeyError("k")), "elsewhere.py")
    assert (error_type, message) == ("KeyError", "'k'")
    assert "in caught" in text and "in raise_it" in text
    # This file plays the kernel: its frames go up to the first one elsewhere. Here every
    # frame is in this file, so only the exception line is left.
    hidden = describe_failure(caught(KeyError("k")), __file__)[2]
    assert "in caught" not in hidden and "in raise_it" not in hidden
    assert hidden.endswith("KeyError: 'k'\n")


def test_an_exception_whose_str_raises_is_still_described():
    error_type, message, text = describe_failure(caught(Unprintable()), __file__)
    assert error_type == f"{__name__}.Unprintable"
    assert message == "<could not describe the error: RuntimeError>"
    assert isinstance(text, str)
