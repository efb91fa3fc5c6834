"""Instructions per request of a one-worker gateway, counted by valgrind (callgrind).

wrk's req/s and CPU µs per request move by ±30 % between runs on a shared 2-core machine, so a
change of a few per cent on the request path cannot be seen in them. The number of instructions
the worker executes per request does not depend on what else runs: compare two checkouts with it.

    apt-get install -y valgrind
    .venv/bin/python -m bench.instructions                    # API key and HMAC, 1,500 each
    .venv/bin/python -m bench.instructions --kind hmac --requests 3000

It starts a Redis and the bench upstream, makes a key, runs `gateway run --workers 1` under
callgrind with instrumentation off, sends a warm-up, then counts the instructions of the
measured requests only (sent one at a time over a few keep-alive connections). The count covers
everything the worker does meanwhile: parsing, the key check, the nonce claim, forwarding, the
answer, its background tasks. Slow (valgrind runs the worker ~50x slower): a minute per kind.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.client import sign_request
from gateway.keys.limits import LimitChanges
from gateway.keys.masterkeys import MasterKeys
from gateway.keys.secrets import SecretBox
from gateway.keys.service import KeyService
from gateway.keys.store import KeyStore
from gateway.store.client import connect
from tests.support.processes import free_port, write_config
from tests.support.redis_server import RedisServer

WARM_UP = 300
CONNECTIONS = 4
PATH = "/bench/get"


async def _make_key(redis_url: str, kind: str, master_key: bytes) -> tuple[str, str]:
    client = connect(redis_url, 2.0)
    try:
        service = KeyService(KeyStore(client), secret_box=SecretBox(MasterKeys((master_key,))))
        account = await service.create_account("instructions")
        if kind == "apikey":
            key, secret = await service.create_key(account_id=account.id)
        elif kind == "apikey-limited":  # issue 20: limits set, never reached
            key, secret = await service.create_key(
                account_id=account.id,
                limits=LimitChanges(rate="1000000/s", quota="1000000000/month"))
        else:
            key, secret = await service.create_key(account_id=account.id, key_type="hmac",
                                                   expires_at=time.time() + 86_400)
        return key.id, secret
    finally:
        await client.aclose()


def _requests(kind: str, port: int, key_id: str, secret: str, count: int) -> list[bytes]:
    """`count` request heads (an HMAC one signed afresh each time: every nonce is single-use)."""
    heads = []
    for _ in range(count):
        if kind.startswith("apikey"):
            fields = {"Authorization": f"Api-Key {secret}"}
        else:
            fields = sign_request("GET", f"http://127.0.0.1:{port}{PATH}", key_id=key_id,
                                  secret=secret)
        lines = [f"GET {PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}",
                 *(f"{name}: {value}" for name, value in fields.items())]
        heads.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return heads


def _send(port: int, heads: list[bytes]) -> None:
    """One request at a time; each answer must be the upstream's 200."""
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(CONNECTIONS)]
    try:
        for index, head in enumerate(heads):
            conn = conns[index % CONNECTIONS]
            conn.sendall(head)
            answer = b""
            while not answer.endswith(b"ok\n"):
                chunk = conn.recv(65536)
                if not chunk or (answer + chunk).startswith(b"HTTP/1.1 4") \
                        or (answer + chunk).startswith(b"HTTP/1.1 5"):
                    raise SystemExit(f"not served: {(answer + chunk)[:300]!r}")
                answer += chunk
    finally:
        for conn in conns:
            conn.close()


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the gateway did not listen on {port} within {timeout:.0f} s")


def _total(out_prefix: Path) -> int:
    total = 0
    for dump in out_prefix.parent.glob(out_prefix.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


def measure(kind: str, count: int, scratch: Path) -> float:
    master_key = os.urandom(32)
    upstream_port = free_port()
    redis = RedisServer().start()
    upstream = subprocess.Popen([sys.executable, "-m", "bench.upstream", "--port",
                                 str(upstream_port)])
    gateway = None
    try:
        key_id, secret = asyncio.run(_make_key(redis.url, kind, master_key))
        config, port, _ = write_config(
            scratch / f"{kind}.yaml", redis.url,
            [{"name": "bench", "prefix": "/bench/", "scopes": [],
              "upstream": f"http://127.0.0.1:{upstream_port}"}],
            brute_force={"max_failures": 0})
        out = scratch / f"callgrind-{kind}.out"
        env = {**os.environ, "GATEWAY_MASTER_KEY": base64.b64encode(master_key).decode()}
        gateway = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={out}", sys.executable, "-m", "gateway", "run",
             "--config", str(config), "--workers", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_port(port, 120)
        heads = _requests(kind, port, key_id, secret, WARM_UP + count)
        _send(port, heads[:WARM_UP])
        control = ["callgrind_control"]
        subprocess.run([*control, "-i", "on", str(gateway.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _send(port, heads[WARM_UP:])
        subprocess.run([*control, "-i", "off", str(gateway.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([*control, "-d", str(gateway.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return _total(out) / count
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(60)
        upstream.terminate()
        upstream.wait(10)
        redis.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=("apikey", "apikey-limited", "hmac"), action="append")
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind: apt-get install -y valgrind")
    with tempfile.TemporaryDirectory(prefix="gw-instructions-") as scratch:
        for kind in args.kind or ["apikey", "hmac"]:
            per_request = measure(kind, args.requests, Path(scratch))
            print(f"{kind:7s} {per_request:,.0f} instructions per request "
                  f"({args.requests:,} requests after {WARM_UP} to warm up)")


if __name__ == "__main__":
    main()
