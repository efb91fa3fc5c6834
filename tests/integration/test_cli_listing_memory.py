"""`gateway keys list --json` streams: listing 100,000 keys takes about the memory of listing
1,000 (SPEC §8; the CLI reads the key table page by page and prints item by item)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import orjson
import pytest

from gateway.keys.model import Account, KeyRecord
from gateway.keys.store import ACCOUNT, ACCOUNT_KEYS, ACCOUNTS_INDEX, KEY, KEYS_INDEX, index_member
from tests.support.processes import gateway_command
from tests.support.redis_server import RedisServer

BATCH = 5_000
ACCOUNTS = 10
SMALL, LARGE = 1_000, 100_000
MAX_GROWTH_KIB = 32 * 1024
BASE = 1_700_000_000.0


def account_id(n: int) -> str:
    return f"acc_{n:016d}"


def key_id(n: int) -> str:
    return f"ak_{n:020d}"


def write_accounts(server: RedisServer) -> None:
    with server.client() as client, client.pipeline(transaction=False) as pipe:
        for n in range(ACCOUNTS):
            account = Account(id=account_id(n), name=f"bulk {n}", created_at=BASE)
            pipe.set(ACCOUNT + account.id, account.to_json())
            pipe.zadd(ACCOUNTS_INDEX, {index_member(account.created_at, account.id): 0})
        pipe.execute()


def write_keys(server: RedisServer, start: int, stop: int) -> None:
    """Keys start..stop-1 straight into Redis in the layout of gateway/keys/store.py, in
    pipelines of BATCH: much faster than the CLI, which is not what is measured here."""
    with server.client() as client:
        for first in range(start, stop, BATCH):
            everyone: dict[str, float] = {}
            by_account: dict[str, dict[str, float]] = {}
            with client.pipeline(transaction=False) as pipe:
                for n in range(first, min(first + BATCH, stop)):
                    key = KeyRecord(
                        id=key_id(n), type="api_key", account_id=account_id(n % ACCOUNTS),
                        scopes=("yc.ai.vision.execute", "yc.ai.translate.execute"),
                        created_at=BASE + n / 1000, expires_at=None if n % 2 else BASE * 2,
                        description=f"bulk key {n}", secret_hash=f"{n:064x}",
                        secret_tail=f"{n % 1_000_000:06d}")
                    pipe.set(KEY + key.id, key.to_json())
                    member = index_member(key.created_at, key.id)
                    everyone[member] = 0
                    by_account.setdefault(key.account_id, {})[member] = 0
                pipe.zadd(KEYS_INDEX, everyone)
                for owner, members in by_account.items():
                    pipe.zadd(ACCOUNT_KEYS + owner, members)
                pipe.execute()


def list_keys_json(server: RedisServer, expected: int) -> int:
    """Run `gateway keys list --json`, check its output line by line as it streams (never
    holding it whole) and return the child's peak resident memory in KiB."""
    env = dict(os.environ)
    env.pop("GATEWAY_CONFIG", None)
    env["GATEWAY_REDIS_URL"] = server.url
    command = gateway_command("keys", "list", "--json")
    time_binary = shutil.which("time", path="/usr/bin:/bin")
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "time.out"
        if time_binary:
            command = [time_binary, "-f", "%M", "-o", str(report), *command]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=env)
        peak_kib = [0]
        watcher = None if time_binary else _watch_vmhwm(process.pid, peak_kib)
        assert process.stdout is not None
        count = 0
        lines = iter(process.stdout)
        assert next(lines) == b"[\n"
        closed = False
        for line in lines:
            assert not closed, "output after the closing bracket"
            if line == b"]\n":
                closed = True
                continue
            text = line.rstrip(b"\n")
            if count < expected - 1:
                assert text.endswith(b","), text[-40:]
                text = text[:-1]
            item = orjson.loads(text)
            assert item["id"] == key_id(count), (item["id"], count)
            assert item["status"] in ("active", "expired")
            count += 1
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr.decode()
        assert closed, "the JSON array was not closed"
        assert count == expected
        if watcher is not None:
            watcher.join(5)
        elif report.exists():
            peak_kib[0] = int(report.read_text().strip().splitlines()[-1])
    assert peak_kib[0] > 0, "no memory figure measured"
    return peak_kib[0]


def _watch_vmhwm(pid: int, peak: list[int]) -> threading.Thread:
    def watch() -> None:
        status = Path(f"/proc/{pid}/status")
        while True:
            try:
                text = status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_listing_100k_keys_takes_about_the_memory_of_1k(redis_clean) -> None:
    write_accounts(redis_clean)
    write_keys(redis_clean, 0, SMALL)
    started = time.monotonic()
    small_kib = list_keys_json(redis_clean, SMALL)
    small_seconds = time.monotonic() - started

    write_keys(redis_clean, SMALL, LARGE)
    with redis_clean.client() as client:
        assert client.zcard(KEYS_INDEX) == LARGE
    started = time.monotonic()
    large_kib = list_keys_json(redis_clean, LARGE)
    large_seconds = time.monotonic() - started

    print(f"\nkeys list --json peak RSS: {SMALL:,} keys {small_kib / 1024:.1f} MiB "
          f"({small_seconds:.1f} s); {LARGE:,} keys {large_kib / 1024:.1f} MiB "
          f"({large_seconds:.1f} s); growth {(large_kib - small_kib) / 1024:.1f} MiB")
    assert large_kib - small_kib <= MAX_GROWTH_KIB, (small_kib, large_kib)
