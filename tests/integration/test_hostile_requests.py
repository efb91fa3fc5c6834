"""Hostile requests over raw sockets (issue 9, SPEC §3 to §6), table-driven.

Each row is one request as bytes, the answer the gateway must give (status, SPEC §5 code, and
for what the HTTP parser itself refuses: `Connection: close` and the connection closed), and what
the upstream may see of it. Every request carries a fresh marker (`X-Case`, and the nonce of a
signed request); the upstream sits behind a byte tap, so "the upstream never saw it" is checked
on every byte that reached its port, not only on the requests its own parser accepted. A
smuggled second request carries the marker with `-smuggled` appended and must never arrive.

The gateways are the real `gateway run` command (black box: only its port is used), on a real
Redis, in front of a real aiohttp upstream run in a thread of its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aiohttp import web

from gateway.client import sign_request
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.support.processes import GatewayProcess, write_config
from tests.support.rawhttp import RawResponse, exchange
from tests.support.redis_server import RedisServer

VISION = "yc.ai.vision.execute"
HOST = "gw.test"
MASTER_KEY = os.urandom(32)
MASTER_ENV = {"GATEWAY_MASTER_KEY": base64.b64encode(MASTER_KEY).decode()}
MARKER = re.compile(rb"hostile-[0-9a-f]{12}(?:-smuggled)?")
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._~+/=:@-]{1,128}")
T = TypeVar("T")


# -- the recording upstream ----------------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    """One request as the upstream's HTTP server handled it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def values(self, name: str) -> list[str]:
        lower = name.lower()
        return [v for k, v in self.headers if k.lower() == lower]


class RecordingUpstream:
    """An aiohttp app behind a byte tap, on an event loop in a thread of its own.

    `seen` is every request the app handled; `raw()` every byte that reached the upstream's
    port, whether or not the app could parse it.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._records: list[bytearray] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                         name="recording-upstream", daemon=True)
        self._relays: set[asyncio.Task[Any]] = set()
        self.port = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> RecordingUpstream:
        self._thread.start()
        self.port = self.run(self._start())
        return self

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # Generous limits: the gateway's limits are under test, not the upstream's.
        self._runner = web.AppRunner(app, access_log=None, max_line_size=1 << 20,
                                     max_field_size=1 << 20, max_headers=10_000)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._app_port = int(self._runner.addresses[0][1])
        self._tap = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._tap.sockets[0].getsockname()[1])

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            self.seen.append(Seen(
                method=request.method, target=request.raw_path,
                headers=tuple((k.decode("latin-1"), v.decode("latin-1"))
                              for k, v in request.raw_headers),
                body=body))
        return web.Response(text="ok")

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._relays.add(task)
        record = bytearray()
        with self._lock:
            self._records.append(record)
        app_writer: asyncio.StreamWriter | None = None
        try:
            app_reader, app_writer = await asyncio.open_connection("127.0.0.1", self._app_port)
            await asyncio.gather(self._pump(reader, app_writer, record),
                                 self._pump(app_reader, writer, None))
        except OSError:
            pass
        finally:
            for each in (writer, app_writer):
                if each is not None:
                    each.close()
                    with contextlib.suppress(OSError):
                        await each.wait_closed()
            self._relays.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    record: bytearray | None) -> None:
        try:
            while data := await source.read(65536):
                if record is not None:
                    with self._lock:
                        record += data
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()

    def raw(self) -> bytes:
        with self._lock:
            return b"\n".join(bytes(r) for r in self._records)

    def seen_with(self, marker: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if marker in s.values("X-Case")]

    def stop(self) -> None:
        self.run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        self._tap.close()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        await self._tap.wait_closed()
        await self._runner.cleanup()


# -- keys, gateways, the world the cases run in ------------------------------------------------

@dataclass(frozen=True)
class Keys:
    account_id: str
    api_key_id: str
    api_secret: str
    hmac_key_id: str
    hmac_secret: str
    scopes: tuple[str, ...]


async def create_keys(redis_url: str) -> Keys:
    redis = connect(redis_url, 2.0)
    try:
        service = KeyService(KeyStore(redis), secret_box=SecretBox(MASTER_KEY))
        account = await service.create_account("hostile")
        api, api_secret = await service.create_key(account_id=account.id, scopes=[VISION])
        signer, hmac_secret = await service.create_key(
            account_id=account.id, key_type="hmac", scopes=[VISION],
            expires_at=time.time() + 86_400)
    finally:
        await redis.aclose()
    return Keys(account_id=account.id, api_key_id=api.id, api_secret=api_secret,
                hmac_key_id=signer.id, hmac_secret=hmac_secret, scopes=tuple(api.scopes))


def start_gateway(directory: Path, name: str, redis_url: str, upstream_port: int, *,
                  workers: int, trusted: bool = False) -> GatewayProcess:
    url = f"http://127.0.0.1:{upstream_port}"
    routes = [
        {"name": "pub", "prefix": "/pub/", "upstream": url, "public": True},
        {"name": "other", "prefix": "/other/", "upstream": url, "public": True},
        {"name": "keyed", "prefix": "/keyed/", "upstream": url, "scopes": [VISION]},
        # A protected route nested in a public one, on the same upstream (issue 17, item 1).
        {"name": "pub-admin", "prefix": "/pub/admin/", "upstream": url, "scopes": [VISION]},
    ]
    path, port, admin_port = write_config(directory / f"{name}.yaml", redis_url, routes)
    if trusted:
        data = yaml.safe_load(path.read_text())
        data["listen"]["trusted_proxies"] = ["127.0.0.1/32"]
        path.write_text(yaml.safe_dump(data))
    data_dir = directory / f"{name}-data"
    data_dir.mkdir()
    env = {**MASTER_ENV, "GATEWAY_DATA_DIR": str(data_dir)}
    return GatewayProcess(path, port, admin_port, env=env,
                          extra_args=("--workers", str(workers))).start()


@dataclass
class World:
    upstream: RecordingUpstream
    keys: Keys
    gateways: dict[str, GatewayProcess]  # "plain" and "trusted"


@pytest.fixture(scope="module")
def upstream_and_keys() -> Iterator[tuple[RecordingUpstream, Keys, RedisServer]]:
    redis = RedisServer().start()
    upstream = RecordingUpstream().start()
    try:
        keys = upstream.run(create_keys(redis.url))
        yield upstream, keys, redis
    finally:
        upstream.stop()
        redis.close()


@contextlib.contextmanager
def gateways_for(directory: Path, upstream: RecordingUpstream, redis: RedisServer,
                 workers: int) -> Iterator[dict[str, GatewayProcess]]:
    started: dict[str, GatewayProcess] = {}
    try:
        started["plain"] = start_gateway(directory, "plain", redis.url, upstream.port,
                                         workers=workers)
        started["trusted"] = start_gateway(directory, "trusted", redis.url, upstream.port,
                                           workers=1, trusted=True)
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.fixture(scope="module")
def world(upstream_and_keys, tmp_path_factory) -> Iterator[World]:  # type: ignore[no-untyped-def]
    upstream, keys, redis = upstream_and_keys
    with gateways_for(tmp_path_factory.mktemp("hostile"), upstream, redis, workers=2) as started:
        yield World(upstream, keys, started)


# -- building requests ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Ctx:
    marker: str
    keys: Keys


def head(ctx: Ctx, *lines: bytes, target: bytes = b"/pub/x", method: bytes = b"GET",
         version: bytes = b"HTTP/1.1", host: bytes | None = HOST.encode(),
         close: bool = True, body: bytes = b"") -> bytes:
    """A request: start line, Host, the marker, `lines` as given, Connection: close (unless
    `close` is False), the blank line, `body`."""
    out = [method + b" " + target + b" " + version]
    if host is not None:
        out.append(b"Host: " + host)
    out.append(b"X-Case: " + ctx.marker.encode())
    out.extend(lines)
    if close:
        out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n" + body


def smuggled(ctx: Ctx) -> bytes:
    """A second request hidden behind the first: it must never reach the upstream."""
    return (b"GET /pub/smuggled HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-Case: "
            + ctx.marker.encode() + b"-smuggled\r\n\r\n")


def framed(ctx: Ctx, *lines: bytes, body: bytes = b"", method: bytes = b"POST",
           target: bytes = b"/pub/x") -> bytes:
    """A request the parser must refuse, kept alive, with a smuggled request after it."""
    return head(ctx, *lines, method=method, target=target, close=False) + body + smuggled(ctx)


def api_key_line(ctx: Ctx) -> bytes:
    return b"Authorization: Api-Key " + ctx.keys.api_secret.encode()


def signed_lines(ctx: Ctx, method: str = "GET", path: str = "/keyed/x",
                 body: bytes | None = None) -> list[bytes]:
    """A correct signature by the project's own client signer."""
    headers = sign_request(method, f"http://{HOST}{path}", key_id=ctx.keys.hmac_key_id,
                           secret=ctx.keys.hmac_secret, body=body, nonce=ctx.marker)
    return [f"{name}: {value}".encode() for name, value in headers.items()]


COVERED = '("@method" "@authority" "@path")'


def sf_params(ctx: Ctx, **override: str | None) -> str:
    """Signature parameters as serialised text; a value of None leaves the parameter out."""
    values: dict[str, str | None] = {
        "created": str(int(time.time())), "nonce": f'"{ctx.marker}"',
        "keyid": f'"{ctx.keys.hmac_key_id}"', "alg": '"hmac-sha256"'}
    values.update(override)
    return "".join(f";{name}={value}" for name, value in values.items() if value is not None)


def own_signature(ctx: Ctx, params_line: str, *, method: str = "GET", path: str = "/keyed/x",
                  components: tuple[str, ...] = ("@method", "@authority", "@path"),
                  fields: dict[str, str] | None = None) -> str:
    """RFC 9421 §2.5 written out here (not the gateway's code): the base, then HMAC-SHA256
    with the secret's ASCII bytes as the key; base64 of it."""
    derived = {"@method": method, "@authority": HOST, "@path": path}
    lines = [f'"{name}": {derived[name] if name in derived else (fields or {})[name]}'
             for name in components]
    lines.append(f'"@signature-params": {params_line}')
    mac = hmac.new(ctx.keys.hmac_secret.encode("ascii"), "\n".join(lines).encode("ascii"),
                   hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def signature_request(ctx: Ctx, signature_input: str | bytes, signature: str | bytes,
                      *lines: bytes) -> bytes:
    si = signature_input.encode() if isinstance(signature_input, str) else signature_input
    sig = signature.encode() if isinstance(signature, str) else signature
    return head(ctx, b"Signature-Input: " + si, b"Signature: " + sig, *lines,
                target=b"/keyed/x")


def well_signed(ctx: Ctx, inner: str = COVERED, **override: str | None) -> bytes:
    """A signature computed correctly over whatever parameters are given, so that the shape
    of the field alone decides the answer."""
    params_line = inner + sf_params(ctx, **override)
    return signature_request(ctx, "sig1=" + params_line,
                             f"sig1=:{own_signature(ctx, params_line)}:")


def field_signed(ctx: Ctx, fields: dict[str, str]) -> bytes:
    """A GET whose signature also covers these header fields, sent as given."""
    components = ("@method", "@authority", "@path", *fields)
    params_line = "(" + " ".join(f'"{c}"' for c in components) + ")" + sf_params(ctx)
    signature = own_signature(ctx, params_line, components=components, fields=fields)
    return signature_request(ctx, "sig1=" + params_line, f"sig1=:{signature}:",
                             *[f"{name}: {value}".encode() for name, value in fields.items()])


def several_signed(ctx: Ctx, bad: int, *, bad_keyid: str | None = None,
                   good: bool = True) -> bytes:
    """`bad` signatures that do not verify (under the key's own keyid, or `bad_keyid`), then
    one correct signature unless `good` is False, each with its own label and nonce."""
    inputs, values = [], []
    for i in range(bad):
        keyid = {"keyid": f'"{bad_keyid}"'} if bad_keyid else {}
        inputs.append(f"bad{i}=" + COVERED + sf_params(ctx, nonce=f'"{ctx.marker}-{i}"', **keyid))
        values.append(f"bad{i}=:{b64(bytes(32))}:")
    if good:
        params_line = COVERED + sf_params(ctx)
        inputs.append("good=" + params_line)
        values.append(f"good=:{own_signature(ctx, params_line)}:")
    return signature_request(ctx, ", ".join(inputs), ", ".join(values))


def junk_signed(ctx: Ctx, signature_input: str | bytes, signature: str = "sig1=:AAAA:") -> bytes:
    return signature_request(ctx, signature_input, signature)


DIGESTED = b'{"n": 1}'


def digest_case(content_digest: str) -> Callable[[Ctx], bytes]:
    """A signed POST whose signature is right over a Content-Digest field that is not."""
    body = DIGESTED

    def build(ctx: Ctx) -> bytes:
        components = ("@method", "@authority", "@path", "content-digest")
        inner = "(" + " ".join(f'"{c}"' for c in components) + ")"
        params_line = inner + sf_params(ctx)
        signature = own_signature(ctx, params_line, method="POST", components=components,
                                  fields={"content-digest": content_digest})
        return head(ctx, b"Signature-Input: sig1=" + params_line.encode(),
                    b"Signature: sig1=:" + signature.encode() + b":",
                    b"Content-Digest: " + content_digest.encode(),
                    b"Content-Length: " + str(len(body)).encode(),
                    method=b"POST", target=b"/keyed/x", body=body)

    return build


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- what the upstream must have seen ------------------------------------------------------------

Check = Callable[[Ctx, RawResponse, Seen], list[str]]
IDENTITY = ("x-auth-account-id", "x-auth-key-id", "x-auth-method", "x-auth-scopes")


def exactly(seen: Seen, name: str, expected: str) -> list[str]:
    got = seen.values(name)
    return [] if got == [expected] else [f"upstream got {name}: {got!r}, expected {expected!r}"]


def identity_of(kind: str) -> Check:
    """The identity headers are the gateway's (of the key used) and nothing else X-Auth-*."""
    def check(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
        key_id = ctx.keys.api_key_id if kind == "api-key" else ctx.keys.hmac_key_id
        problems = (exactly(seen, "X-Auth-Account-Id", ctx.keys.account_id)
                    + exactly(seen, "X-Auth-Key-Id", key_id)
                    + exactly(seen, "X-Auth-Method", kind)
                    + exactly(seen, "X-Auth-Scopes", " ".join(ctx.keys.scopes)))
        extra = [k for k, _ in seen.headers
                 if k.lower().startswith("x-auth-") and k.lower() not in IDENTITY]
        if extra:
            problems.append(f"upstream got other X-Auth-* headers: {extra}")
        return problems
    return check


def no_identity(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
    names = [k for k, _ in seen.headers if k.lower().replace("_", "-").startswith("x-auth-")]
    return [f"a public route forwarded X-Auth-* headers: {names}"] if names else []


def forwarded(xff: str, proto: str, host: str) -> Check:
    def check(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
        problems = (exactly(seen, "X-Forwarded-For", xff)
                    + exactly(seen, "X-Forwarded-Proto", proto)
                    + exactly(seen, "X-Forwarded-Host", host))
        if seen.values("Forwarded"):
            problems.append(f"upstream got Forwarded: {seen.values('Forwarded')}")
        return problems
    return check


def no_credentials(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
    leaked = [k for k, _ in seen.headers
              if k.lower() in ("authorization", "signature", "signature-input")]
    return [f"the credential reached the upstream: {leaked}"] if leaked else []


def request_id_is_the_gateways(junk: str | None) -> Check:
    def check(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
        returned = response.header("X-Request-Id")
        got = seen.values("X-Request-Id")
        problems = []
        if returned is None or got != [returned]:
            problems.append(f"upstream X-Request-Id {got!r}, returned {returned!r}")
        if returned is not None and (returned == junk
                                     or not SANE_REQUEST_ID.fullmatch(returned)):
            problems.append(f"the client's junk request id was kept: {returned!r}")
        return problems
    return check


def no_underscore_twins(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
    """`X_Auth_Key_Id` is `X-Auth-Key-Id` to CGI/WSGI upstreams (both HTTP_X_AUTH_KEY_ID)."""
    twins = [k for k, _ in seen.headers if "_" in k and k.lower().replace("_", "-").startswith(
        ("x-auth-", "x-forwarded-", "x-request-id"))]
    return [f"spoofable look-alike headers reached the upstream: {twins}"] if twins else []


def header_value(name: str, value: str) -> Check:
    def check(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
        return exactly(seen, name, value)
    return check


def body_is(expected: bytes) -> Check:
    def check(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
        return [] if seen.body == expected else [f"upstream body {seen.body[:80]!r}"]
    return check


def no_header(name: str) -> Check:
    def check(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
        return [f"upstream got {name}: {seen.values(name)}"] if seen.values(name) else []
    return check


def all_of(*checks: Check) -> Check:
    def check(ctx: Ctx, response: RawResponse, seen: Seen) -> list[str]:
        return [problem for each in checks for problem in each(ctx, response, seen)]
    return check


# -- the table ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Ctx], bytes]
    status: int
    code: str | None = None  # None: the upstream's answer, not the gateway's own
    close: bool = False  # Connection: close in the answer, the connection ends, nothing after
    gateway: str = "plain"
    check: Check | None = None  # on the one request the upstream saw (2xx cases)

    def expected(self) -> str:
        text = f"{self.status} {self.code or 'from the upstream'}"
        return text + (", Connection: close, closed" if self.close else "")


def parser_refuses(name: str, build: Callable[[Ctx], bytes]) -> Case:
    return Case(name, build, 400, "bad_request", close=True)


CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"
SMUGGLING = [
    parser_refuses("cl_and_te", lambda c: framed(
        c, b"Content-Length: 5", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n")),
    parser_refuses("te_and_cl", lambda c: framed(
        c, b"Transfer-Encoding: chunked", b"Content-Length: 3", body=CHUNKED_BODY)),
    parser_refuses("two_differing_content_lengths", lambda c: framed(
        c, b"Content-Length: 0", b"Content-Length: 5", body=b"hello")),
    parser_refuses("content_length_list_differing", lambda c: framed(
        c, b"Content-Length: 0, 5", body=b"hello")),
    parser_refuses("content_length_not_a_number", lambda c: framed(
        c, b"Content-Length: abc", body=b"hello")),
    parser_refuses("content_length_negative", lambda c: framed(
        c, b"Content-Length: -1", body=b"hello")),
    parser_refuses("content_length_plus_sign", lambda c: framed(
        c, b"Content-Length: +5", body=b"hello")),
    parser_refuses("te_chunked_then_identity", lambda c: framed(
        c, b"Transfer-Encoding: chunked, identity", body=CHUNKED_BODY)),
    parser_refuses("te_chunked_then_identity_two_lines", lambda c: framed(
        c, b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity", body=CHUNKED_BODY)),
    parser_refuses("te_xchunked", lambda c: framed(
        c, b"Transfer-Encoding: xchunked", body=CHUNKED_BODY)),
    parser_refuses("te_identity", lambda c: framed(
        c, b"Transfer-Encoding: identity", body=CHUNKED_BODY)),
    parser_refuses("te_quoted_chunked", lambda c: framed(
        c, b'Transfer-Encoding: "chunked"', body=CHUNKED_BODY)),
    parser_refuses("te_space_before_colon", lambda c: framed(
        c, b"Transfer-Encoding : chunked", body=CHUNKED_BODY)),
    parser_refuses("te_vertical_tab", lambda c: framed(
        c, b"Transfer-Encoding:\x0bchunked", body=CHUNKED_BODY)),
    parser_refuses("te_folded_onto_another_header", lambda c: framed(
        c, b"X-Padding: x", b" Transfer-Encoding: chunked", body=CHUNKED_BODY)),
    parser_refuses("te_value_folded", lambda c: framed(
        c, b"Transfer-Encoding: identity,", b" chunked", body=CHUNKED_BODY)),
    parser_refuses("chunk_size_not_hex", lambda c: framed(
        c, b"Transfer-Encoding: chunked", body=b"zz\r\nhello\r\n0\r\n\r\n")),
    parser_refuses("chunk_size_overflow", lambda c: framed(
        c, b"Transfer-Encoding: chunked", body=b"1" + b"0" * 40 + b"\r\nhello\r\n0\r\n\r\n")),
    parser_refuses("chunk_data_longer_than_its_size", lambda c: framed(
        c, b"Transfer-Encoding: chunked", body=b"3\r\nhello\r\n0\r\n\r\n")),
]

FOLDING_AND_BYTES = [
    parser_refuses("obs_fold_space", lambda c: framed(c, b"X-Folded: a", b" b", method=b"GET")),
    parser_refuses("obs_fold_tab", lambda c: framed(c, b"X-Folded: a", b"\tb", method=b"GET")),
    parser_refuses("first_header_line_indented", lambda c: (
        b"GET /pub/x HTTP/1.1\r\n Host: " + HOST.encode() + b"\r\nX-Case: "
        + c.marker.encode() + b"\r\n\r\n" + smuggled(c))),
    parser_refuses("name_with_nul", lambda c: framed(c, b"X-Bad\x00Name: v", method=b"GET")),
    parser_refuses("name_with_cr", lambda c: framed(c, b"X-Bad\rName: v", method=b"GET")),
    parser_refuses("name_with_lf", lambda c: framed(c, b"X-Bad\nName: v", method=b"GET")),
    parser_refuses("name_with_control", lambda c: framed(c, b"X-Bad\x01Name: v", method=b"GET")),
    parser_refuses("name_with_del", lambda c: framed(c, b"X-Bad\x7fName: v", method=b"GET")),
    parser_refuses("name_with_space", lambda c: framed(c, b"X-Bad Name: v", method=b"GET")),
    parser_refuses("name_space_before_colon", lambda c: framed(
        c, b"X-Auth-Key-Id : spoofed", method=b"GET")),
    parser_refuses("name_with_parenthesis", lambda c: framed(c, b"X-Bad(Name): v",
                                                             method=b"GET")),
    parser_refuses("name_with_quote", lambda c: framed(c, b'X-Bad"Name: v', method=b"GET")),
    parser_refuses("name_with_at_sign", lambda c: framed(c, b"X-Bad@Name: v", method=b"GET")),
    parser_refuses("name_non_ascii", lambda c: framed(c, "X-Bäd: v".encode(), method=b"GET")),
    parser_refuses("name_empty", lambda c: framed(c, b": v", method=b"GET")),
    parser_refuses("line_without_colon", lambda c: framed(c, b"NoColonHere", method=b"GET")),
    parser_refuses("value_with_nul", lambda c: framed(c, b"X-V: a\x00b", method=b"GET")),
    parser_refuses("value_with_control", lambda c: framed(c, b"X-V: a\x01b", method=b"GET")),
    parser_refuses("value_with_escape", lambda c: framed(c, b"X-V: a\x1bb", method=b"GET")),
    parser_refuses("value_with_del", lambda c: framed(c, b"X-V: a\x7fb", method=b"GET")),
    parser_refuses("value_with_vertical_tab", lambda c: framed(c, b"X-V: a\x0bb",
                                                               method=b"GET")),
    parser_refuses("value_with_form_feed", lambda c: framed(c, b"X-V: a\x0cb", method=b"GET")),
    parser_refuses("value_with_bare_cr", lambda c: framed(c, b"X-V: a\rb", method=b"GET")),
    parser_refuses("value_with_bare_lf", lambda c: framed(c, b"X-V: a\nX-Injected: b",
                                                          method=b"GET")),
    parser_refuses("authorization_with_nul", lambda c: framed(
        c, b"Authorization: Api-Key \x00" + c.keys.api_secret.encode(), method=b"GET",
        target=b"/keyed/x")),
    Case("value_with_htab_is_fine", lambda c: head(c, b"X-V: a\tb"), 200,
         check=header_value("X-V", "a\tb")),
]

REQUEST_LINE = [
    parser_refuses("request_line_extra_part", lambda c: (
        head(c, close=False, version=b"HTTP/1.1 extra") + smuggled(c))),
    # RFC 9112 §3 lets a recipient split the request line on any run of whitespace, and the
    # gateway writes its own request line upstream, so the extra space cannot desynchronise
    # anyone: accepted, and read as exactly one request.
    Case("request_line_double_space", lambda c: head(c, target=b" /pub/x"), 200),
    parser_refuses("request_line_no_version", lambda c: (
        b"GET /pub/x\r\nHost: " + HOST.encode() + b"\r\nX-Case: " + c.marker.encode()
        + b"\r\n\r\n" + smuggled(c))),
    parser_refuses("request_line_bad_version", lambda c: (
        head(c, close=False, version=b"HTTP/1.x") + smuggled(c))),
    parser_refuses("request_line_lowercase_version", lambda c: (
        head(c, close=False, version=b"http/1.1") + smuggled(c))),
    parser_refuses("request_line_tab_separator", lambda c: (
        b"GET\t/pub/x HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nX-Case: "
        + c.marker.encode() + b"\r\n\r\n" + smuggled(c))),
    parser_refuses("method_not_a_token", lambda c: (
        head(c, close=False, method=b"G(T") + smuggled(c))),
    parser_refuses("target_with_nul", lambda c: (
        head(c, close=False, target=b"/pub/x\x00y") + smuggled(c))),
    parser_refuses("target_with_control", lambda c: (
        head(c, close=False, target=b"/pub/\x01x") + smuggled(c))),
    parser_refuses("target_with_space", lambda c: (
        head(c, close=False, target=b"/pub/a b") + smuggled(c))),
]


def fields(count: int) -> Callable[[Ctx], list[bytes]]:
    """Header lines making `count` fields with the three every request here has (Host, X-Case,
    and Connection: close or the filler that stands in for it)."""
    return lambda c: [b"X-F%d: v" % i for i in range(count - 3)]


def one_line(length: int) -> Callable[[Ctx], list[bytes]]:
    """One header line of `length` bytes (CRLF not counted)."""
    return lambda c: [b"X-Big: " + b"a" * (length - len(b"X-Big: "))]


def limited(lines: Callable[[Ctx], list[bytes]], *, refused: bool) -> Callable[[Ctx], bytes]:
    if refused:  # kept alive, with a request after it that must never be read
        return lambda c: head(c, *lines(c), b"X-Filler: 1", close=False) + smuggled(c)
    return lambda c: head(c, *lines(c))


def long_target(length: int) -> Callable[[Ctx], bytes]:
    return lambda c: head(c, close=False, target=b"/pub/" + b"a" * (length - 5)) + smuggled(c)


def too_large(name: str, lines: Callable[[Ctx], list[bytes]]) -> Case:
    return Case(name, limited(lines, refused=True), 431, "headers_too_large", close=True)


LIMITS = [
    Case("target_of_8190_bytes_is_fine", lambda c: head(c, target=b"/pub/" + b"a" * 8185),
         200),
    Case("target_of_8191_bytes", long_target(8191), 414, "uri_too_long", close=True),
    Case("target_of_64_kib", long_target(65536), 414, "uri_too_long", close=True),
    Case("header_line_of_8190_bytes_is_fine", limited(one_line(8190), refused=False), 200),
    too_large("header_line_of_8191_bytes", one_line(8191)),
    too_large("header_line_of_20_kib", one_line(20_000)),
    Case("100_header_fields_is_fine", limited(fields(100), refused=False), 200),
    too_large("101_header_fields", fields(101)),
    too_large("1000_header_fields", fields(1000)),
    too_large("request_head_over_64_kib",
              lambda c: [b"X-Pad%d: " % i + b"p" * 4000 for i in range(17)]),
]

HOST_TRICKS = [
    Case("http11_without_host", lambda c: head(c, host=None), 400, "bad_request"),
    Case("two_differing_hosts", lambda c: head(c, b"Host: evil.test"), 400, "bad_request"),
    Case("two_identical_hosts", lambda c: head(c, b"Host: " + HOST.encode()), 400,
         "bad_request"),
    Case("absolute_form_naming_another_host", lambda c: head(
        c, target=b"http://evil.test/pub/x"), 400, "bad_request"),
    Case("absolute_form_naming_the_host", lambda c: head(
        c, target=b"http://" + HOST.encode() + b"/pub/x"), 400, "bad_request"),
    Case("http10_without_host_is_fine", lambda c: head(c, host=None, version=b"HTTP/1.0"), 200),
    Case("x_forwarded_host_spoof_untrusted", lambda c: head(
        c, b"X-Forwarded-Host: evil.test"), 200,
         check=forwarded("127.0.0.1", "http", HOST)),
] + [
    # Issue 17, item 4: a Host that is not an authority (RFC 9110 §7.2, RFC 3986 §3.2) would
    # reach the upstream as X-Forwarded-Host; nginx answers these 400 too.
    Case(f"host_{name}", (lambda h: lambda c: head(c, host=h))(host), 400, "bad_request")
    for name, host in [
        ("with_path_and_userinfo", b"evil.example/..@x"),
        ("with_userinfo", b"user@" + HOST.encode()),
        ("with_slash", HOST.encode() + b"/"),
        ("with_backslash", HOST.encode() + b"\\x"),
        ("with_space", b"gw test"),
        ("with_percent_encoding", b"evil.example%2F..%2Fx"),
        ("with_query", HOST.encode() + b"?x"),
        ("with_port_not_a_number", HOST.encode() + b":80x"),
        ("with_port_of_six_digits", HOST.encode() + b":123456"),
        ("with_two_ports", HOST.encode() + b":80:81"),
        ("ipv6_unbracketed", b"::1"),
        ("ipv6_unclosed", b"[::1"),
        ("ipv6_not_an_address", b"[::g]"),
        ("ip_future", b"[v1.x]"),
        ("empty", b""),
    ]
] + [
    Case(f"host_{name}_is_fine", (lambda h: lambda c: head(c, host=h))(host), 200,
         check=(lambda h: forwarded("127.0.0.1", "http", h.decode()))(host))
    for name, host in [
        ("with_port", HOST.encode() + b":8080"),
        ("ipv4", b"127.0.0.1:80"),
        ("ipv6", b"[::1]:8080"),
        ("upper_case", b"GW.Test"),
    ]
]

PATHS = [
    Case(f"path_{name}", (lambda t: lambda c: head(c, target=t))(target), 400, "bad_request")
    for name, target in [
        ("encoded_slash_upper", b"/pub/a%2Fb"),
        ("encoded_slash_lower", b"/pub/a%2fb"),
        ("encoded_backslash", b"/pub/a%5Cb"),
        ("raw_backslash", b"/pub/a\\b"),
        ("encoded_nul", b"/pub/a%00b"),
        ("encoded_newline", b"/pub/a%0Ab"),
        ("malformed_percent", b"/pub/a%zzb"),
        ("truncated_percent", b"/pub/a%2"),
        ("dotdot_escaping_the_prefix", b"/pub/../other/x"),
        ("encoded_dotdot_escaping_the_prefix", b"/pub/%2e%2e/other/x"),
        ("dotdot_above_the_root", b"/../pub/x"),
        ("fragment", b"/pub/x#frag"),
        ("fragment_after_query", b"/pub/x?q=a#frag"),
        ("asterisk_form", b"*"),
        ("relative_target", b"pub/x"),
        ("non_ascii_bytes", "/pub/café".encode()),
    ]
] + [
    Case("connect_authority_form", lambda c: head(
        c, method=b"CONNECT", target=HOST.encode() + b":443") + smuggled(c), 400,
         "bad_request"),
    Case("options_asterisk", lambda c: head(c, method=b"OPTIONS", target=b"*"), 400,
         "bad_request"),
    Case("unknown_prefix", lambda c: head(c, target=b"/nowhere/x"), 404, "no_route"),
    Case("prefix_without_segment_boundary", lambda c: head(c, target=b"/pubx/y"), 404,
         "no_route"),
    Case("prefix_in_other_case", lambda c: head(c, target=b"/PUB/x"), 404, "no_route"),
    Case("dotdot_inside_the_prefix_is_fine", lambda c: head(c, target=b"/pub/a/../b"), 200),
] + [
    # Issue 17, item 1: `/pub/` is public, `/pub/admin/` protected. Tomcat, Jetty and Spring
    # drop `;` parameters before matching, Express and ASP.NET ignore case: each of these is
    # the admin handler to one of them, and used to be forwarded by the public route.
    Case(f"nested_prefix_{name}", (lambda t: lambda c: head(c, target=t))(target), 400,
         "bad_request")
    for name, target in [
        ("routed_around_by_parameters", b"/pub/admin;x/users"),
        ("routed_around_by_jsessionid", b"/pub/admin;jsessionid=1/users"),
        ("routed_around_by_an_empty_parameter", b"/pub/admin;/users"),
        ("routed_around_by_a_parameter_only_segment", b"/pub/;x/admin/users"),
        ("routed_around_by_upper_case", b"/pub/ADMIN/users"),
        ("routed_around_by_mixed_case", b"/pub/Admin/users"),
        ("routed_around_by_case_and_parameters", b"/pub/aDmin;x=1/users"),
        ("routed_around_by_a_dotless_i", b"/pub/adm%C4%B1n/users"),
        ("dotdot_after_a_parameter_only_segment", b"/pub/x/;x/../admin/users"),
    ]
] + [
    Case("nested_prefix_needs_the_credential", lambda c: head(c, target=b"/pub/admin/users"),
         401, "missing_credentials"),
    Case("nested_prefix_with_the_credential_is_fine", lambda c: head(
        c, api_key_line(c), target=b"/pub/admin/users"), 200, check=identity_of("api-key")),
    Case("nested_prefix_jsessionid_inside_it_is_fine", lambda c: head(
        c, api_key_line(c), target=b"/pub/admin/users;jsessionid=1"), 200,
         check=identity_of("api-key")),
    Case("jsessionid_on_the_public_route_is_fine", lambda c: head(
        c, target=b"/pub/x;jsessionid=1"), 200, check=no_identity),
    Case("other_case_inside_one_route_is_fine", lambda c: head(c, target=b"/pub/Users/X"), 200),
]

AUTHORIZATION = [
    Case("no_credential", lambda c: head(c, target=b"/keyed/x"), 401, "missing_credentials"),
    Case("valid_api_key_is_fine", lambda c: head(c, api_key_line(c), target=b"/keyed/x"), 200,
         check=all_of(identity_of("api-key"), no_credentials)),
    Case("authorization_twice_same_key", lambda c: head(
        c, api_key_line(c), api_key_line(c), target=b"/keyed/x"), 400, "bad_request"),
    Case("authorization_twice_second_bearer", lambda c: head(
        c, api_key_line(c), b"Authorization: Bearer junk", target=b"/keyed/x"), 400,
         "bad_request"),
    Case("authorization_twice_first_bearer", lambda c: head(
        c, b"Authorization: Bearer junk", api_key_line(c), target=b"/keyed/x"), 400,
         "bad_request"),
    Case("authorization_twice_names_in_other_case", lambda c: head(
        c, api_key_line(c), api_key_line(c).replace(b"Authorization", b"AUTHORIZATION"),
        target=b"/keyed/x"), 400, "bad_request"),
    Case("authorization_as_a_list_in_one_line", lambda c: head(
        c, api_key_line(c) + b", Api-Key " + c.keys.api_secret.encode(),
        target=b"/keyed/x"), 401, "invalid_credentials"),
    Case("authorization_key_with_trailing_junk", lambda c: head(
        c, api_key_line(c) + b" junk", target=b"/keyed/x"), 401, "invalid_credentials"),
    Case("authorization_scheme_without_key", lambda c: head(
        c, b"Authorization: Api-Key", target=b"/keyed/x"), 401, "invalid_credentials"),
    Case("authorization_non_ascii", lambda c: head(
        c, "Authorization: Api-Key gwk_é".encode(), target=b"/keyed/x"), 401,
         "invalid_credentials"),
    Case("authorization_and_signature", lambda c: head(
        c, api_key_line(c), *signed_lines(c), target=b"/keyed/x"), 400, "bad_request"),
]

OVERRIDE_NAMES = ("X-Original-URL", "X-Rewrite-URL", "X-Real-IP", "True-Client-IP",
                  "X-Client-IP", "Proxy")
OVERRIDES = (b"X-Original-URL: /keyed/x", b"X-Rewrite-URL: /keyed/x", b"X-Real-IP: 6.6.6.6",
             b"True-Client-IP: 6.6.6.6", b"X-Client-IP: 6.6.6.6",
             b"Proxy: http://evil.test:3128")

SPOOFING = [
    Case("identity_and_forwarding_spoofed_untrusted", lambda c: head(
        c, api_key_line(c), b"X-Auth-Account-Id: acc_spoofed", b"X-Auth-Key-Id: spoofed",
        b"x-auth-method: hmac", b"X-AUTH-SCOPES: *", b"X-Auth-Admin: yes",
        b"X-Forwarded-For: 6.6.6.6", b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: evil.test", b"Forwarded: for=6.6.6.6;proto=https",
        b"X-Request-Id: <script>", target=b"/keyed/x"), 200,
         check=all_of(identity_of("api-key"), forwarded("127.0.0.1", "http", HOST),
                      request_id_is_the_gateways("<script>"), no_credentials)),
    Case("identity_and_forwarding_spoofed_trusted", lambda c: head(
        c, api_key_line(c), b"X-Auth-Key-Id: spoofed", b"X-Auth-Method: hmac",
        b"X-Auth-Scopes: *", b"X-Forwarded-For: 6.6.6.6", b"X-Forwarded-Proto: https",
        b"X-Forwarded-Host: evil.test", target=b"/keyed/x"), 200, gateway="trusted",
         check=all_of(identity_of("api-key"),
                      forwarded("6.6.6.6, 127.0.0.1", "https", "evil.test"))),
    # Issue 17, item 4: headers upstreams read as a path (IIS, Symfony, Laravel), a client
    # address, or a proxy to use (httpoxy) do not pass from an untrusted peer; a trusted proxy
    # may set them.
    Case("override_headers_untrusted", lambda c: head(c, *OVERRIDES), 200,
         check=all_of(*[no_header(n) for n in OVERRIDE_NAMES])),
    Case("override_headers_with_underscores_untrusted", lambda c: head(
        c, b"X_Original_URL: /keyed/x", b"X_Real_IP: 6.6.6.6"), 200,
         check=all_of(no_header("X_Original_URL"), no_header("X_Real_IP"))),
    Case("override_headers_on_a_keyed_route_untrusted", lambda c: head(
        c, api_key_line(c), *OVERRIDES, target=b"/keyed/x"), 200,
         check=all_of(identity_of("api-key"), *[no_header(n) for n in OVERRIDE_NAMES])),
    Case("override_headers_trusted", lambda c: head(c, *OVERRIDES), 200, gateway="trusted",
         check=all_of(header_value("X-Real-IP", "6.6.6.6"),
                      header_value("X-Original-URL", "/keyed/x"))),
    Case("x_forwarded_for_two_lines_untrusted", lambda c: head(
        c, b"X-Forwarded-For: 1.1.1.1", b"X-Forwarded-For: 2.2.2.2, 3.3.3.3"), 200,
         check=forwarded("127.0.0.1", "http", HOST)),
    Case("x_forwarded_for_two_lines_trusted", lambda c: head(
        c, b"X-Forwarded-For: 1.1.1.1", b"X-Forwarded-For: 2.2.2.2, 3.3.3.3"), 200,
         gateway="trusted",
         check=header_value("X-Forwarded-For", "1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1")),
    Case("x_forwarded_for_junk_untrusted", lambda c: head(
        c, b"X-Forwarded-For: not-an-address, ,,", b"X-Forwarded-Proto: gopher"), 200,
         check=forwarded("127.0.0.1", "http", HOST)),
    Case("public_route_strips_spoofed_identity", lambda c: head(
        c, b"X-Auth-Account-Id: acc_spoofed", b"X-Auth-Method: api-key",
        b"Authorization: Api-Key junk", b"Signature: sig1=:AAAA:"), 200,
         check=all_of(no_identity, no_credentials)),
    Case("signed_request_with_spoofed_identity", lambda c: head(
        c, *signed_lines(c), b"X-Auth-Method: api-key", b"X-Auth-Key-Id: spoofed",
        b"X-Auth-Account-Id: acc_spoofed", target=b"/keyed/x"), 200,
         check=all_of(identity_of("hmac"), no_credentials)),
    Case("identity_look_alikes_with_underscores", lambda c: head(
        c, api_key_line(c), b"X_Auth_Key_Id: spoofed", b"X_Auth_Account_Id: acc_spoofed",
        b"X_Forwarded_For: 6.6.6.6", b"X_Request_Id: spoofed", target=b"/keyed/x"), 200,
         check=all_of(identity_of("api-key"), no_underscore_twins)),
    Case("request_id_too_long", lambda c: head(c, b"X-Request-Id: " + b"a" * 129), 200,
         check=request_id_is_the_gateways("a" * 129)),
    Case("request_id_non_ascii", lambda c: head(c, "X-Request-Id: é-id".encode()), 200,
         check=request_id_is_the_gateways("é-id")),
    Case("request_id_twice", lambda c: head(c, b"X-Request-Id: one", b"X-Request-Id: two"),
         200, check=request_id_is_the_gateways(None)),
    Case("upgrade_h2c_is_not_forwarded", lambda c: head(
        c, b"Upgrade: h2c", b"HTTP2-Settings: AAMAAABkAAQAAP__",
        b"Connection: Upgrade, HTTP2-Settings, close", close=False), 200,
         check=all_of(no_header("Upgrade"), no_header("HTTP2-Settings"))),
    Case("pipelined_after_connection_close", lambda c: head(c) + smuggled(c), 200, close=True),
    Case("chunked_upload_is_fine", lambda c: head(
        c, b"Transfer-Encoding: chunked", method=b"POST", body=CHUNKED_BODY), 200,
         check=body_is(b"hello")),
]

SIGNATURES = [
    Case(f"hmac_{name}", build, 401, "invalid_signature") for name, build in [
        ("input_not_a_dictionary", lambda c: junk_signed(c, COVERED + sf_params(c))),
        ("input_member_is_a_token", lambda c: junk_signed(c, "sig1=sig")),
        ("input_member_is_a_string", lambda c: junk_signed(c, f'sig1="{COVERED}"')),
        ("input_member_is_a_boolean", lambda c: junk_signed(c, "sig1")),
        ("input_member_is_an_integer", lambda c: junk_signed(c, "sig1=1")),
        ("input_nested_inner_list", lambda c: junk_signed(c, "sig1=((\"@method\"))")),
        ("input_unterminated", lambda c: junk_signed(c, 'sig1=("@method" "@authority"')),
        ("signature_is_a_string", lambda c: signature_request(
            c, "sig1=" + COVERED + sf_params(c), 'sig1="AAAA"')),
        ("signature_is_an_integer", lambda c: signature_request(
            c, "sig1=" + COVERED + sf_params(c), "sig1=42")),
        ("signature_is_an_inner_list", lambda c: signature_request(
            c, "sig1=" + COVERED + sf_params(c), "sig1=(:AAAA:)")),
        ("signature_bad_base64", lambda c: signature_request(
            c, "sig1=" + COVERED + sf_params(c), "sig1=:not*base64!:")),
        ("signature_unterminated", lambda c: signature_request(
            c, "sig1=" + COVERED + sf_params(c), "sig1=:AAAA")),
        ("signature_not_a_dictionary", lambda c: signature_request(
            c, "sig1=" + COVERED + sf_params(c), ":AAAA:")),
        ("missing_keyid", lambda c: well_signed(c, keyid=None)),
        ("missing_created", lambda c: well_signed(c, created=None)),
        ("missing_nonce", lambda c: well_signed(c, nonce=None)),
        ("created_is_a_string", lambda c: well_signed(c, created=f'"{int(time.time())}"')),
        ("created_is_a_decimal", lambda c: well_signed(c, created=f"{int(time.time())}.5")),
        ("created_is_a_boolean", lambda c: well_signed(c, created="?1")),
        ("created_has_16_digits", lambda c: well_signed(c, created="1" * 16)),
        ("expires_is_a_string", lambda c: well_signed(c, expires='"soon"')),
        ("keyid_is_a_token", lambda c: well_signed(c, keyid=c.keys.hmac_key_id)),
        ("keyid_is_empty", lambda c: well_signed(c, keyid='""')),
        ("keyid_is_bytes", lambda c: well_signed(
            c, keyid=f":{b64(c.keys.hmac_key_id.encode())}:")),
        ("nonce_is_an_integer", lambda c: well_signed(c, nonce="12345")),
        ("nonce_is_empty", lambda c: well_signed(c, nonce='""')),
        ("nonce_non_ascii", lambda c: signature_request(
            c, ("sig1=" + COVERED + sf_params(c, nonce='"é"')).encode(), "sig1=:AAAA:")),
        ("alg_unknown", lambda c: well_signed(c, alg='"rsa-pss-sha512"')),
        ("alg_in_upper_case", lambda c: well_signed(c, alg='"HMAC-SHA256"')),
        ("alg_is_a_token", lambda c: well_signed(c, alg="hmac-sha256")),
        ("unknown_parameter", lambda c: well_signed(c, foo="1")),
        ("components_are_tokens", lambda c: well_signed(c, inner="(@method @authority @path)")),
        ("components_are_integers", lambda c: well_signed(c, inner="(1 2 3)")),
        ("components_are_bytes", lambda c: well_signed(
            c, inner=f"(:{b64(b'@method')}: :{b64(b'@path')}:)")),
        ("component_with_a_parameter", lambda c: well_signed(
            c, inner='("@method";req "@authority" "@path")')),
        ("component_in_upper_case", lambda c: well_signed(
            c, inner='("@METHOD" "@authority" "@path")')),
        ("component_listed_twice", lambda c: well_signed(
            c, inner='("@method" "@authority" "@path" "@path")')),
        ("component_unknown_derived", lambda c: well_signed(
            c, inner='("@method" "@authority" "@path" "@status")')),
        ("component_missing_path", lambda c: well_signed(c, inner='("@method" "@authority")')),
        ("labels_do_not_match", lambda c: signature_request(
            c, "sig1=" + COVERED + sf_params(c),
            f"sig2=:{own_signature(c, COVERED + sf_params(c))}:")),
        ("label_duplicated_in_signature_last_is_junk", lambda c: (lambda p: signature_request(
            c, "sig1=" + p, f"sig1=:{own_signature(c, p)}:, sig1=:AAAA:"))(
                COVERED + sf_params(c))),
        ("label_duplicated_in_a_second_input_line", lambda c: (lambda p: signature_request(
            c, "sig1=" + p, f"sig1=:{own_signature(c, p)}:",
            b'Signature-Input: sig1=("@method")' + sf_params(c).encode()))(
                COVERED + sf_params(c))),
        ("fields_longer_than_8_kib_in_two_lines", lambda c: (lambda p: signature_request(
            c, "sig1=" + p, f"sig1=:{own_signature(c, p)}:",
            b'Signature-Input: sig2=("@method");nonce="' + b"n" * 4500 + b'"'))(
                COVERED + sf_params(c, nonce='"' + c.marker + "x" * 4400 + '"'))),
        ("signature_of_6000_bytes", lambda c: signature_request(
            c, "sig1=" + COVERED + sf_params(c), "sig1=:" + "A" * 6000 + ":")),
        ("signature_input_alone", lambda c: head(
            c, b"Signature-Input: sig1=" + (COVERED + sf_params(c)).encode(),
            target=b"/keyed/x")),
        ("signature_alone", lambda c: head(c, b"Signature: sig1=:AAAA:", target=b"/keyed/x")),
        ("signature_input_empty", lambda c: signature_request(c, "", "sig1=:AAAA:")),
        ("content_digest_is_a_token", digest_case("sha-256=abc")),
        ("content_digest_not_a_dictionary", digest_case(":" + b64(b"x" * 32) + ":")),
        ("content_digest_unknown_algorithm_only", digest_case(
            f"md5=:{b64(hashlib.md5(DIGESTED).digest())}:")),
        ("content_digest_of_another_body", digest_case(
            f"sha-256=:{b64(hashlib.sha256(b'other').digest())}:")),
        ("content_digest_bad_base64", digest_case("sha-256=:***:")),
    ]
] + [
    Case("hmac_signed_get_is_fine", lambda c: head(c, *signed_lines(c), target=b"/keyed/x"),
         200, check=identity_of("hmac")),
    Case("hmac_signed_post_is_fine", lambda c: head(
        c, *signed_lines(c, "POST", body=DIGESTED), b"Content-Length: 8",
        method=b"POST", target=b"/keyed/x", body=DIGESTED), 200, check=body_is(DIGESTED)),
    Case("hmac_independent_signer_without_alg_is_fine", lambda c: well_signed(c, alg=None), 200,
         check=identity_of("hmac")),
    # Issue 17, item 14: with several signatures under gateway keyids, each is checked (at
    # most 4) and one that verifies is enough; a bad one no longer hides a good one.
    Case("hmac_bad_signature_before_a_good_one_is_fine", lambda c: several_signed(c, 1), 200,
         check=identity_of("hmac")),
    Case("hmac_unknown_gateway_key_before_a_good_one_is_fine", lambda c: several_signed(
        c, 1, bad_keyid="gwh_" + "x" * 24), 200, check=identity_of("hmac")),
    Case("hmac_three_bad_signatures_before_a_good_one_are_fine", lambda c: several_signed(
        c, 3), 200, check=identity_of("hmac")),
    Case("hmac_a_good_signature_fifth_is_not_reached", lambda c: several_signed(c, 4), 401,
         "invalid_signature"),
    Case("hmac_only_bad_signatures", lambda c: several_signed(c, 2, good=False), 401,
         "invalid_signature"),
    # Issue 17, item 12: RFC 9110 §5.5 allows a tab inside a field value.
    Case("hmac_covered_value_with_a_tab_is_fine", lambda c: field_signed(
        c, {"x-tab": "a\tb\t\tc"}), 200, check=all_of(identity_of("hmac"),
                                                     header_value("X-Tab", "a\tb\t\tc"))),
]

CASES = [*SMUGGLING, *FOLDING_AND_BYTES, *REQUEST_LINE, *LIMITS, *HOST_TRICKS, *PATHS,
         *AUTHORIZATION, *SPOOFING, *SIGNATURES]
assert len({case.name for case in CASES}) == len(CASES), "case names must be unique"


# -- running a case -------------------------------------------------------------------------------

@dataclass
class Outcome:
    case: Case
    ctx: Ctx
    response: RawResponse
    problems: list[str]

    def report(self) -> str:
        return (f"{self.case.name}: expected {self.case.expected()}; got "
                f"{self.response.summary()}" + "".join(f"\n  - {p}" for p in self.problems))


def run_case(case: Case, gateways: dict[str, GatewayProcess], upstream: RecordingUpstream,
             keys: Keys) -> Outcome:
    ctx = Ctx(marker=f"hostile-{secrets.token_hex(6)}", keys=keys)
    response = exchange(gateways[case.gateway].port, case.build(ctx))
    problems = []
    if response.status != case.status:
        problems.append(f"status {response.status}, expected {case.status}")
    if case.code is not None:
        error = response.error
        content_type = response.header("Content-Type") or ""
        if error is None:
            problems.append("the answer is not the gateway's JSON error")
        else:
            if error.get("code") != case.code:
                problems.append(f"code {error.get('code')!r}, expected {case.code!r}")
            if not isinstance(error.get("message"), str) or not error["message"]:
                problems.append("no error message")
            if not isinstance(error.get("request_id"), str) or not error["request_id"]:
                problems.append("no request_id")
        if not content_type.startswith("application/json"):
            problems.append(f"Content-Type {content_type!r}")
        if case.status == 401:
            challenge = ", ".join(response.all("WWW-Authenticate"))
            if "Api-Key" not in challenge or "Signature" not in challenge:
                problems.append(f"WWW-Authenticate {challenge!r}")
    if case.close:
        if not response.connection_close:
            problems.append("no Connection: close in the answer")
        if not (response.closed or response.reset):  # a reset after the answer ends it too
            problems.append("the connection was left open")
        if response.trailing:
            problems.append(f"a second answer followed: {response.trailing[:100]!r}")
    raw = upstream.raw()
    if (ctx.marker + "-smuggled").encode() in raw:
        problems.append("the smuggled request reached the upstream")
    seen = upstream.seen_with(ctx.marker)
    if 200 <= case.status < 300:
        if len(seen) != 1:
            problems.append(f"the upstream handled it {len(seen)} times, expected once")
        elif case.check is not None:
            problems.extend(case.check(ctx, response, seen[0]))
    elif ctx.marker.encode() in raw:
        problems.append("the upstream received bytes of a request the gateway refused")
    return Outcome(case, ctx, response, problems)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_request(world: World, case: Case) -> None:
    outcome = run_case(case, world.gateways, world.upstream, world.keys)
    if outcome.problems:
        pytest.fail(outcome.report(), pytrace=False)


def test_whole_table_on_two_workers_leaves_the_gateway_serving(upstream_and_keys,
                                                                tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every row at once (eight connections at a time) against a fresh `--workers 2` gateway:
    each gets an answer below 500, no worker dies or restarts, normal requests still pass, and
    the upstream received exactly the requests answered 2xx, nothing the gateway refused."""
    upstream, keys, redis = upstream_and_keys
    with gateways_for(tmp_path, upstream, redis, workers=2) as gateways:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(lambda case: run_case(case, gateways, upstream, keys),
                                     CASES))
        problems = [f"{o.case.name}: no answer below 500 ({o.response.summary()})"
                    for o in outcomes
                    if o.response.status is None or o.response.status >= 500]

        normal = [Case("after_plain", lambda c: head(c), 200),
                  Case("after_api_key", lambda c: head(c, api_key_line(c), target=b"/keyed/x"),
                       200),
                  Case("after_signed", lambda c: head(c, *signed_lines(c), target=b"/keyed/x"),
                       200)]
        after = [run_case(case, gateways, upstream, keys) for case in normal * 10]
        problems += [o.report() for o in after if o.problems]

        log = gateways["plain"].log()
        if "exited with" in log or "starting another" in log:
            problems.append("a worker exited and was replaced:\n" + log[-3000:])
        if "Traceback" in log:
            first = log.index("Traceback")
            problems.append(f"the gateway logged {log.count('Traceback')} tracebacks, the first:"
                            f"\n{log[max(first - 200, 0):first + 1000]}")
        if log.count("started (pid") != 2:
            problems.append(f"{log.count('started (pid')} worker starts logged, expected 2")

    everything = outcomes + after
    mine = {o.ctx.marker for o in everything}
    answered_2xx = {o.ctx.marker for o in everything
                    if o.response.status is not None and 200 <= o.response.status < 300}
    arrived = {m.decode() for m in MARKER.findall(upstream.raw())}
    arrived = {m for m in arrived if m.removesuffix("-smuggled") in mine}
    if arrived != answered_2xx:
        by_marker = {o.ctx.marker: o for o in everything}
        for marker in sorted(arrived - answered_2xx):
            outcome = by_marker[marker.removesuffix("-smuggled")]
            problems.append(f"{outcome.case.name}: reached the upstream as {marker!r} but was "
                            f"answered {outcome.response.summary()}")
        for marker in sorted(answered_2xx - arrived):
            problems.append(f"{by_marker[marker].case.name}: answered 2xx, never reached the "
                            "upstream")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
