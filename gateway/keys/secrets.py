"""HMAC secrets at rest (SPEC §1): AES-256-GCM under the master key.

The master key comes from `GATEWAY_MASTER_KEY` (32 random bytes, base64), or, with the embedded
store, from a key file generated on first use in the data directory with 0600 permissions. The
key id is bound into each ciphertext as associated data, so a ciphertext copied onto another key
record does not decrypt.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import Config
from gateway.datadir import private_dir
from gateway.errors import GatewayError, StoreError

if TYPE_CHECKING:
    from gateway.keys.store import KeyStore

MASTER_KEY_FILE = "master.key"
NONCE_BYTES = 12
CANARIES = 3  # stored HMAC secrets the master key is tried on


class MasterKeyError(GatewayError):
    """No master key where one is needed, or one that does not open the stored secrets."""


def load_master_key(config: Config, *, create: bool = False) -> bytes | None:
    """The configured master key; with the embedded store, the data directory's key file
    (made when `create` and absent). None when there is none."""
    if config.master_key is not None:
        return config.master_key
    if config.redis.url != "embedded":
        return None
    path = Path(config.data_dir) / MASTER_KEY_FILE
    if path.exists():
        key = base64.b64decode(path.read_bytes().strip())
        if len(key) != 32:
            raise MasterKeyError(f"{path} does not hold a 32-byte key")
        return key
    if not create:
        return None
    private_dir(path.parent)
    key = AESGCM.generate_key(bit_length=256)
    # O_EXCL: two processes creating it at once must not end up with two different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return load_master_key(config)
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(key) + b"\n")
    return key


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(master_key)

    def seal(self, key_id: str, secret: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), key_id.encode("ascii"))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, key_id: str, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                       key_id.encode("ascii"))
        except InvalidTag:
            raise MasterKeyError(f"the secret of key {key_id} does not decrypt: wrong master "
                                 "key?") from None
        return plain.decode("ascii")


async def master_key_problem(box: SecretBox | None, store: KeyStore) -> str | None:
    """Why signed requests cannot be checked with this master key (`box`), in plain words; None
    when nothing is wrong (or the store cannot tell now). The canaries are stored secrets: a few
    HMAC keys, chosen at random, must decrypt."""
    try:
        if box is None:
            count = await store.hmac_key_count()
            if not count:
                return None
            return (f"the key store holds {count} HMAC key(s) but no master key is configured: "
                    "set GATEWAY_MASTER_KEY (signed requests get 503)")
        for key_id in await store.some_hmac_key_ids(CANARIES):
            key = await store.get_key(key_id)
            if key is None or "secret" not in key.extra:
                continue
            try:
                box.open(key.id, key.extra["secret"])
            except (MasterKeyError, ValueError):
                return (f"the master key does not decrypt the secret of HMAC key {key.id}: it is "
                        "not the key the stored secrets were made with (signed requests get "
                        "503); start with the right GATEWAY_MASTER_KEY or master.key")
    except StoreError:
        return None
    return None
