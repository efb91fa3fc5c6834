"""scripts/_venv.sh (issue 18, item 5): `./scripts/run` and `./scripts/test` install into the
venv only when pyproject.toml changed since the last install (a stamp in the venv), or when the
extras asked for are not installed, or when asked to (`--reinstall`, GATEWAY_REINSTALL=1).

Run on a copy of the scripts with a fake venv whose `python -m pip` only notes its arguments
(any other use of it runs the real Python), so no install happens and each case takes
milliseconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = pip ]; then
  echo "${*:3}" >>"$FAKE_PIP_CALLS"
  exit "${FAKE_PIP_EXIT:-0}"
fi
exec %s "$@"
"""
FAKE_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0")${*:+ $*}" >>"$FAKE_PIP_CALLS"
"""


class Project:
    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "scripts").mkdir()
        for name in ("_venv.sh", "run", "test"):
            shutil.copy2(ROOT / "scripts" / name, path / "scripts" / name)
        (path / "pyproject.toml").write_text('[project]\nname = "x"\n')
        bin_dir = path / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        self._executable(bin_dir / "python", FAKE_PYTHON % sys.executable)
        for tool in ("gateway", "ruff", "mypy", "pytest"):
            self._executable(bin_dir / tool, FAKE_TOOL)
        self.calls = path / "calls"

    @staticmethod
    def _executable(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def source(self, extras: str = "", **env: str) -> subprocess.CompletedProcess[str]:
        return self.bash(f'source scripts/_venv.sh "{extras}"', **env)

    def bash(self, script: str, **env: str) -> subprocess.CompletedProcess[str]:
        # Not the suite's own VENV, PYTHON or GATEWAY_REINSTALL (`.ci/run` sets the first two).
        base = {name: value for name, value in os.environ.items()
                if name not in ("VENV", "PYTHON", "GATEWAY_REINSTALL")}
        return subprocess.run(["bash", "-c", script], cwd=self.path, capture_output=True,
                              text=True, timeout=30,
                              env={**base, "FAKE_PIP_CALLS": str(self.calls), **env})

    def all_calls(self) -> list[str]:
        """What pip and the tools were asked since the last look."""
        if not self.calls.exists():
            return []
        lines = self.calls.read_text().splitlines()
        self.calls.unlink()
        return lines

    def pip_calls(self) -> list[str]:
        return [line for line in self.all_calls() if line.startswith("--disable-pip")]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


INSTALL = "--disable-pip-version-check install -e ."
INSTALL_TEST = "--disable-pip-version-check install -e .[test]"


def test_it_installs_once_then_only_when_pyproject_changes(project: Project) -> None:
    first = project.source()
    assert first.returncode == 0, first.stderr
    assert project.pip_calls() == [INSTALL]  # no pip upgrade: the venv is not new
    assert "first run" in first.stderr
    assert (project.path / ".venv" / ".gateway-install").exists()

    again = project.source()
    assert again.returncode == 0, again.stderr
    assert project.pip_calls() == []
    assert again.stderr == ""

    with (project.path / "pyproject.toml").open("a") as handle:
        handle.write('dependencies = ["new"]\n')
    changed = project.source()
    assert project.pip_calls() == [INSTALL]
    assert "pyproject.toml" in changed.stderr
    project.source()
    assert project.pip_calls() == []


def test_the_test_extras_are_installed_when_first_asked_for(project: Project) -> None:
    project.source("")
    assert project.pip_calls() == [INSTALL]
    project.source("[test]")  # the test tools are not in yet
    assert project.pip_calls() == [INSTALL_TEST]
    project.source("[test]")
    project.source("")  # an install with the test tools does for the gateway alone
    assert project.pip_calls() == []


def test_reinstall_forces_an_install_and_is_not_passed_on(project: Project) -> None:
    project.source()
    project.pip_calls()
    forced = project.source(GATEWAY_REINSTALL="1")
    assert project.pip_calls() == [INSTALL]
    assert "asked for" in forced.stderr

    run = project.bash("./scripts/run --port 9000 --reinstall --admin-port 9001")
    assert run.returncode == 0, run.stderr
    assert project.all_calls() == [
        INSTALL,
        "gateway run --config config/gateway.example.yaml --demo --port 9000 --admin-port 9001",
    ]

    test = project.bash("./scripts/test --reinstall -k x")
    assert test.returncode == 0, test.stderr
    assert project.all_calls() == [INSTALL_TEST, "ruff check gateway tests bench", "mypy",
                                   "pytest -k x"]


def test_a_failed_install_leaves_no_stamp_and_says_so(project: Project) -> None:
    failed = project.source(FAKE_PIP_EXIT="1")
    assert failed.returncode == 1
    assert "installing the gateway failed" in failed.stderr
    assert not (project.path / ".venv" / ".gateway-install").exists()
    project.pip_calls()
    assert project.source().returncode == 0  # so the next start tries again
    assert project.pip_calls() == [INSTALL]


def test_another_venv_and_a_named_python(project: Project) -> None:
    shutil.copytree(project.path / ".venv", project.path / ".venv-other", symlinks=True)
    assert project.source(VENV=".venv-other").returncode == 0
    assert project.pip_calls() == [INSTALL]
    assert (project.path / ".venv-other" / ".gateway-install").exists()
    assert not (project.path / ".venv" / ".gateway-install").exists()

    # A PYTHON that is not there is an error, never silently another Python.
    missing = project.source(VENV=".venv-new", PYTHON="/nowhere/python3.13")
    assert missing.returncode != 0
    assert "PYTHON=/nowhere/python3.13 is not a Python 3.11 or newer" in missing.stderr
    assert not (project.path / ".venv-new").exists()
