"""Bulk import speed (issue 19): `gateway keys import FILE` end to end, as an operator runs it
(the CLI process: read, check every line, hash, write), into a fresh local Redis.

    PYTHONPATH=. .venv/bin/python bench/import_keys.py --keys 100000 [--tcp] [--hashed]

Prints keys/s of the first run (all created) and of a second run of the same file (all
unchanged).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from tests.support.processes import gateway_command
from tests.support.redis_server import RedisServer


def write_file(path: Path, count: int, hashed: bool) -> None:
    with path.open("wb") as out:
        for i in range(count):
            row: dict[str, object] = {"account": f"customer-{i % 1000}", "scopes": ["a.b"],
                                      "expires_at": "2099-01-01T00:00:00Z",
                                      "description": "imported"}
            secret = f"legacy-key-{i:012d}"
            if hashed:
                import hashlib
                row["secret_sha256"] = hashlib.sha256(secret.encode()).hexdigest()
            else:
                row["secret"] = secret
            out.write(orjson.dumps(row) + b"\n")


def run(url: str, path: Path) -> tuple[float, dict[str, object]]:
    env = {**os.environ, "GATEWAY_REDIS_URL": url}
    env.pop("GATEWAY_CONFIG", None)
    start = time.perf_counter()
    done = subprocess.run(gateway_command("keys", "import", str(path), "--json"),
                          capture_output=True, env=env, timeout=3600, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(done.stderr.decode())
    return elapsed, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--tcp", action="store_true", help="TCP instead of the unix socket")
    parser.add_argument("--hashed", action="store_true", help="secret_sha256 lines")
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "keys.jsonl"
            write_file(path, args.keys, args.hashed)
            url = server.tcp_url if args.tcp else server.url
            for label in ("first run (created)", "second run (unchanged)"):
                elapsed, report = run(url, path)
                print(f"{label}: {args.keys} keys in {elapsed:.1f} s = "
                      f"{args.keys / elapsed:,.0f} keys/s  {report | {'conflicts': '...'}}")
            with server.client() as client:
                info = client.info("memory")
                print(f"redis used_memory: {info['used_memory_human']}")
    finally:
        server.close()


if __name__ == "__main__":
    main()
