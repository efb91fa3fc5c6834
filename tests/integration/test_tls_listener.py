"""TLS termination on the proxy listener (issue 19, SPEC §9 `listen.tls`): real gateway, real
sockets, and the clients operators use against it (curl, Python's ssl, openssl s_client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer

from gateway.config import Config
from gateway.keys.service import KeyService
from tests.conftest import GatewayUnderTest, api_key, make_config, new_key
from tests.support.processes import gateway_command
from tests.support.redis_server import RedisServer
from tests.support.tls import CertificateAuthority

SUBJECT = "X-Auth-Client-Cert-Subject"


class Pki:
    """One CA; the gateway's server certificate; a client certificate it issued; and a
    client certificate of another CA the gateway does not trust."""

    def __init__(self, root: Path) -> None:
        self.ca = CertificateAuthority(root / "ca")
        self.server_cert, self.server_key = root / "server.pem", root / "server.key"
        self.ca.issue_server(self.server_cert, self.server_key)
        self.client_cert, self.client_key = root / "client.pem", root / "client.key"
        self.ca.issue_client(self.client_cert, self.client_key, "billing-service", "Example")
        self.rogue_ca = CertificateAuthority(root / "rogue", "rogue CA")
        self.rogue_cert, self.rogue_key = root / "rogue.pem", root / "rogue.key"
        self.rogue_ca.issue_client(self.rogue_cert, self.rogue_key, "billing-service", "Example")


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def tls_config(redis_url: str, upstream: TestServer, pki: Pki, *, public: bool = True,
               **tls: Any) -> Config:
    return make_config(redis_url, [
        {"name": "echo", "prefix": "/echo/", "upstream": f"http://127.0.0.1:{upstream.port}",
         "public": public}],
        listen={"host": "127.0.0.1", "port": 0,
                "tls": {"cert": str(pki.server_cert), "key": str(pki.server_key), **tls}})


def client_context(pki: Pki, *, cert: Path | None = None, key: Path | None = None,
                   version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert))
    if cert is not None:
        context.load_cert_chain(cert, key)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


def https(gateway: GatewayUnderTest, path: str = "/echo/x") -> str:
    return f"https://127.0.0.1:{gateway.running.proxy_port}{path}"


async def echo_headers(http: aiohttp.ClientSession, url: str, context: ssl.SSLContext,
                       headers: dict[str, str] | None = None) -> dict[str, str]:
    async with http.get(url, ssl=context, headers=headers or {}) as response:
        assert response.status == 200, await response.text()
        data = await response.json()
    return {name.lower(): value for name, value in data["headers"].items()}


async def test_python_client_reaches_the_upstream_over_tls_with_forwarded_proto_https(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any,
        http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki))
    headers = await echo_headers(http, https(gateway), client_context(pki),
                                 {"X-Forwarded-Proto": "http"})  # an untrusted peer's: replaced
    assert headers["x-forwarded-proto"] == "https"
    assert SUBJECT.lower() not in headers  # no client_ca: no subject, ever
    # Plain HTTP on the TLS port is not served.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.running.proxy_port)
    writer.write(b"GET /echo/x HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert b"200 OK" not in answer


async def test_the_chain_in_the_certificate_file_is_served(
        tmp_path: Path, redis_clean: RedisServer, upstream: TestServer, pki: Pki,
        start_gateway: Any, http: aiohttp.ClientSession) -> None:
    # Issued by an intermediate CA; clients trust only the root: they need the chain.
    intermediate = CertificateAuthority(tmp_path / "intermediate", "intermediate CA", pki.ca)
    intermediate.issue_server(pki.server_cert, pki.server_key)
    assert pki.server_cert.read_text().count("BEGIN CERTIFICATE") == 2
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki))
    headers = await echo_headers(http, https(gateway), client_context(pki))
    assert headers["x-forwarded-proto"] == "https"


async def test_an_early_answer_reaches_a_client_still_sending_its_body(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any) -> None:
    # 401 before the body is read: the client, still sending, must get to read it over TLS
    # too (no reset that loses the answer).
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki, public=False))

    def send() -> bytes:
        context = client_context(pki)
        with context.wrap_socket(socket.create_connection(
                ("127.0.0.1", gateway.running.proxy_port), 10),
                server_hostname="localhost") as sock:
            sock.sendall(b"POST /echo/x HTTP/1.1\r\nHost: a\r\nContent-Length: 50000000\r\n\r\n")
            with contextlib.suppress(OSError):
                for _ in range(64):
                    sock.sendall(b"x" * 65536)
            answer = b""
            with contextlib.suppress(OSError):
                while data := sock.recv(65536):
                    answer += data
            return answer

    answer = await asyncio.to_thread(send)
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert b'"missing_credentials"' in answer


async def test_forwarded_proto_from_a_trusted_proxy_is_kept_over_tls(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any,
        http: aiohttp.ClientSession) -> None:
    config = make_config(redis_clean.url, [
        {"name": "echo", "prefix": "/echo/", "upstream": f"http://127.0.0.1:{upstream.port}",
         "public": True}],
        listen={"host": "127.0.0.1", "port": 0, "trusted_proxies": ["127.0.0.1"],
                "tls": {"cert": str(pki.server_cert), "key": str(pki.server_key)}})
    gateway = await start_gateway(config)
    headers = await echo_headers(http, https(gateway), client_context(pki),
                                 {"X-Forwarded-Proto": "wss"})
    assert headers["x-forwarded-proto"] == "wss"  # the trusted proxy's word, as over HTTP
    headers = await echo_headers(http, https(gateway), client_context(pki))
    assert headers["x-forwarded-proto"] == "https"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is absent (apt-get install curl)")
async def test_curl_with_cacert_reaches_the_upstream(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any) -> None:
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki))
    result = await asyncio.to_thread(subprocess.run, [
        "curl", "--silent", "--show-error", "--cacert", str(pki.ca.cert),
        "--write-out", "\n%{http_code} %{http_version} %{ssl_verify_result}",
        https(gateway, "/echo/curl")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    body, _, status = result.stdout.rpartition("\n")
    assert status == "200 1.1 0"  # verified, and HTTP/1.1 (the only ALPN protocol offered)
    assert json.loads(body)["headers"]["X-Forwarded-Proto"] == "https"
    # Without the CA, curl refuses the certificate: the gateway serves the one it was given.
    result = await asyncio.to_thread(subprocess.run, [
        "curl", "--silent", https(gateway, "/echo/curl")], capture_output=True, timeout=30)
    assert result.returncode == 60  # CURLE_PEER_FAILED_VERIFICATION


async def test_api_key_still_required_over_tls(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any,
        http: aiohttp.ClientSession, key_service: KeyService) -> None:
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki, public=False))
    async with http.get(https(gateway), ssl=client_context(pki)) as response:
        assert response.status == 401
    _, secret, _ = await new_key(key_service)
    headers = await echo_headers(http, https(gateway), client_context(pki), api_key(secret))
    assert headers["x-auth-method"] == "api-key"


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                           "-servername", "localhost", *args],
                          input="", capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None,
                    reason="the openssl command is absent (apt-get install openssl)")
async def test_openssl_s_client_versions_and_alpn(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any) -> None:
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki))
    port = gateway.running.proxy_port
    for old in ("-tls1", "-tls1_1"):
        # (@SECLEVEL=0: this OpenSSL would not even offer them otherwise.)
        result = await asyncio.to_thread(s_client, port, old, "-cipher", "DEFAULT@SECLEVEL=0")
        assert result.returncode != 0, (old, result.stdout)
        assert "Cipher is (NONE)" in result.stdout or "alert" in result.stderr, result.stderr
    result = await asyncio.to_thread(s_client, port, "-tls1_2", "-alpn", "h2,http/1.1",
                                     "-CAfile", str(pki.ca.cert))
    assert result.returncode == 0, result.stderr
    assert "ALPN protocol: http/1.1" in result.stdout
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "Protocol  : TLSv1.2" in result.stdout or "TLSv1.2" in result.stdout
    assert "ECDHE" in result.stdout and "GCM" in result.stdout
    # A TLS 1.2 client offering only non-AEAD or non-ECDHE suites is refused.
    for weak in ("AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA256"):
        result = await asyncio.to_thread(s_client, port, "-tls1_2", "-cipher", weak)
        assert result.returncode != 0, (weak, result.stdout)
    result = await asyncio.to_thread(s_client, port, "-tls1_3")
    assert result.returncode == 0, result.stderr
    assert "TLSv1.3" in result.stdout


async def test_min_version_1_3_refuses_tls_1_2(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any,
        http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki,
                                             min_version="1.3"))
    with pytest.raises(aiohttp.ClientConnectorError):
        async with http.get(https(gateway),
                            ssl=client_context(pki, version=ssl.TLSVersion.TLSv1_2)):
            pass
    headers = await echo_headers(http, https(gateway),
                                 client_context(pki, version=ssl.TLSVersion.TLSv1_3))
    assert headers["x-forwarded-proto"] == "https"


async def test_mtls_subject_passed_only_when_verified_and_spoofs_stripped(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any,
        http: aiohttp.ClientSession, key_service: KeyService) -> None:
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki, public=False,
                                             client_ca=str(pki.ca.cert),
                                             client_cert="optional"))
    _, secret, _ = await new_key(key_service)
    spoof = {SUBJECT: "CN=admin", "X-Auth-Client-Cert-Subject-Extra": "x",
             "X_Auth_Client_Cert_Subject": "CN=admin"}
    # A verified certificate: its subject, RFC 4514, and nothing of the client's.
    headers = await echo_headers(
        http, https(gateway),
        client_context(pki, cert=pki.client_cert, key=pki.client_key),
        {**api_key(secret), **spoof})
    assert headers[SUBJECT.lower()] == "O=Example,CN=billing-service"
    assert "x-auth-client-cert-subject-extra" not in headers
    assert "x_auth_client_cert_subject" not in headers
    # No certificate (optional): no subject, and the spoofed one is stripped.
    headers = await echo_headers(http, https(gateway), client_context(pki),
                                 {**api_key(secret), **spoof})
    assert SUBJECT.lower() not in headers
    assert "x_auth_client_cert_subject" not in headers
    # A certificate of another CA: no handshake, so no request at all.
    with pytest.raises(aiohttp.ClientError):
        async with http.get(https(gateway), headers=api_key(secret), ssl=client_context(
                pki, cert=pki.rogue_cert, key=pki.rogue_key)) as response:
            await response.read()
    # The client certificate does not replace the API key.
    async with http.get(https(gateway), ssl=client_context(
            pki, cert=pki.client_cert, key=pki.client_key)) as response:
        assert response.status == 401


async def test_mtls_required_refuses_a_client_without_certificate(
        redis_clean: RedisServer, upstream: TestServer, pki: Pki, start_gateway: Any,
        http: aiohttp.ClientSession) -> None:
    gateway = await start_gateway(tls_config(redis_clean.url, upstream, pki,
                                             client_ca=str(pki.ca.cert)))
    with pytest.raises(aiohttp.ClientError):
        async with http.get(https(gateway), ssl=client_context(pki)) as response:
            await response.read()
    headers = await echo_headers(
        http, https(gateway), client_context(pki, cert=pki.client_cert, key=pki.client_key))
    assert headers[SUBJECT.lower()] == "O=Example,CN=billing-service"
    assert headers["x-forwarded-proto"] == "https"


def test_config_check_reports_a_bad_certificate(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    # The key where the certificate should be, named relative to the file's directory.
    path.write_text(yaml.safe_dump({"listen": {"tls": {"cert": "server.key",
                                                       "key": "server.key"}}}))
    result = subprocess.run(gateway_command("config", "check", str(path)), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert f"gw.yaml: listen.tls.cert: cannot load the certificate {tmp_path / 'server.key'}" \
        in result.stderr
