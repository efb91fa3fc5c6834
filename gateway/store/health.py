"""Is the key store fit to serve, and if not, why, in words an operator can act on.

`describe_store_error`: a failure talking to Redis (a StoreError wrapping redis-py's exception,
wrapping the socket's) as a short cause, for the CLI, /readyz and the log. `check_store`: does the
server (every cluster master) take writes, and which settings put the gateway's data at risk. Both
only return data: the callers export metrics and write logs.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis.asyncio.cluster import ClusterNode, RedisCluster

Run = Callable[..., Awaitable[Any]]  # execute_command of one server (or one cluster node)

READ_ONLY = "the server is a read-only replica, not the master"
# Key records carry no TTL, so a volatile-* policy never evicts them. (Nonces and throttle
# counters do carry one: a volatile-* policy may still evict those when memory runs out.)
# Only noeviction: a volatile-* policy spares the key records (no expiry) but evicts exactly
# the keys that carry one, the nonces of signed requests and the brute-force counters.
SAFE_POLICY_PREFIXES = ("noeviction",)

# Redis error codes whose words need nothing from the message (NOPERM and CLUSTERDOWN keep
# some of it). redis-py keeps the code in `status_code` and strips it from the message; the
# gateway's own connection (gateway.store.direct) leaves it in the message.
_CODE_WORDS = {
    "NOAUTH": "authentication required: the server wants a password and none was given",
    "WRONGPASS": "authentication failed (wrong password or ACL user)",
    "READONLY": READ_ONLY,
    "MASTERDOWN": "the replica has lost its master and serves no stale data (MASTERDOWN)",
    "TRYAGAIN": "the cluster is moving the keys' slot between nodes (TRYAGAIN)",
    "LOADING": "the server is loading its data",
    "OOM": "the server is out of memory (maxmemory reached) and refuses writes (OOM)",
    "MISCONF": "the server refuses writes: its last snapshot to disk failed (MISCONF)",
}
_CODE = re.compile(rf"\b({'|'.join([*_CODE_WORDS, 'NOPERM', 'CLUSTERDOWN'])})\b")
# For exceptions made without a status code (MasterDownError before its ClusterDownError base).
_CLASS_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (rx.NoPermissionError, "NOPERM"), (rx.ReadOnlyError, "READONLY"),
    (rx.MasterDownError, "MASTERDOWN"), (rx.ClusterDownError, "CLUSTERDOWN"),
    (rx.TryAgainError, "TRYAGAIN"), (rx.BusyLoadingError, "LOADING"),
    (rx.OutOfMemoryError, "OOM"), (rx.AuthenticationError, "WRONGPASS"),
    # AUTH with a user name, to a server older than ACLs (6.0).
    (rx.AuthenticationWrongNumberOfArgsError, "WRONGPASS"))
_SSL_NOISE = re.compile(r"^.*verify failed: | \(_ssl\.c:\d+\)$")  # around OpenSSL's reason
# Where redis-py and asyncio name the peer: "Error 111 connecting to host:port. ...", "Timeout
# reading from host:port", "Connect call failed ('127.0.0.1', 6390)".
# (Only host:port or a path: redis-py also says "Timeout connecting to server".)
_ADDRESS = re.compile(r"(?:connecting to|reading from) (\S*[:/]\S*?)\.?(?=\s|$)"
                      r"|\('([^']+)', (\d+)\)")


def describe_store_error(exc: BaseException, *, timeout: float | None = None) -> str:
    """A short cause for `exc`, such as "connection refused (127.0.0.1:6390)". `timeout`, when
    the caller knows the bound it applied, makes a timeout read "timed out after 1 s"."""
    chain = _chain(exc)
    address = _address(chain)
    # Outermost first: the first exception that says something specific wins, so redis-py's
    # "No connection available." beats the TimeoutError beneath it, and a generic
    # ConnectionError gives way to the ssl or socket error it was made from.
    for index, error in enumerate(chain):
        words = _describe_one(error, address, timeout, root=index == len(chain) - 1)
        if words:
            return words
    # Nothing recognised: the innermost message is the most specific one.
    return next((str(error) for error in reversed(chain) if str(error)), type(exc).__name__)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from, the way a traceback follows them."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 32:
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return chain


def _address(chain: list[BaseException]) -> str | None:
    for error in chain:
        if match := _ADDRESS.search(str(error)):
            return match.group(1) or f"{match.group(2)}:{match.group(3)}"
    return None


def _code(error: BaseException) -> str | None:
    status = getattr(error, "status_code", None)
    if isinstance(status, str) and _CODE.fullmatch(status):
        return status
    for cls, code in _CLASS_CODES:
        if isinstance(error, cls):
            return code
    match = _CODE.search(str(error))
    return match.group(1) if match else None


def _after(text: str, code: str) -> str:
    return text.split(code, 1)[1].strip() if code in text else text.strip()


def _describe_one(error: BaseException, address: str | None, timeout: float | None,
                  root: bool) -> str | None:
    name, text, code = type(error).__name__, str(error), _code(error)
    at = f" ({address})" if address else ""
    # Matched by name and attribute: gateway.errors.PoolExhausted is newer than this module.
    if (getattr(error, "pool_exhausted", False) or name in ("PoolExhausted", "MaxConnectionsError")
            or text.startswith("No connection available")):
        return "connection pool exhausted"
    if name in ("MasterNotFoundError", "SlaveNotFoundError"):  # sync and asyncio classes
        service = re.search(r"for ('[^']*'|\"[^\"]*\")", text)
        which = "master" if name.startswith("Master") else "replica"
        words = f"no {which} known to the sentinels for {service.group(1) if service else '?'}"
        return words + ("; some sentinels did not answer" if " : " in text else "")
    if isinstance(error, ssl.SSLError):  # the C code sets verify_message and reason; be lenient
        if isinstance(error, ssl.SSLCertVerificationError):
            why = getattr(error, "verify_message", None) or _SSL_NOISE.sub("", text)
            return f"TLS certificate verification failed: {why}"
        found = re.search(r"\[SSL: (\w+)\]", text)
        reason = (getattr(error, "reason", None) or (found.group(1) if found else "")).lower()
        hint = " (is that port serving TLS?)" if reason == "wrong_version_number" else ""
        return f"TLS handshake failed{': ' + reason.replace('_', ' ') if reason else ''}{hint}"
    if "without any password configured" in text or "no password is set" in text:
        return "authentication failed: a password was given but the server has none set"
    if code in _CODE_WORDS:
        return _CODE_WORDS[code]
    if code == "NOPERM":
        return f"no permission for a command the gateway needs (ACL): {_after(text, 'NOPERM')}"
    if code == "CLUSTERDOWN":
        detail = _after(text, "CLUSTERDOWN")
        generic = not detail or detail.lower().startswith("the cluster is down")
        return "cluster is down (CLUSTERDOWN)" + ("" if generic else f": {detail}")
    if "Cluster mode is not enabled" in text:
        return "the server is not in cluster mode (cluster-enabled no)"
    if isinstance(error, rx.SlotNotCoveredError) or "slots are not covered" in text:
        return "the cluster does not serve every hash slot"
    timed_out = isinstance(error, TimeoutError | rx.TimeoutError)
    if timed_out or (root and re.search(r"TimeoutError|timed out", text)):
        return f"timed out after {timeout:g} s" if timeout is not None else f"timed out{at}"
    if isinstance(error, socket.gaierror):
        host = (address or "").rpartition(":")[0] or address
        if error.errno == socket.EAI_AGAIN:
            return f"host name lookup failed for now (temporary DNS failure){at}"
        return f"host name not found{f' ({host})' if host else ''}"
    if (isinstance(error, BrokenPipeError | ConnectionAbortedError | asyncio.IncompleteReadError)
            or "closed by server" in text or (root and "connection closed" in text)):
        return "connection closed by the server"
    if isinstance(error, OSError) and error.errno and error.errno > 0:
        # The errno's own words: asyncio's message for a refusal is "Connect call failed".
        return f"{os.strerror(error.errno).lower()}{at}"  # "connection refused (127.0.0.1:6390)"
    if isinstance(error, rx.ResponseError):
        if "unknown command" in text:
            return f"the server does not know a command the gateway needs: {text}"
        return f"the server refused a command: {text}"
    return None


@dataclass(frozen=True)
class StoreHealth:
    writable: bool
    reason: str | None = None  # why not writable, in plain words
    warnings: tuple[str, ...] = ()  # settings that put the gateway's data at risk, each a sentence


# The timeout is an argument, not the caller's asyncio.timeout: expiring it is an answer ("timed
# out after 1 s"), not an exception.
async def check_store(redis: aioredis.Redis | RedisCluster, timeout: float = 1.0,  # noqa: ASYNC109
                      *, settings: bool = True) -> StoreHealth:
    """Whether the store takes writes now and, with `settings`, warnings about its eviction and
    persistence settings. Never raises (but for cancellation); bounded by `timeout` seconds."""
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            if isinstance(redis, RedisCluster):
                return await _check_cluster(redis, settings)
            report = await _check_node(redis.execute_command, False, settings)
            return StoreHealth(report.reason is None, report.reason, tuple(report.warnings))
    except Exception as exc:
        if isinstance(exc, TimeoutError) and deadline.expired():
            return StoreHealth(False, f"timed out after {timeout:g} s")
        return StoreHealth(False, describe_store_error(exc))


@dataclass
class _NodeReport:
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)


async def _check_cluster(redis: RedisCluster, settings: bool) -> StoreHealth:
    async def ask(masters: list[ClusterNode]) -> list[_NodeReport | BaseException]:
        return await asyncio.gather(
            *(_check_node(partial(redis.execute_command, target_nodes=node), True, settings)
              for node in masters), return_exceptions=True)

    await redis.initialize()  # a no-op once the client knows the slot map
    masters = redis.get_primaries()
    reports = await ask(masters)
    if any(isinstance(r, BaseException) for r in reports):
        # redis-py re-reads the slot map after a node failed: a failover may have replaced the
        # master, and the new one deserves the question before the cluster is called down.
        await redis.initialize()
        if {n.name for n in redis.get_primaries()} != {n.name for n in masters}:
            masters = redis.get_primaries()
            reports = await ask(masters)
    reasons: list[str] = []
    by_warning: dict[str, list[str]] = {}
    for node, report in zip(masters, reports, strict=True):
        if isinstance(report, BaseException):
            words = describe_store_error(report)
            reasons.append(words if node.name in words else f"{words} (master {node.name})")
            continue
        if report.reason:
            reasons.append(f"{report.reason} (master {node.name})")
        for warning in report.warnings:
            by_warning.setdefault(warning, []).append(node.name)
    # A warning true of every master that answered is said once; else it names the ones concerned.
    answered = sum(not isinstance(report, BaseException) for report in reports)
    warnings = tuple(text if len(names) == answered else f"On {', '.join(names)}: {text}"
                     for text, names in by_warning.items())
    return StoreHealth(not reasons, "; ".join(reasons) or None, warnings)


async def _check_node(run: Run, cluster: bool, settings: bool) -> _NodeReport:
    report = _NodeReport()
    info: dict[str, str] = {}
    try:
        info = _fields(await run("INFO"))  # default sections: replication, persistence, memory
    except rx.ResponseError as exc:  # an ACL user without +info
        if not cluster:
            report.warnings.append("Could not check that the server is the master: INFO is "
                                   f"refused ({describe_store_error(exc)}).")
    if cluster:
        state = _fields(await run("CLUSTER INFO")).get("cluster_state")
        report.reason = None if state == "ok" else f"cluster is down (cluster_state:{state})"
    elif info.get("role") in ("slave", "replica"):
        master = f"{info.get('master_host')}:{info.get('master_port')}"
        report.reason = READ_ONLY.replace("replica,", f"replica of {master},")
        if info.get("slave_read_only") == "0":
            report.reason = (f"the server is a replica of {master}, not the master (writable, but "
                             "what it is given is not replicated and is lost at its next sync)")
    if info.get("loading") == "1":
        report.reason = "the server is loading its data"
    if settings:
        report.warnings += await _setting_warnings(run, info)
    return report


async def _setting_warnings(run: Run, info: dict[str, str]) -> list[str]:
    """Eviction and persistence, from CONFIG GET, else from what INFO shows (managed Redis
    services refuse CONFIG)."""
    policy, maxmemory = info.get("maxmemory_policy"), info.get("maxmemory")
    aof = None if "aof_enabled" not in info else info["aof_enabled"] == "1"
    save: str | None = None  # the snapshot schedule: only CONFIG shows it
    refused = "neither CONFIG GET nor INFO shows maxmemory-policy and appendonly"
    try:
        config = _fields(await run("CONFIG GET", "maxmemory*"))
        config.update(_fields(await run("CONFIG GET", "appendonly")))
        config.update(_fields(await run("CONFIG GET", "save")))
    except rx.ResponseError as exc:  # NOPERM, or "unknown command" where CONFIG is renamed away
        refused = (f"the server refuses CONFIG GET ({describe_store_error(exc)}) and INFO "
                   "shows neither maxmemory-policy nor appendonly")
    else:
        policy, maxmemory = config.get("maxmemory-policy"), config.get("maxmemory")
        aof, save = config.get("appendonly") == "yes", config.get("save")
    if policy is None or aof is None:
        return [f"Could not check the store's settings: {refused}."]
    warnings = []
    if not policy.startswith(SAFE_POLICY_PREFIXES):
        when = (f"once memory reaches maxmemory ({maxmemory} bytes)" if maxmemory not in
                (None, "0") else "once a maxmemory limit is set (managed services set one)")
        if policy.startswith("volatile-"):
            warnings.append(f"maxmemory-policy is {policy}, so {when} the server evicts keys "
                            "that carry an expiry, which the nonces of signed requests do: an "
                            "evicted nonce reopens a replay window; set maxmemory-policy "
                            "noeviction.")
        else:
            warnings.append(f"maxmemory-policy is {policy}, so {when} the server evicts any "
                            "key, and an evicted nonce reopens a replay window, an evicted key "
                            "record gives spurious 401s; set maxmemory-policy noeviction.")
    # Without CONFIG the save schedule is unknown: a snapshot taken since the start shows one.
    snapshots = save if save is not None else (
        "snapshots" if int(info.get("rdb_saves") or 0) > 0
        or info.get("rdb_last_bgsave_time_sec", "-1") != "-1" else None)
    if not aof and snapshots:
        schedule = "snapshots" if save is None else f"the snapshots of save {save!r}"
        warnings.append(f"appendonly is no, so only {schedule} persist the store: a crash loses "
                        "the changes since the last snapshot, and keys deleted or accounts "
                        "disabled since come back; set appendonly yes.")
    elif not aof:
        # A restart from nothing loses every key; a restore from an older copy (the only kind
        # there can be) brings back what was deleted or disabled after it was taken.
        known = "save empty" if save == "" else "no snapshot since start; save is not readable"
        warnings.append(f"Persistence is off (appendonly no, {known}): a restart of the server "
                        "loses every account and key, and restoring it from an older copy brings "
                        "back keys deleted and accounts disabled since; set appendonly yes.")
    return warnings


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _fields(reply: Any) -> dict[str, str]:
    """An INFO or CONFIG GET reply as strings: a dict, a flat RESP2 list, or INFO's raw text."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    if isinstance(reply, list | tuple):
        return {_text(k): _text(v) for k, v in zip(reply[::2], reply[1::2], strict=False)}
    lines = (line.partition(":") for line in _text(reply).splitlines() if not line.startswith("#"))
    return {key.strip(): value.strip() for key, sep, value in lines if sep}
