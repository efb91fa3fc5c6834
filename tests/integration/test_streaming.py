"""Bodies stream both ways with bounded memory (SPEC §6): 200 MiB up and 200 MiB down through a
gateway running as its own process, checked by digest, with the process's peak RSS measured."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from tests.support.processes import GatewayProcess, write_config

MIB = 2**20
TRANSFER = 200 * MIB
CHUNK = 256 * 1024
# Growth allowed over the warmed-up process: far below the 200 MiB moved, so a buffered body
# (in either direction) cannot pass.
MAX_GROWTH_KIB = 64 * 1024

pytestmark = pytest.mark.slow


def _chunks(block: bytes, total: int) -> Iterator[bytes]:
    # Each chunk starts with its index, so a dropped, repeated or reordered chunk changes the
    # digest even though the rest of the block repeats.
    for index in range(total // len(block)):
        yield index.to_bytes(8, "big") + block[8:]


def _expected_digest(block: bytes, total: int) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(block, total):
        digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture
async def bulk_upstream(serve_app):  # type: ignore[no-untyped-def]
    block = os.urandom(CHUNK)

    async def upload(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"bytes": size, "sha256": digest.hexdigest(),
                                  "chunked": request.headers.get("Transfer-Encoding")})

    async def download(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for chunk in _chunks(block, int(request.query["bytes"])):
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application(client_max_size=0)
    app.router.add_post("/upload", upload)
    app.router.add_get("/download", download)
    server = await serve_app(app)
    return server, block


async def test_200_mib_up_and_down_with_bounded_memory(tmp_path, redis_server,
                                                       bulk_upstream) -> None:
    server, block = bulk_upstream
    config_path, port, admin_port = write_config(
        tmp_path / "gateway.yaml", redis_server.url,
        [{"name": "bulk", "prefix": "/bulk/", "upstream": f"http://127.0.0.1:{server.port}",
          "strip_prefix": True, "timeout": "60s", "public": True}])
    gateway = GatewayProcess(config_path, port, admin_port).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            # Warm up both directions so pools and buffers exist before the baseline.
            async with http.post(gateway.url + "/bulk/upload", data=b"x" * MIB) as response:
                assert response.status == 200
            async with http.get(gateway.url + f"/bulk/download?bytes={MIB}") as response:
                assert len(await response.read()) == MIB
            baseline = gateway.memory_kib()["VmRSS"]

            async def upload_body() -> AsyncIterator[bytes]:
                for chunk in _chunks(block, TRANSFER):
                    yield chunk

            async with http.post(gateway.url + "/bulk/upload", data=upload_body()) as response:
                assert response.status == 200
                result = await response.json()
            assert result["chunked"] == "chunked"
            assert result["bytes"] == TRANSFER
            assert result["sha256"] == _expected_digest(block, TRANSFER)

            digest = hashlib.sha256()
            received = 0
            async with http.get(gateway.url + f"/bulk/download?bytes={TRANSFER}") as response:
                assert response.status == 200
                assert response.headers.get("Transfer-Encoding") == "chunked"
                async for chunk in response.content.iter_any():
                    digest.update(chunk)
                    received += len(chunk)
            assert received == TRANSFER
            assert digest.hexdigest() == _expected_digest(block, TRANSFER)

        peak = gateway.memory_kib()["VmHWM"]
        growth = peak - baseline
        print(f"gateway RSS baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
              f"growth {growth / 1024:.1f} MiB for {2 * TRANSFER // MIB} MiB moved")
        assert growth < MAX_GROWTH_KIB
    finally:
        assert gateway.stop() == 0, gateway.log()
