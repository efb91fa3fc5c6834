"""Key material for the scenarios: bulk key tables written straight into Redis (the layout of
gateway/keys/store.py, records of gateway/keys/model.py, as tests/integration/
test_cli_listing_memory.py does), well-formed unknown keys, and pools of pre-signed requests.
"""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import redis

from gateway.auth import apikey
from gateway.client import sign_request
from gateway.keys.model import API_KEY, BASE62, Account
from gateway.keys.model import KeyRecord as KeyRecordModel
from gateway.keys.store import (
    ACCOUNT,
    ACCOUNT_KEYS,
    ACCOUNTS_INDEX,
    KEY,
    KEYS_INDEX,
    SECRET,
    index_member,
)

BATCH = 5_000
BASE = 1_700_000_000.0
SCOPES = ("yc.ai.vision.execute", "yc.ai.translate.execute")
BULK_ACCOUNT = "acc_bench0000000000"
_rng = random.Random()


def fast_secret() -> str:
    """A well-formed API key secret (prefix, base62, CRC32 checksum), from a fast non-crypto
    generator: fine for benchmark keys, never for real ones."""
    body = "".join(_rng.choices(BASE62, k=apikey.RANDOM_LENGTH))
    return apikey.PREFIX + body + apikey._checksum(body)


def write_account(client: redis.Redis) -> None:
    account = Account(id=BULK_ACCOUNT, name="bench", created_at=BASE)
    client.set(ACCOUNT + account.id, account.to_json())
    client.zadd(ACCOUNTS_INDEX, {index_member(account.created_at, account.id): 0})


def write_keys(client: redis.Redis, total: int, secrets_every: int) -> list[str]:
    """Keys 0..total-1 of one account; every `secrets_every`-th gets a real secret (returned),
    the others a made-up hash nobody can present. Pipelined in batches of BATCH."""
    secrets: list[str] = []
    for first in range(0, total, BATCH):
        members: dict[str, float] = {}
        with client.pipeline(transaction=False) as pipe:
            for n in range(first, min(first + BATCH, total)):
                if n % secrets_every == 0:
                    secret = fast_secret()
                    secrets.append(secret)
                    secret_hash, tail = apikey.hash_secret(secret), apikey.tail(secret)
                else:
                    secret_hash, tail = f"{n:064x}", f"{n % 1_000_000:06d}"
                key = KeyRecordModel(
                    id=f"ak_{n:020d}", type=API_KEY, account_id=BULK_ACCOUNT, scopes=SCOPES,
                    created_at=BASE + n / 1000, description=f"bench key {n}",
                    secret_hash=secret_hash, secret_tail=tail)
                pipe.set(KEY + key.id, key.to_json())
                pipe.set(SECRET + secret_hash, key.id)
                members[index_member(key.created_at, key.id)] = 0
            pipe.zadd(KEYS_INDEX, members)
            pipe.zadd(ACCOUNT_KEYS + BULK_ACCOUNT, members)
            pipe.execute()
    return secrets


def load_table(client: redis.Redis, total: int, presented: int) -> list[str]:
    """A key table of `total` keys of which `presented` (spread evenly) have known secrets."""
    write_account(client)
    return write_keys(client, total, max(1, total // presented))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# -- pre-signed requests ------------------------------------------------------------------------

def _sign_chunk(args: tuple[str, str, str, str, bytes | None, int, int]) -> list[str]:
    method, url, key_id, secret, body, created, count = args
    lines = []
    prefix = os.urandom(6).hex()
    for n in range(count):
        headers = sign_request(method, url, key_id=key_id, secret=secret, body=body,
                               created=created, nonce=f"{prefix}{n:08x}")
        lines.append(f"{headers['Signature-Input']}\t{headers['Signature']}")
    return lines


def signed_pool(path: Path, count: int, *, method: str, url: str, key_id: str, secret: str,
                body: bytes | None = None, processes: int = 2) -> Path:
    """`count` requests signed now with distinct nonces (each single-use: the gateway keeps
    every nonce for the clock-skew window). `created` is now, so they stay valid for
    `hmac.clock_skew` (300 s by default): sign just before the run that spends them."""
    created = int(time.time())
    share = -(-count // processes)
    jobs = [(method, url, key_id, secret, body, created, share) for _ in range(processes)]
    with ProcessPoolExecutor(processes) as pool:
        chunks = list(pool.map(_sign_chunk, jobs))
    return write_lines(path, [line for chunk in chunks for line in chunk])
