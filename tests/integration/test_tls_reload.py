"""Renewed certificates on reload (issue 19, SPEC §9): served to new connections without
dropping any, and a renewed file that does not load keeps the running certificate and is
reported as a failed reload."""

from __future__ import annotations

import asyncio
import http.client
import signal
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp.test_utils import TestServer
from cryptography import x509

from gateway.config import load_config
from gateway.observability.metrics import CONFIG_RELOADS
from tests.support.processes import GatewayProcess, write_config
from tests.support.redis_server import RedisServer
from tests.support.tls import CertificateAuthority


def served_serial(port: int, ca: Path) -> int:
    """The serial number of the certificate a new connection is served (verified)."""
    context = ssl.create_default_context(cafile=str(ca))
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), 10),
                             server_hostname="localhost") as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class Loop:
    """A client sending requests without pause in a thread, each on a new connection (a new
    handshake), plus one keep-alive connection used throughout: every failure is kept."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca))
        self.failures: list[str] = []
        self.done = 0
        self.serials: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _get(self, conn: http.client.HTTPSConnection) -> None:
        conn.request("GET", "/echo/loop")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            self.failures.append(f"{response.status} {body[:200]!r}")

    def _run(self) -> None:
        kept = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                           timeout=10)
        while not self._stop.is_set():
            conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                               timeout=10)
            try:
                self._get(conn)
                assert conn.sock is not None
                der = conn.sock.getpeercert(binary_form=True)
                if der:
                    self.serials.add(x509.load_der_x509_certificate(der).serial_number)
                self._get(kept)  # the same connection all along: never dropped
                self.done += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()
        kept.close()

    async def __aenter__(self) -> Loop:
        self._thread.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Joined off the event loop: the gateway (or the upstream) serving the last request
        # runs on it.
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 30)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 30
        target = self.done + count
        while self.done < target and time.monotonic() < deadline and not self.failures:
            time.sleep(0.01)


def write_tls_config(tmp_path: Path, redis_url: str, upstream: TestServer,
                     **tls: Any) -> tuple[Path, int, int]:
    path, port, admin_port = write_config(
        tmp_path / "gateway.yaml", redis_url,
        [{"name": "echo", "prefix": "/echo/", "public": True,
          "upstream": f"http://127.0.0.1:{upstream.port}"}])
    data = yaml.safe_load(path.read_text())
    # Relative names: read from the config file's directory, whatever the current one.
    data["listen"]["tls"] = {"cert": "tls/server.pem", "key": "tls/server.key", **tls}
    path.write_text(yaml.safe_dump(data))
    return path, port, admin_port


def reloads(result: str) -> float:
    return CONFIG_RELOADS.labels(result)._value.get()  # type: ignore[attr-defined,no-any-return]


async def tls_gateway(tmp_path: Path, redis: RedisServer, upstream: TestServer,
                      start_gateway: Any) -> tuple[CertificateAuthority, Any, Any]:
    """A CA, the first certificate it issued into tmp_path/tls, and a gateway serving it."""
    ca = CertificateAuthority(tmp_path / "ca")
    (tmp_path / "tls").mkdir()
    first = ca.issue_server(tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server.key")
    path, _, _ = write_tls_config(tmp_path, redis.url, upstream)
    return ca, first, await start_gateway(load_config(path, {}))


async def test_renewed_certificate_is_served_after_reload_without_failed_requests(
        tmp_path: Path, redis_clean: RedisServer, upstream: TestServer,
        start_gateway: Any) -> None:
    ca, first, gateway = await tls_gateway(tmp_path, redis_clean, upstream, start_gateway)
    port = gateway.running.proxy_port
    assert await asyncio.to_thread(served_serial, port, ca.cert) == first.serial_number

    async with Loop(port, ca.cert) as loop:
        await asyncio.to_thread(loop.wait_for, 20)
        # Renewed as certbot does: new files written in place, then a reload.
        staged = tmp_path / "staged"
        staged.mkdir()
        renewed = ca.issue_server(staged / "server.pem", staged / "server.key")
        (staged / "server.pem").replace(tmp_path / "tls" / "server.pem")
        (staged / "server.key").replace(tmp_path / "tls" / "server.key")
        result = await gateway.running.reloader.reload()
        assert result.ok, result.message
        assert await asyncio.to_thread(served_serial, port, ca.cert) == renewed.serial_number
        await asyncio.to_thread(loop.wait_for, 20)
    assert loop.failures == []
    assert loop.serials == {first.serial_number, renewed.serial_number}


async def test_bad_renewed_file_keeps_the_running_certificate(
        tmp_path: Path, redis_clean: RedisServer, upstream: TestServer,
        start_gateway: Any) -> None:
    ca, first, gateway = await tls_gateway(tmp_path, redis_clean, upstream, start_gateway)
    port = gateway.running.proxy_port
    async with Loop(port, ca.cert) as loop:
        await asyncio.to_thread(loop.wait_for, 10)
        # A certificate whose key is not the one beside it, then a truncated certificate.
        other = ca.issue_server(tmp_path / "other.pem", tmp_path / "other.key")
        assert other.serial_number != first.serial_number
        (tmp_path / "tls" / "server.pem").write_bytes((tmp_path / "other.pem").read_bytes())
        errors = reloads("error")
        result = await gateway.running.reloader.reload()
        assert not result.ok
        assert "listen.tls.cert" in result.message and "server.pem" in result.message
        assert reloads("error") == errors + 1
        (tmp_path / "tls" / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n")
        result = await gateway.running.reloader.reload()
        assert not result.ok and "listen.tls.cert" in result.message
        await asyncio.to_thread(loop.wait_for, 10)
        assert await asyncio.to_thread(served_serial, port, ca.cert) == first.serial_number
    assert loop.failures == []


async def test_workers_serve_the_renewed_certificate_after_sighup(
        tmp_path: Path, redis_clean: RedisServer, upstream: TestServer) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    (tmp_path / "tls").mkdir()
    first = ca.issue_server(tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server.key")
    path, port, admin_port = write_tls_config(tmp_path, redis_clean.url, upstream)
    gateway = GatewayProcess(path, port, admin_port, extra_args=("--workers", "2"))
    await asyncio.to_thread(gateway.start)
    try:
        async with Loop(port, ca.cert) as loop:
            await asyncio.to_thread(loop.wait_for, 20)
            staged = tmp_path / "staged"
            staged.mkdir()
            renewed = ca.issue_server(staged / "server.pem", staged / "server.key")
            (staged / "server.pem").replace(tmp_path / "tls" / "server.pem")
            (staged / "server.key").replace(tmp_path / "tls" / "server.key")
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            seen: set[int] = set()
            # Both workers (the kernel spreads connections over them) serve the renewed one.
            while time.monotonic() < deadline:
                serials = {await asyncio.to_thread(served_serial, port, ca.cert)
                           for _ in range(20)}
                if serials == {renewed.serial_number}:
                    break
                seen |= serials
                await asyncio.sleep(0.1)
            assert serials == {renewed.serial_number}, gateway.log()
            await asyncio.to_thread(loop.wait_for, 20)
        assert loop.failures == [], gateway.log()
        assert first.serial_number in loop.serials
        assert renewed.serial_number in loop.serials
    finally:
        await asyncio.to_thread(gateway.stop)


def subject_seen(port: int, ca: Path, cert: Path, key: Path) -> str | None:
    """The client-certificate subject the upstream got, or None when the handshake failed."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(cert, key)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    try:
        conn.request("GET", "/echo/who")
        response = conn.getresponse()
        assert response.status == 200
        headers = yaml.safe_load(response.read())["headers"]  # JSON is YAML
        value = headers.get("X-Auth-Client-Cert-Subject")
        assert isinstance(value, str)
        return value
    except (ssl.SSLError, ConnectionError):
        return None
    finally:
        conn.close()


async def test_reloaded_client_ca_replaces_the_old_one(
        tmp_path: Path, redis_clean: RedisServer, upstream: TestServer,
        start_gateway: Any) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    (tmp_path / "tls").mkdir()
    ca.issue_server(tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server.key")
    old_clients = CertificateAuthority(tmp_path / "old", "old clients CA")
    new_clients = CertificateAuthority(tmp_path / "new", "new clients CA")
    old_clients.issue_client(tmp_path / "a.pem", tmp_path / "a.key", "client-a")
    new_clients.issue_client(tmp_path / "b.pem", tmp_path / "b.key", "client-b")
    (tmp_path / "tls" / "clients.pem").write_bytes(old_clients.cert.read_bytes())
    path, _, _ = write_tls_config(tmp_path, redis_clean.url, upstream,
                                  client_ca="tls/clients.pem")
    gateway = await start_gateway(load_config(path, {}))
    port = gateway.running.proxy_port
    a = (port, ca.cert, tmp_path / "a.pem", tmp_path / "a.key")
    b = (port, ca.cert, tmp_path / "b.pem", tmp_path / "b.key")
    assert await asyncio.to_thread(subject_seen, *a) == "CN=client-a"
    assert await asyncio.to_thread(subject_seen, *b) is None

    (tmp_path / "tls" / "clients.pem").write_bytes(new_clients.cert.read_bytes())
    result = await gateway.running.reloader.reload()
    assert result.ok, result.message
    assert await asyncio.to_thread(subject_seen, *b) == "CN=client-b"
    assert await asyncio.to_thread(subject_seen, *a) is None
