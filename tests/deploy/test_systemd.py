"""deploy/systemd/gateway.service (issue 19): systemd itself accepts the unit
(`systemd-analyze verify`) and rates its sandbox well (`systemd-analyze security`); it stops
the gateway the way the gateway drains, and reloads it the way it reloads. Each check is also
run on a mutated copy, to show it can fail."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from tests.deploy.manifests import ROOT, SYSTEMD_UNIT

# The config the unit's install notes copy to /etc/gateway/gateway.yaml.
INSTALLED_CONFIG = ROOT / "config" / "gateway.example.yaml"
INSTALLED_GATEWAY = "/opt/gateway/bin/gateway"
# `systemd-analyze security`'s overall exposure, times ten (0 best, 100 worst): the unit is
# at 1.7; "OK" ends at 4.9, and a unit without the sandbox settings rates 9.6.
EXPOSURE_THRESHOLD = 20

ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian: apt-get install systemd; "
    ".ci/run installs it)")


def settings(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of the [Service] section, in order (keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, value
    return float(match[1]) * (60 if match[2] == "min" else 1)


def unit_problems(text: str) -> list[str]:
    problems = []
    service = settings(text)

    def one(key: str) -> str | None:
        values = service.get(key)
        return values[-1] if values else None

    config = load_config(INSTALLED_CONFIG, {})
    timeout = one("TimeoutStopSec")
    drain = config.shutdown.delay + config.listen.drain_timeout
    if timeout is None or seconds(timeout) <= drain:
        problems.append(f"TimeoutStopSec={timeout} is not above shutdown.delay + "
                        f"drain_timeout ({drain} s): systemd would SIGKILL a drain")
    if one("KillSignal") not in ("SIGTERM", None):
        problems.append(f"KillSignal={one('KillSignal')}: the gateway drains on SIGTERM")
    if one("KillMode") != "mixed":
        problems.append(f"KillMode={one('KillMode')}: SIGTERM must reach the supervisor "
                        "alone, or the embedded store's server stops under the drain")
    reload = one("ExecReload") or ""
    if not re.fullmatch(r"\S*kill -(HUP|SIGHUP|s HUP) \$MAINPID", reload):
        problems.append(f"ExecReload={reload}: the gateway reloads its config on SIGHUP")
    if one("DynamicUser") != "yes" and one("User") in (None, "root", "0"):
        problems.append("runs as root: set DynamicUser=yes or User=")
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("StateDirectory", "gateway")):
        if one(key) != value:
            problems.append(f"{key}={one(key)}, not {value}")
    if "GATEWAY_DATA_DIR=%S/gateway" not in service.get("Environment", []):
        problems.append("GATEWAY_DATA_DIR is not the StateDirectory (%S/gateway): under "
                        "ProtectSystem=strict nothing else is writable")
    return problems


def test_the_unit_stops_and_reloads_the_gateway_as_it_expects() -> None:
    assert unit_problems(SYSTEMD_UNIT.read_text()) == []


@pytest.mark.parametrize(("change", "words"), [
    (("TimeoutStopSec=45", "TimeoutStopSec=30"), "TimeoutStopSec=30 is not above"),
    (("KillSignal=SIGTERM", "KillSignal=SIGKILL"), "KillSignal=SIGKILL"),
    (("KillMode=mixed", "KillMode=control-group"), "KillMode=control-group"),
    (("ExecReload=/bin/kill -HUP $MAINPID", "ExecReload=/bin/kill -USR1 $MAINPID"),
     "ExecReload"),
    (("DynamicUser=yes", "DynamicUser=no"), "runs as root"),
    (("NoNewPrivileges=yes", "NoNewPrivileges=no"), "NoNewPrivileges"),
    (("ProtectSystem=strict", "ProtectSystem=full"), "ProtectSystem"),
    (("StateDirectory=gateway", "StateDirectory=gw"), "StateDirectory"),
    (("GATEWAY_DATA_DIR=%S/gateway", "GATEWAY_DATA_DIR=/srv/gateway"), "GATEWAY_DATA_DIR"),
])
def test_the_unit_checks_catch_their_mistake(change: tuple[str, str], words: str) -> None:
    text = SYSTEMD_UNIT.read_text()
    assert change[0] in text
    problems = unit_problems(text.replace(*change))
    assert any(words in problem for problem in problems), problems


def analyzable(text: str, tmp_path: Path) -> Path:
    """A copy of the unit systemd-analyze can check here: its ExecStart names the gateway
    command of this environment instead of the install path (/opt/gateway), which verify
    requires to exist. Nothing else changes."""
    here = Path(sys.executable).parent / "gateway"
    assert here.exists()
    assert INSTALLED_GATEWAY in text
    path = tmp_path / "gateway.service"
    path.write_text(text.replace(INSTALLED_GATEWAY, str(here)))
    return path


def verify(path: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "verify", str(path)], capture_output=True, text=True,
                          timeout=60)


def security(path: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager",
                           f"--threshold={EXPOSURE_THRESHOLD}", str(path)],
                          capture_output=True, text=True, timeout=60)


@needs_systemd
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    result = verify(analyzable(SYSTEMD_UNIT.read_text(), tmp_path))
    # Unknown keys and unparsable values are only warned about (exit 0): none at all.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_systemd
@pytest.mark.parametrize("change", [
    ("KillMode=mixed", "KillMode=mixd"),
    ("ProtectSystem=strict", "ProtectSytem=strict"),
    ("TimeoutStopSec=45", "TimeoutStopSec=45 parsecs"),
    ("[Service]", "[Servce]"),
], ids=["bad-value", "misspelt-key", "bad-time", "misspelt-section"])
def test_systemd_analyze_verify_reports_a_mistake(tmp_path: Path,
                                                  change: tuple[str, str]) -> None:
    text = SYSTEMD_UNIT.read_text()
    assert change[0] in text
    result = verify(analyzable(text.replace(*change), tmp_path))
    assert result.returncode != 0 or result.stdout or result.stderr


def supports_offline_security() -> bool:
    assert ANALYZE is not None
    result = subprocess.run([ANALYZE, "security", "--help"], capture_output=True, text=True,
                            timeout=60)
    return "--offline" in result.stdout


@needs_systemd
def test_the_sandbox_rates_well(tmp_path: Path) -> None:
    if not supports_offline_security():
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    result = security(analyzable(SYSTEMD_UNIT.read_text(), tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_systemd
def test_a_unit_without_the_sandbox_rates_badly(tmp_path: Path) -> None:
    if not supports_offline_security():
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    text = SYSTEMD_UNIT.read_text()
    start, end = text.index("# Hardening."), text.index("[Install]")
    result = security(analyzable(text[:start] + text[end:], tmp_path))
    assert result.returncode != 0, result.stdout
