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

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import Config
from gateway.datadir import private_dir
from gateway.errors import GatewayError

MASTER_KEY_FILE = "master.key"
NONCE_BYTES = 12


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
