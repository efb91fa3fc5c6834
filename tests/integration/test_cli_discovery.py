"""The CLI finds the store the way git finds a repository (issue 18, item 4), as an operator
meets it: real `gateway` subprocesses on the embedded store, run from various directories."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.discovery import find_data_dir
from tests.support.processes import (
    GatewayProcess,
    cli_with_terminal,
    gateway_command,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]


def environment(**extra: str) -> dict[str, str]:
    """Nothing that names a store or a config; the checkout's code from any directory."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("GATEWAY_CONFIG", "GATEWAY_DATA_DIR", "GATEWAY_REDIS_URL",
                        "GATEWAY_MASTER_KEY", "GATEWAY_MASTER_KEY_FILE")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **extra}


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The CLI in `cwd`, with stdin that is not a terminal."""
    return subprocess.run(gateway_command(*args), capture_output=True, text=True, timeout=60,
                          env=environment(**env), cwd=cwd, stdin=subprocess.DEVNULL)


def cli_tty(cwd: Path, answer: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in `cwd` with a terminal as stdin, `answer` typed into it."""
    return cli_with_terminal(args, answer, environment(), cwd)


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    above = find_data_dir(tmp_path)
    assert above is None, f"{above} exists above the test's directory: remove it"
    return tmp_path


def test_a_command_below_the_project_finds_its_store(root: Path) -> None:
    project = root / "project"
    deep = project / "a" / "b" / "c"
    deep.mkdir(parents=True)
    account = ok_json(cli(project, "accounts", "create", "acme", "--init", "--json"))
    assert (project / ".gateway").is_dir()
    key = ok_json(cli(project, "keys", "create", "--account", account["id"], "--json"))

    listed = ok_json(cli(deep, "keys", "list", "--json"))
    assert [k["id"] for k in listed] == [key["id"]]
    shown = ok_json(cli(project / "a", "accounts", "show", account["id"], "--json"))
    assert shown["key_count"] == 1
    assert not any(p.name == ".gateway" for p in (project / "a").rglob("*")), tree(project)


@pytest.mark.parametrize("command", [
    ("keys", "list"),
    ("keys", "list", "--json"),
    ("accounts", "list"),
    ("accounts", "show", "acc_unknown"),
    ("keys", "create", "--account", "acc_unknown"),
    ("audit", "list"),
    ("master-key", "status"),
], ids=" ".join)
def test_a_command_in_an_unrelated_directory_says_no_store_and_creates_none(
        root: Path, command: tuple[str, ...]) -> None:
    empty = root / "elsewhere"
    empty.mkdir()
    result = cli(empty, *command)
    refused(result, f"no gateway store found in {empty} or any directory above it", "--init",
            "--config", "GATEWAY_CONFIG")
    assert tree(root) == ["elsewhere"]


def test_creating_the_first_account_without_a_store_needs_init(root: Path) -> None:
    result = cli(root, "accounts", "create", "acme", "--json")
    refused(result, f"pass --init to create a new one in {root / '.gateway'}", "--config",
            "GATEWAY_CONFIG")
    assert tree(root) == []

    made = cli(root, "accounts", "create", "acme", "--init", "--json")
    account = ok_json(made)
    assert f"Creating a new gateway store in {root / '.gateway'}" in made.stderr
    assert [a["id"] for a in ok_json(cli(root, "accounts", "list", "--json"))] == [account["id"]]
    # --init with a store found changes nothing: the same store, no notice.
    again = cli(root, "accounts", "create", "other", "--init", "--json")
    assert again.returncode == 0 and "Creating" not in again.stderr, again.stderr
    assert len(ok_json(cli(root, "accounts", "list", "--json"))) == 2


def test_at_a_terminal_creating_the_first_account_asks(root: Path) -> None:
    prompt = (f"No gateway store found here or above (searched from {root}). Create a new one "
              f"in {root / '.gateway'}? [y/N]")
    declined = cli_tty(root, "n\n", "accounts", "create", "acme", "--json")
    assert declined.returncode == 1, declined.stderr
    assert prompt in declined.stderr
    assert declined.stdout == ""
    assert tree(root) == []

    accepted = cli_tty(root, "y\n", "accounts", "create", "acme", "--json")
    assert prompt in accepted.stderr
    account = ok_json(accepted)
    assert [a["id"] for a in ok_json(cli(root, "accounts", "list", "--json"))] == [account["id"]]


def test_a_config_files_data_dir_is_relative_to_the_config_file(root: Path) -> None:
    conf, work, other = root / "conf", root / "work", root / "other"
    for folder in (conf, work, other):
        folder.mkdir()
    (conf / "gw.yaml").write_text(yaml.safe_dump({"data_dir": ".gateway"}))

    # Named, not there yet: a listing says so and creates nothing.
    refused(cli(work, "accounts", "list", "--config", "../conf/gw.yaml"),
            f"no gateway store at {work / '../conf/.gateway'} (data_dir of ../conf/gw.yaml)")
    assert tree(root) == ["conf", "conf/gw.yaml", "other", "work"]

    # Creating the first account makes it where the config says, without --init: it is named.
    made = cli(work, "accounts", "create", "acme", "--json", "--config", "../conf/gw.yaml")
    account = ok_json(made)
    assert (conf / ".gateway").is_dir()
    assert list(work.iterdir()) == []

    # The same store from elsewhere through GATEWAY_CONFIG, and not the one a search would find.
    (other / ".gateway").mkdir()
    listed = ok_json(cli(other, "accounts", "list", "--json",
                         GATEWAY_CONFIG=str(conf / "gw.yaml")))
    assert [a["id"] for a in listed] == [account["id"]]


def test_gateway_run_reads_data_dir_relative_to_the_config_file(root: Path) -> None:
    conf, work = root / "conf", root / "work"
    work.mkdir()
    conf.mkdir()
    config_path, port, admin_port = write_config(conf / "gw.yaml", "embedded", [],
                                                 data_dir="store")
    gateway = GatewayProcess(config_path, port, admin_port, env=environment(),
                             cwd=work).start()
    try:
        assert (conf / "store" / "redis.sock").exists()
        assert list(work.iterdir()) == []
    finally:
        assert gateway.stop() == 0, gateway.log()
    assert f"creating a new store in {conf / 'store'}" in gateway.log()
