"""The `gateway` command as an operator runs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.processes import gateway_command

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "gateway.example.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=60)


def test_config_check_accepts_the_example() -> None:
    result = run("config", "check", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK (4 routes)" in result.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("routes:\n  - {name: a, prefix: /a/, upstream: ftp://x}\n",
     "routes[0].upstream: expected an http:// or https:// URL"),
    ("listen: {port: 99999}\n", "listen.port: expected a port number"),
    ("keys: {cache_ttl: soon}\n", "keys.cache_ttl: expected a duration"),
    ("routes: [\n", "invalid YAML"),
    ("lisen: {port: 1}\n", "lisen: unknown field"),
])
def test_config_check_names_file_field_and_reason(tmp_path, text, expected) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run("config", "check", str(path))
    assert result.returncode != 0
    assert str(path) in result.stderr
    assert expected in result.stderr
    assert result.stdout == ""


def test_config_check_missing_file(tmp_path) -> None:
    result = run("config", "check", str(tmp_path / "absent.yaml"))
    assert result.returncode != 0
    assert "absent.yaml" in result.stderr
    assert "cannot read" in result.stderr


def test_run_refuses_a_broken_config_before_starting(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("routes:\n  - {name: a, prefix: a, upstream: http://x}\n")
    result = run("run", "--config", str(path))
    assert result.returncode != 0
    assert "routes[0].prefix" in result.stderr


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("run", "config"):
        assert command in result.stdout
