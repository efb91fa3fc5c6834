"""`https://` upstreams (issue 19): verified by default (system CAs, or the route's `ca_file`),
SNI set to the upstream's host, verification off only when a route says `tls_verify: false`;
a certificate that does not verify is a 502 with a clear message."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.demo import create_demo_app
from tests.conftest import make_config
from tests.support.redis_server import RedisServer
from tests.support.tls import CertificateAuthority


class HttpsUpstream:
    def __init__(self, root: Path) -> None:
        self.ca = CertificateAuthority(root / "upstream-ca", "upstream CA")
        self.cert, self.key = root / "upstream.pem", root / "upstream.key"
        self.ca.issue_server(self.cert, self.key)
        self.other_ca = CertificateAuthority(root / "other-ca", "other CA")
        self.server_names: list[str | None] = []
        self.port = 0

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        context.sni_callback = self._sni
        return context

    def _sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(name)


@pytest.fixture
async def https_upstream(tmp_path: Path) -> AsyncIterator[HttpsUpstream]:
    upstream = HttpsUpstream(tmp_path)
    runner = web.AppRunner(create_demo_app("echo"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=upstream.context())
    await site.start()
    upstream.port = runner.addresses[0][1]
    yield upstream
    await runner.cleanup()


def routes(upstream: HttpsUpstream, **settings: Any) -> list[dict[str, Any]]:
    return [{"name": "secure", "prefix": "/secure/", "public": True,
             "upstream": f"https://localhost:{upstream.port}", **settings}]


async def test_https_upstream_with_ca_file_is_verified_and_gets_sni(
        redis_clean: RedisServer, https_upstream: HttpsUpstream, start_gateway: Any,
        http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(make_config(redis_clean.url, routes(
        https_upstream, ca_file=str(https_upstream.ca.cert))))
    async with http.get(gateway.url + "/secure/x") as response:
        assert response.status == 200, await response.text()
        data = await response.json()
    assert data["path"] == "/secure/x"
    assert data["headers"]["Host"] == f"localhost:{https_upstream.port}"
    assert https_upstream.server_names == ["localhost"]  # one pooled connection, SNI set


async def test_https_upstream_with_a_wrong_ca_is_a_502(
        redis_clean: RedisServer, https_upstream: HttpsUpstream, start_gateway: Any,
        http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    gateway = await start_gateway(make_config(redis_clean.url, routes(
        https_upstream, ca_file=str(https_upstream.other_ca.cert))))
    async with http.get(gateway.url + "/secure/x") as response:
        assert response.status == 502
        error = (await response.json())["error"]
    assert error["code"] == "upstream_unavailable"
    assert error["message"] == \
        "upstream 'secure' is unavailable: its TLS certificate did not verify"
    assert "certificate did not verify" in caplog.text  # the details, for the operator


async def test_https_upstream_is_verified_against_the_system_cas_by_default(
        redis_clean: RedisServer, https_upstream: HttpsUpstream, start_gateway: Any,
        http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(make_config(redis_clean.url, routes(https_upstream)))
    async with http.get(gateway.url + "/secure/x") as response:
        assert response.status == 502  # the test CA is not a system CA
        assert "did not verify" in (await response.json())["error"]["message"]


async def test_host_name_is_checked(
        tmp_path: Path, redis_clean: RedisServer, https_upstream: HttpsUpstream,
        start_gateway: Any, http: aiohttp.ClientSession) -> None:
    # Issued by the trusted CA, but for another name: refused, as a wrong CA is.
    https_upstream.ca.issue_server(https_upstream.cert, https_upstream.key,
                                   "other.example", ("other.example",), ())
    runner = web.AppRunner(create_demo_app("echo"))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=https_upstream.context()).start()
        port = runner.addresses[0][1]
        gateway = await start_gateway(make_config(redis_clean.url, [
            {"name": "secure", "prefix": "/secure/", "public": True,
             "upstream": f"https://localhost:{port}", "ca_file": str(https_upstream.ca.cert)}]))
        async with http.get(gateway.url + "/secure/x") as response:
            assert response.status == 502
            assert "did not verify" in (await response.json())["error"]["message"]
    finally:
        await runner.cleanup()


async def test_tls_verify_false_is_explicit_only(
        redis_clean: RedisServer, https_upstream: HttpsUpstream, start_gateway: Any,
        http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(make_config(redis_clean.url, routes(
        https_upstream, tls_verify=False)))
    async with http.get(gateway.url + "/secure/x") as response:
        assert response.status == 200, await response.text()


async def test_routes_with_other_tls_rules_do_not_share_connections(
        redis_clean: RedisServer, https_upstream: HttpsUpstream, start_gateway: Any,
        http: aiohttp.ClientSession) -> None:
    # The same origin, once unverified and once with the wrong CA: a connection the first
    # opened must not serve the second.
    config = make_config(redis_clean.url, [
        {"name": "loose", "prefix": "/loose/", "public": True, "tls_verify": False,
         "upstream": f"https://localhost:{https_upstream.port}"},
        {"name": "strict", "prefix": "/strict/", "public": True,
         "ca_file": str(https_upstream.other_ca.cert),
         "upstream": f"https://localhost:{https_upstream.port}"}])
    gateway = await start_gateway(config)
    async with http.get(gateway.url + "/loose/x") as response:
        assert response.status == 200
    async with http.get(gateway.url + "/strict/x") as response:
        assert response.status == 502
