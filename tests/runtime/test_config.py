"""`TIDAL_*` variables: the defaults of command-line options (and of `Client()`, in
test_client.py); a flag given wins, and a bad value fails with the variable named."""

from __future__ import annotations

import pytest

from tidal.runtime.cli import _parser, main
from tidal.runtime.config import (
    KEYS,
    LOG_LEVEL,
    SCHEDULER_ADDRESS,
    ConfigError,
    parse_scheduler_address,
    settle_defaults,
)

ADDRESS = "tcp://scheduler-host:6000"


def parsed(argv):
    args = _parser().parse_args(argv)
    settle_defaults(args)
    return args


@pytest.mark.parametrize(
    "address", ["tcp://scheduler-host:5555", "tcp://10.0.0.7:1", "tcp://[::1]:5555", "ipc:///s"]
)
def test_scheduler_addresses_a_peer_can_connect_to_are_taken(address):
    assert parse_scheduler_address(address) == address


@pytest.mark.parametrize(
    "address", ["scheduler-host:5555", "tcp://scheduler-host", "tcp://host:0", "tcp://:5555", "x"]
)
def test_anything_else_is_refused_naming_the_variable_and_the_expected_form(address):
    with pytest.raises(ConfigError) as refused:
        SCHEDULER_ADDRESS.read({"TIDAL_SCHEDULER_ADDRESS": address})
    assert str(refused.value) == (
        f"TIDAL_SCHEDULER_ADDRESS={address!r}: expected a scheduler address such as "
        "tcp://scheduler-host:5555"
    )


def test_unset_or_empty_is_not_given_and_values_are_read_as_meant(tmp_path):
    assert SCHEDULER_ADDRESS.read({}) is None
    assert SCHEDULER_ADDRESS.read({"TIDAL_SCHEDULER_ADDRESS": "  "}) is None
    assert LOG_LEVEL.read({"TIDAL_LOG_LEVEL": "DEBUG"}) == "debug"
    with pytest.raises(ConfigError, match=r"TIDAL_LOG_LEVEL='loud': expected one of debug, info"):
        LOG_LEVEL.read({"TIDAL_LOG_LEVEL": "loud"})
    assert KEYS.read({"TIDAL_KEYS": str(tmp_path)}) == str(tmp_path)
    with pytest.raises(ConfigError, match=r"TIDAL_KEYS='/no/keys': no such directory"):
        KEYS.read({"TIDAL_KEYS": "/no/keys"})


@pytest.mark.parametrize(
    ("argv", "fallback"),
    [
        (["executor"], None),
        (["status"], "tcp://127.0.0.1:5555"),
        (["policy", "set", "fifo"], "tcp://127.0.0.1:5555"),
    ],
)
def test_the_scheduler_address_and_keys_come_from_the_environment_unless_given(
    argv, fallback, tmp_path, monkeypatch
):
    monkeypatch.delenv("TIDAL_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv("TIDAL_KEYS", raising=False)
    assert (parsed(argv).scheduler, parsed(argv).keys) == (fallback, None)
    monkeypatch.setenv("TIDAL_SCHEDULER_ADDRESS", ADDRESS)
    monkeypatch.setenv("TIDAL_KEYS", str(tmp_path))
    assert (parsed(argv).scheduler, parsed(argv).keys) == (ADDRESS, str(tmp_path))
    given = parsed([*argv, "--scheduler", "tcp://other:1", "--keys", "given"])
    assert (given.scheduler, given.keys) == ("tcp://other:1", "given")


def test_the_scheduler_takes_its_keys_from_the_environment_too(tmp_path, monkeypatch):
    monkeypatch.setenv("TIDAL_KEYS", str(tmp_path))
    assert parsed(["scheduler"]).keys == str(tmp_path)


def test_the_log_level_comes_from_the_environment_unless_given(monkeypatch):
    monkeypatch.delenv("TIDAL_LOG_LEVEL", raising=False)
    assert parsed(["policy", "list"]).log_level == "warning"
    monkeypatch.setenv("TIDAL_LOG_LEVEL", "info")
    assert parsed(["policy", "list"]).log_level == "info"
    assert parsed(["--log-level", "error", "policy", "list"]).log_level == "error"


def test_a_bad_variable_fails_the_command_with_its_name_unless_a_flag_stands_in(
    monkeypatch, capsys
):
    monkeypatch.setenv("TIDAL_LOG_LEVEL", "loud")
    assert main(["policy", "list"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tidal: TIDAL_LOG_LEVEL='loud': expected one of debug, info, warning, error"
    )
    assert main(["--log-level", "warning", "policy", "list"]) == 0
    # A variable a command does not use is never read: `policy list` connects nowhere.
    monkeypatch.setenv("TIDAL_SCHEDULER_ADDRESS", "nowhere")
    assert main(["--log-level", "warning", "policy", "list"]) == 0
    assert main(["--log-level", "warning", "executor"]) == 2
    assert "TIDAL_SCHEDULER_ADDRESS='nowhere'" in capsys.readouterr().err


def test_an_executor_with_no_scheduler_anywhere_says_how_to_give_one(monkeypatch, capsys):
    monkeypatch.delenv("TIDAL_SCHEDULER_ADDRESS", raising=False)
    assert main(["executor"]) == 2
    assert "give --scheduler ADDRESS or set TIDAL_SCHEDULER_ADDRESS" in capsys.readouterr().err
