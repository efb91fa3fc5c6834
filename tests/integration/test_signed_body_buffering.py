"""Signed bodies and memory (issue 17, item 2): the nonce is claimed before a signed body is
read, so a replayed request costs the gateway no buffering; and the bytes a worker buffers for
signed bodies, across all its requests, stay under `hmac.max_buffered_bytes` (past it,
503 `server_busy` with Retry-After). Real gateway processes, real sockets, a real Redis."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import replace
from typing import Any

import orjson
import pytest

from gateway.client import sign_request
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.conftest import make_config
from tests.support.processes import GatewayProcess, write_config
from tests.support.redis_server import RedisServer

MIB = 2**20
MASTER_KEY = os.urandom(32)
MASTER_ENV = {"GATEWAY_MASTER_KEY": base64.b64encode(MASTER_KEY).decode()}
REPLAYS = 300
BODY = 1 * MIB
# Growth allowed over the warmed-up worker while the replays are answered: buffering each
# replay's body (the old order: body read, then nonce claimed) takes REPLAYS x BODY = 300 MiB.
MAX_GROWTH_KIB = 32 * 1024


async def _hmac_key(redis_url: str) -> tuple[str, str]:
    redis = connect(redis_url, 2.0)
    try:
        service = KeyService(KeyStore(redis), secret_box=SecretBox(MASTER_KEY))
        account = await service.create_account("signer")
        key, secret = await service.create_key(account_id=account.id, key_type="hmac",
                                                expires_at=time.time() + 3600)
        return key.id, secret
    finally:
        await redis.aclose()


def _signed_post(port: int, path: str, key_id: str, secret: str, body: bytes,
                 **options: Any) -> bytes:
    url = f"http://127.0.0.1:{port}{path}"
    headers = sign_request("POST", url, key_id=key_id, secret=secret, body=body, **options)
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             f"Content-Length: {len(body)}", "Content-Type: application/octet-stream",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(fields.get("content-length", "0")))
    return int(status_line.split()[1]), fields, body


async def _send(port: int, head: bytes, body: bytes,
                hold: asyncio.Event | None = None) -> tuple[int, dict[str, str], bytes]:
    """Head and body on a connection of its own; with `hold`, the body's last byte waits for
    it (the gateway is then holding the rest)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        if hold is None:
            writer.write(body)
        else:
            writer.write(body[:-1])
        await writer.drain()
        if hold is not None:
            answer = asyncio.ensure_future(_read_answer(reader))
            done, _ = await asyncio.wait({answer, asyncio.ensure_future(hold.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if answer in done:
                return answer.result()
            writer.write(body[-1:])
            await writer.drain()
            return await asyncio.wait_for(answer, 10)
        return await asyncio.wait_for(_read_answer(reader), 60)
    finally:
        writer.close()


@pytest.mark.slow
async def test_a_signed_post_replayed_on_300_connections_leaves_memory_flat(
        tmp_path, redis_clean: RedisServer, upstream) -> None:  # type: ignore[no-untyped-def]
    key_id, secret = await _hmac_key(redis_clean.url)
    config_path, port, admin_port = write_config(
        tmp_path / "gateway.yaml", redis_clean.url,
        [{"name": "vision", "prefix": "/vision/",
          "upstream": f"http://127.0.0.1:{upstream.port}"}])
    gateway = GatewayProcess(config_path, port, admin_port, env=MASTER_ENV).start()
    try:
        body = os.urandom(BODY)
        # Warm-up: the key is cached, the connections to Redis and the upstream exist, and one
        # body of this size has been buffered and forwarded.
        warm = _signed_post(port, "/vision/warm", key_id, secret, body)
        status, _, answer = await _send(port, warm, body)
        assert status == 200, answer
        captured = _signed_post(port, "/vision/upload", key_id, secret, body)
        status, _, answer = await _send(port, captured, body)
        assert status == 200, answer
        baseline = gateway.memory_kib()["VmRSS"]

        # The captured head, replayed (with its body) on REPLAYS connections at once.
        answers = await asyncio.gather(*(_send(port, captured, body) for _ in range(REPLAYS)))
        peak = gateway.memory_kib()["VmHWM"]
        codes = [(status, orjson.loads(text)["error"]["code"]) for status, _, text in answers]
        assert codes == [(401, "replayed_request")] * REPLAYS
        growth = peak - baseline
        print(f"worker RSS baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
              f"over {REPLAYS} replays of a {BODY // MIB} MiB body")
        assert growth < MAX_GROWTH_KIB, f"grew by {growth / 1024:.1f} MiB"
    finally:
        assert gateway.stop() == 0, gateway.log()


async def test_signed_bodies_held_at_once_are_capped_per_worker(
        redis_clean: RedisServer, upstream, start_gateway) -> None:  # type: ignore[no-untyped-def]
    key_id, secret = await _hmac_key(redis_clean.url)
    config = make_config(
        redis_clean.url,
        [{"name": "vision", "prefix": "/vision/",
          "upstream": f"http://127.0.0.1:{upstream.port}"}],
        hmac={"max_body_bytes": "1MiB", "max_buffered_bytes": "2MiB"})
    config = replace(config, master_key=MASTER_KEY)
    gateway = await start_gateway(config)
    port = gateway.running.proxy_port
    body = os.urandom(MIB)

    def post(name: str) -> bytes:
        return _signed_post(port, f"/vision/{name}", key_id, secret, body)

    # Two bodies of 1 MiB held by the gateway (their last byte not sent yet): 2 MiB buffered.
    hold = asyncio.Event()
    held = [asyncio.ensure_future(_send(port, post(f"held-{i}"), body, hold)) for i in range(2)]
    authenticator = gateway.running.handler.authenticator
    for _ in range(500):
        if authenticator.buffered == 2 * MIB:
            break
        await asyncio.sleep(0.01)
    assert authenticator.buffered == 2 * MIB
    status, fields, answer = await _send(port, post("third"), body)
    assert status == 503, answer
    assert orjson.loads(answer)["error"]["code"] == "server_busy"
    assert fields["retry-after"] == "1"
    # A chunked body counts as it arrives, and is refused the same way.
    small = b"x" * 100
    head = _signed_post(port, "/vision/chunked", key_id, secret, small).replace(
        b"Content-Length: 100", b"Transfer-Encoding: chunked")
    status, fields, answer = await _send(port, head, b"64\r\n" + small + b"\r\n0\r\n\r\n")
    assert status == 503 and orjson.loads(answer)["error"]["code"] == "server_busy", answer
    assert fields["retry-after"] == "1"
    assert authenticator.buffered == 2 * MIB
    hold.set()
    assert [status for status, _, _ in await asyncio.gather(*held)] == [200, 200]
    assert authenticator.buffered == 0  # released once the requests ended
    status, _, answer = await _send(port, post("fourth"), body)
    assert status == 200, answer
    assert authenticator.buffered == 0
