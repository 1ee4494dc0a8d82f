"""Child processes import this Tidal and the user's modules, wherever they are started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tidal.runtime.processes import child_env, tidal_command

pytestmark = pytest.mark.slow  # two interpreters start


def test_a_child_imports_this_tidal_even_beside_a_folder_named_tidal(tmp_path, monkeypatch):
    # The repository's root is such a place: its tidal/ folder is the face alone, with
    # runtime/ and the rest mapped in by the install.
    (tmp_path / "tidal").mkdir()
    (tmp_path / "tidal" / "__init__.py").write_text("raise ImportError('the decoy')\n")
    (tmp_path / "usermod.py").write_text("VALUE = 42\n")
    monkeypatch.chdir(tmp_path)
    done = subprocess.run(
        tidal_command("--version"), env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("tidal ")
    # And the user's own module next to the program, as an executor imports a task's.
    probe = "import usermod, tidal.runtime.kernel; print(usermod.VALUE)"
    command = [sys.executable, *tidal_command()[1:2], "-c", probe]  # the same flags
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "42"
