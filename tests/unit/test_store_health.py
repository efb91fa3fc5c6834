"""gateway.store.health without a server: the words for each failure, built as redis-py and the
gateway build them, and the checks against canned replies."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from redis import exceptions as rx
from redis.asyncio.sentinel import MasterNotFoundError as AsyncMasterNotFoundError
from redis.sentinel import MasterNotFoundError

from gateway.errors import StoreUnavailable
from gateway.store.health import READ_ONLY, StoreHealth, check_store, describe_store_error


class PoolExhausted(StoreUnavailable):
    """Stands for gateway.errors.PoolExhausted: recognised by its name alone."""


def raised_in(handled: BaseException, error: BaseException) -> BaseException:
    """`error` raised while `handled` was being handled (an implicit __context__), as redis-py
    turns a socket error into its ConnectionError."""
    try:
        try:
            raise handled
        except BaseException:
            raise error  # noqa: B904 - the implicit chain is the point
    except BaseException as caught:
        return caught


def store_unavailable(cause: BaseException) -> BaseException:
    """What gateway.store.client.store_errors makes of a redis-py error: `raise ... from`."""
    try:
        raise StoreUnavailable(f"key store unavailable: {type(cause).__name__}") from cause
    except StoreUnavailable as caught:
        return caught


def redis_connect_error(os_error: OSError, where: str) -> BaseException:
    """redis-py's connect: ConnectionError("Error <n> connecting to <where>. <why>.")."""
    why = os_error.strerror or os_error.args[-1]
    message = f"Error {os_error.errno} connecting to {where}. {why}."
    return store_unavailable(raised_in(os_error, rx.ConnectionError(message)))


def cert_verify_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate "
           "in certificate chain (_ssl.c:1006)")
    # As the ssl module's C code sets them.
    error.verify_message = "self-signed certificate in certificate chain"  # type: ignore[attr-defined]
    error.reason = "CERTIFICATE_VERIFY_FAILED"  # type: ignore[attr-defined]
    return error


def redis_timeout() -> BaseException:
    inner = raised_in(asyncio.CancelledError(), TimeoutError())
    return store_unavailable(raised_in(inner, rx.TimeoutError(
        "Timeout reading from 127.0.0.1:6379")))


CASES: list[tuple[str, Callable[[], BaseException], str]] = [
    ("refused", lambda: redis_connect_error(
        ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 6390)"), "127.0.0.1:6390"),
     "connection refused (127.0.0.1:6390)"),
    ("refused, bare", lambda: ConnectionRefusedError(
        111, "Connect call failed ('127.0.0.1', 6390)"), "connection refused (127.0.0.1:6390)"),
    ("tls verification", lambda: redis_connect_error(cert_verify_error(), "localhost:6380"),
     "TLS certificate verification failed: self-signed certificate in certificate chain"),
    ("tls verification, text only", lambda: ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local "
           "issuer certificate (_ssl.c:1006)"),
     "TLS certificate verification failed: unable to get local issuer certificate"),
    ("tls handshake", lambda: redis_connect_error(
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)"),
        "localhost:6379"),
     "TLS handshake failed: wrong version number (is that port serving TLS?)"),
    ("wrong password", lambda: store_unavailable(rx.AuthenticationError(
        "invalid username-password pair or user is disabled.", status_code="WRONGPASS")),
     "authentication failed (wrong password or ACL user)"),
    ("old server's wrong password", lambda: rx.AuthenticationError("invalid password"),
     "authentication failed (wrong password or ACL user)"),
    ("no password given", lambda: rx.AuthenticationError(
        "Authentication required.", status_code="NOAUTH"),
     "authentication required: the server wants a password and none was given"),
    ("password to a server without one", lambda: rx.AuthenticationError(
        "AUTH <password> called without any password configured for the default user. Are you "
        "sure your configuration is correct?", status_code="ERR"),
     "authentication failed: a password was given but the server has none set"),
    ("direct connection's WRONGPASS", lambda: StoreUnavailable(
        "key store refused the connection: WRONGPASS invalid username-password pair or user is "
        "disabled."),
     "authentication failed (wrong password or ACL user)"),
    ("NOPERM as a ResponseError", lambda: store_unavailable(rx.ResponseError(
        "NOPERM this user has no permissions to run the 'set' command")),
     "no permission for a command the gateway needs (ACL): this user has no permissions to run "
     "the 'set' command"),
    ("NOPERM as redis-py parses it", lambda: rx.NoPermissionError(
        "this user has no permissions to run the 'evalsha' command", status_code="NOPERM"),
     "no permission for a command the gateway needs (ACL): this user has no permissions to run "
     "the 'evalsha' command"),
    ("read-only replica", lambda: store_unavailable(rx.ReadOnlyError(
        "You can't write against a read only replica.", status_code="READONLY")), READ_ONLY),
    ("read-only replica, no status", lambda: rx.ReadOnlyError(
        "You can't write against a read only replica."), READ_ONLY),
    ("clusterdown as a ResponseError", lambda: rx.ResponseError("CLUSTERDOWN The cluster is down"),
     "cluster is down (CLUSTERDOWN)"),
    ("clusterdown, slot not served", lambda: store_unavailable(
        rx.ClusterDownError("Hash slot not served", status_code="CLUSTERDOWN")),
     "cluster is down (CLUSTERDOWN): Hash slot not served"),
    ("masterdown", lambda: rx.MasterDownError(
        "Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
     "the replica has lost its master and serves no stale data (MASTERDOWN)"),
    ("loading", lambda: store_unavailable(rx.BusyLoadingError(
        "Redis is loading the dataset in memory", status_code="LOADING")),
     "the server is loading its data"),
    ("out of memory", lambda: store_unavailable(rx.OutOfMemoryError(
        "command not allowed when used memory > 'maxmemory'.", status_code="OOM")),
     "the server is out of memory (maxmemory reached) and refuses writes (OOM)"),
    ("misconf", lambda: rx.ResponseError(
        "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist "
        "to disk."),
     "the server refuses writes: its last snapshot to disk failed (MISCONF)"),
    ("timeout", redis_timeout, "timed out (127.0.0.1:6379)"),
    ("connect timeout", lambda: store_unavailable(raised_in(
        TimeoutError(), rx.TimeoutError("Timeout connecting to server"))), "timed out"),
    ("direct connection's timeout", lambda: StoreUnavailable("key store unavailable: TimeoutError"),
     "timed out"),
    ("host name", lambda: redis_connect_error(
        socket.gaierror(-2, "Name or service not known"), "no-such-host.invalid:6379"),
     "host name not found (no-such-host.invalid)"),
    ("pool exhausted, the gateway's", lambda: PoolExhausted(
        "key store connection pool exhausted: all 64 connections busy"),
     "connection pool exhausted"),
    ("pool exhausted, redis-py's blocking pool", lambda: store_unavailable(raised_in(
        raised_in(asyncio.CancelledError(), TimeoutError()),
        rx.ConnectionError("No connection available."))),
     "connection pool exhausted"),
    ("pool exhausted, redis-py's", lambda: rx.MaxConnectionsError("Too many connections"),
     "connection pool exhausted"),
    ("sentinels", lambda: store_unavailable(MasterNotFoundError("No master found for 'gwmaster'")),
     "no master known to the sentinels for 'gwmaster'"),
    ("sentinels, some unreachable", lambda: AsyncMasterNotFoundError(
        "No master found for 'gwmaster' : Sentinel<127.0.0.1:26379> - ConnectionError('x')"),
     "no master known to the sentinels for 'gwmaster'; some sentinels did not answer"),
    ("closed", lambda: store_unavailable(rx.ConnectionError("Connection closed by server.")),
     "connection closed by the server"),
    ("direct connection closed", lambda: StoreUnavailable(
        "key store unavailable: connection closed"), "connection closed by the server"),
    ("reset", lambda: store_unavailable(raised_in(
        ConnectionResetError(104, "Connection reset by peer"),
        rx.ConnectionError("Error while reading from localhost:6380 : (104, 'Connection reset by "
                           "peer')"))),
     "connection reset by peer (localhost:6380)"),
    ("unix socket missing", lambda: redis_connect_error(
        FileNotFoundError(2, "No such file or directory"), "/tmp/gw/redis.sock"),
     "no such file or directory (/tmp/gw/redis.sock)"),
    ("no route", lambda: redis_connect_error(OSError(113, "No route to host"), "10.9.9.9:6379"),
     "no route to host (10.9.9.9:6379)"),
    ("not a cluster", lambda: raised_in(
        rx.RedisClusterException("Cluster mode is not enabled on this node"),
        rx.RedisClusterException("Redis Cluster cannot be connected. Please provide at least one "
                                 "reachable node: Cluster mode is not enabled on this node")),
     "the server is not in cluster mode (cluster-enabled no)"),
    ("unknown command", lambda: rx.ResponseError("unknown command 'CONFIG', with args beginning "
                                                 "with: 'GET' 'save' "),
     "the server does not know a command the gateway needs: unknown command 'CONFIG', with args "
     "beginning with: 'GET' 'save' "),
    ("anything else", lambda: store_unavailable(ValueError("something odd")), "something odd"),
]


@pytest.mark.parametrize(("make", "words"), [(make, words) for _, make, words in CASES],
                         ids=[name for name, _, _ in CASES])
def test_describes_each_failure_in_plain_words(make: Callable[[], BaseException],
                                               words: str) -> None:
    assert describe_store_error(make()) == words


@pytest.mark.parametrize(("timeout", "words"), [(1.0, "timed out after 1 s"),
                                                (0.5, "timed out after 0.5 s")])
def test_a_timeout_names_the_bound_when_the_caller_knows_it(timeout: float, words: str) -> None:
    assert describe_store_error(redis_timeout(), timeout=timeout) == words


def test_a_suppressed_context_is_not_followed() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            raise StoreUnavailable("key store unavailable: shutting down") from None
    except StoreUnavailable as exc:
        assert describe_store_error(exc) == "key store unavailable: shutting down"


# -- check_store against canned replies --------------------------------------------------------

INFO_MASTER = {"role": "master", "loading": 0, "aof_enabled": 1, "rdb_saves": 0,
               "rdb_last_bgsave_time_sec": -1, "maxmemory": 0, "maxmemory_policy": "noeviction"}
CONFIG = {"maxmemory": "0", "maxmemory-policy": "noeviction", "appendonly": "yes", "save": ""}


class FakeRedis:
    """Answers INFO and CONFIG GET from dicts; a reply that is an exception is raised."""

    def __init__(self, info: dict[str, Any] | BaseException,
                 config: dict[str, str] | BaseException, delay: float = 0.0) -> None:
        self.info, self.config, self.delay = info, config, delay

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        await asyncio.sleep(self.delay)
        reply: Any = self.info if args[0] == "INFO" else self.config
        if isinstance(reply, BaseException):
            raise reply
        if args[0] == "CONFIG GET":  # as redis-py parses it, bytes when not decoding
            prefix = args[1].rstrip("*")
            return {k.encode(): v.encode() for k, v in reply.items() if k.startswith(prefix)}
        return reply


async def check(info: dict[str, Any] | BaseException, config: dict[str, str] | BaseException,
                **options: Any) -> StoreHealth:
    return await check_store(FakeRedis(info, config, **options))  # type: ignore[arg-type]


NOPERM_CONFIG = rx.NoPermissionError("this user has no permissions to run the 'config|get' "
                                     "command", status_code="NOPERM")


async def test_a_master_with_safe_settings_is_writable_without_warnings() -> None:
    assert await check(INFO_MASTER, CONFIG) == StoreHealth(True, None, ())


async def test_a_replica_is_not_writable() -> None:
    info = {**INFO_MASTER, "role": "slave", "master_host": "10.0.0.1", "master_port": 6379,
            "slave_read_only": 1}
    health = await check(info, CONFIG)
    assert not health.writable
    assert health.reason == "the server is a read-only replica of 10.0.0.1:6379, not the master"


async def test_a_loading_server_is_not_writable() -> None:
    health = await check({**INFO_MASTER, "loading": 1}, CONFIG)
    assert (health.writable, health.reason) == (False, "the server is loading its data")


async def test_noeviction_does_not_warn() -> None:
    config = {**CONFIG, "maxmemory": "104857600", "maxmemory-policy": "noeviction"}
    assert (await check(INFO_MASTER, config)).warnings == ()


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl", "volatile-random"])
async def test_volatile_policies_warn_about_nonces(policy: str) -> None:
    """They spare the key records (no expiry) but evict exactly the nonces (which have one)."""
    config = {**CONFIG, "maxmemory": "104857600", "maxmemory-policy": policy}
    (warning,) = (await check(INFO_MASTER, config)).warnings
    assert warning.startswith(f"maxmemory-policy is {policy}, so once memory reaches")
    assert "nonces of signed requests" in warning


@pytest.mark.parametrize(("maxmemory", "when"), [
    ("104857600", "once memory reaches maxmemory (104857600 bytes)"),
    ("0", "once a maxmemory limit is set")])
async def test_an_allkeys_policy_warns(maxmemory: str, when: str) -> None:
    config = {**CONFIG, "maxmemory": maxmemory, "maxmemory-policy": "allkeys-lru"}
    (warning,) = (await check(INFO_MASTER, config)).warnings
    assert warning.startswith(f"maxmemory-policy is allkeys-lru, so {when}")
    assert "an evicted nonce reopens a replay window" in warning


async def test_no_persistence_warns() -> None:
    health = await check(INFO_MASTER, {**CONFIG, "appendonly": "no", "save": ""})
    (warning,) = health.warnings
    assert health.writable
    assert warning.startswith("Persistence is off (appendonly no, save empty): a restart")


async def test_snapshots_alone_warn_that_a_crash_undoes_recent_deletions() -> None:
    (warning,) = (await check(INFO_MASTER, {**CONFIG, "appendonly": "no",
                                            "save": "3600 1 300 100"})).warnings
    assert warning.startswith("appendonly is no, so only the snapshots of save '3600 1 300 100'")
    assert "keys deleted or accounts disabled since come back" in warning


async def test_without_config_the_settings_come_from_info() -> None:
    info = {**INFO_MASTER, "maxmemory_policy": "allkeys-random", "aof_enabled": 0}
    first, second = (await check(info, NOPERM_CONFIG)).warnings
    assert first.startswith("maxmemory-policy is allkeys-random")
    assert "save is not readable" in second
    (warning,) = (await check({**info, "maxmemory_policy": "noeviction", "rdb_saves": 3},
                              rx.ResponseError("unknown command 'CONFIG'"))).warnings
    assert warning.startswith("appendonly is no, so only snapshots persist the store")


async def test_without_config_or_info_it_says_what_it_could_not_check() -> None:
    no_info = rx.NoPermissionError("this user has no permissions to run the 'info' command",
                                   status_code="NOPERM")
    health = await check(no_info, NOPERM_CONFIG)
    assert health.writable  # nothing says otherwise: the ACL only hides the settings
    role, settings = health.warnings
    assert role.startswith("Could not check that the server is the master: INFO is refused")
    assert settings.startswith("Could not check the store's settings: the server refuses "
                               "CONFIG GET (no permission")


async def test_a_failure_is_not_writable_with_its_cause() -> None:
    refused = redis_connect_error(ConnectionRefusedError(111, "Connection refused"),
                                  "127.0.0.1:6390").__cause__
    assert isinstance(refused, BaseException)
    assert await check(refused, CONFIG) == StoreHealth(
        False, "connection refused (127.0.0.1:6390)", ())


async def test_the_whole_check_is_bounded() -> None:
    health = await check_store(FakeRedis(INFO_MASTER, CONFIG, delay=0.2),  # type: ignore[arg-type]
                               timeout=0.05)
    assert health == StoreHealth(False, "timed out after 0.05 s", ())


async def test_without_settings_only_writability_is_checked() -> None:
    redis = FakeRedis({**INFO_MASTER, "maxmemory_policy": "allkeys-lru"},
                      {**CONFIG, "appendonly": "no"})
    asked: list[str] = []
    answer = redis.execute_command

    async def recording(*args: Any, **options: Any) -> Any:
        asked.append(args[0])
        return await answer(*args, **options)

    redis.execute_command = recording  # type: ignore[method-assign]
    health = await check_store(redis, settings=False)  # type: ignore[arg-type]
    assert (health, asked) == (StoreHealth(True, None, ()), ["INFO"])
