"""The image's init (issue 19): the Dockerfile runs `tini -- gateway run`. Here the same
entrypoint runs outside a container, tini with -s (a subreaper stands where PID 1 would, and
inherits the orphans). It passes SIGHUP (a reload) and SIGTERM (a drain, exit 0) on to the
gateway, and it reaps the embedded store's server, which daemonizes and so becomes the init's
child: killed, it leaves no zombie. Without an init the gateway itself would be PID 1 and
inherit it, and it never waits for a process it did not start itself.

By hand, when this test was written: with the launcher replaced by a subreaper that is not an
init (a Python process that sets PR_SET_CHILD_SUBREAPER and then becomes the gateway, as the
gateway is when it is PID 1), the killed server stayed a zombie and the test failed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.embedded_store import clean_env, servers_on, stop_leftovers
from tests.support.processes import gateway_command, write_config

TINI = shutil.which("tini")
ADMIN_TOKEN = "tini-test-admin-token-4f1d0c"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short, so the unix socket path stays under the kernel's 107-byte limit.
    path = Path(tempfile.mkdtemp(prefix="gwtini-", dir="/tmp"))
    yield path
    stop_leftovers(path / "data")
    shutil.rmtree(path, ignore_errors=True)


def readyz(admin_url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(admin_url + "/readyz", timeout=2) as answer:
            return int(answer.status), yaml.safe_load(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except OSError:
        return 0, {}


def wait_for(check: Any, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process; None once it is gone (reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


@pytest.mark.skipif(TINI is None, reason="tini not installed (Debian: apt-get install tini; "
                                         ".ci/run installs it)")
def test_tini_passes_signals_on_and_reaps_the_embedded_store(data_dir: Path) -> None:
    assert TINI is not None
    launcher = [TINI, "-s", "--"]
    config_path, _, admin_port = write_config(data_dir / "gateway.yaml", "embedded", [],
                                              data_dir=str(data_dir / "data"))
    admin_url = f"http://127.0.0.1:{admin_port}"
    log_path = data_dir / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*launcher, *gateway_command("run", "--config", str(config_path), "--workers", "2")],
            env={**clean_env(), "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: readyz(admin_url)[0] == 200), log_path.read_text()
        (server,) = servers_on(data_dir / "data")
        # The daemonized server is an orphan: the init (here: tini as subreaper) inherits it.
        found = state(server)
        assert found is not None and found[0] != "Z" and found[1] == process.pid, \
            (found, process.pid)

        # SIGHUP to tini reaches the gateway: it reloads (the config's hash changes).
        before = readyz(admin_url)[1]["config_hash"]
        data = yaml.safe_load(config_path.read_text())
        data["routes"] = [{"name": "new", "prefix": "/new/", "upstream": "http://127.0.0.1:9",
                           "public": True}]
        config_path.write_text(yaml.safe_dump(data))
        process.send_signal(signal.SIGHUP)
        assert wait_for(lambda: readyz(admin_url)[1].get("config_hash") not in (None, before)), \
            log_path.read_text()

        # The server, killed, is reaped by tini rather than left a zombie.
        os.kill(server, signal.SIGKILL)
        assert wait_for(lambda: state(server) is None, 5), state(server)

        # SIGTERM to tini reaches the gateway, which stops; tini exits with its status.
        process.send_signal(signal.SIGTERM)
        code = process.wait(40)
        assert code == 0, log_path.read_text()
        assert "reload" in log_path.read_text().lower()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
