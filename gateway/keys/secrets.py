"""HMAC secrets at rest (SPEC §1): AES-256-GCM under the master keys (masterkeys.py).

A sealed secret is `<master key id>:<base64 of nonce, ciphertext and tag>`: the id says which
master key opens it, so a gateway holding several keys tries one. A secret sealed before master
keys had ids is the base64 part alone and is opened by trying each key in turn, newest first;
`gateway master-key reencrypt` gives it an id. The HMAC key's id is bound into each
ciphertext as associated data, so a ciphertext copied onto another key record does not decrypt.

Keys read from a key file follow the file: the box re-reads it when it meets a secret under a
key it does not hold, and before sealing, if the file changed since (a stat, no read). So a key
added to the file is used by running gateways without a restart or reload, before any secret
is re-encrypted under it.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import Config
from gateway.datadir import private_dir
from gateway.errors import StoreError
from gateway.keys.masterkeys import (
    ORIGIN_DATA_DIR,
    MasterKeyError,
    MasterKeys,
    create_key_file,
    file_state,
    master_key_id,
    read_key_file,
)

if TYPE_CHECKING:
    from gateway.keys.store import KeyStore

__all__ = ["CANARIES", "MASTER_KEY_FILE", "MasterKeyError", "MasterKeys", "SecretBox",
           "load_master_key", "master_key_problem", "sealed_under"]

log = logging.getLogger(__name__)

MASTER_KEY_FILE = "master.key"
NONCE_BYTES = 12
TAG_BYTES = 16
CANARIES = 3  # stored HMAC secrets the master key is tried on


def load_master_key(config: Config, *, create: bool = False) -> MasterKeys | None:
    """The configured master keys; with the embedded store and none configured, the data
    directory's key file (made when `create` and absent). None when there are none."""
    if config.master_key is not None:
        return config.master_key
    if config.redis.url != "embedded":
        return None
    path = Path(config.data_dir) / MASTER_KEY_FILE
    if path.exists():
        return read_key_file(path, ORIGIN_DATA_DIR)
    if not create:
        return None
    private_dir(path.parent)
    return create_key_file(path)


def sealed_under(sealed: str) -> str | None:
    """The id of the master key a sealed secret names; None for one sealed before ids."""
    ident, separator, _ = sealed.partition(":")
    return ident if separator else None


class SecretBox:
    def __init__(self, keys: MasterKeys | bytes) -> None:
        self._use(keys if isinstance(keys, MasterKeys) else MasterKeys((keys,)))
        # Unknown: the file may have changed since the keys were read (by another process,
        # as a supervisor reads them for its workers), so the first refresh reads it again.
        self._state: tuple[int, int, int] | None = None

    @property
    def keys(self) -> MasterKeys:
        return self._keys

    @property
    def newest(self) -> str:
        """The id of the master key that seals."""
        return self._newest

    def _use(self, keys: MasterKeys) -> None:
        self._keys = keys
        self._aeads = {master_key_id(k): AESGCM(k) for k in keys.keys}  # newest first
        self._newest = keys.ids[0]

    def refresh(self) -> bool:
        """Re-read the key file the keys came from, if it changed since it was read. A file
        that no longer reads (half edited by hand) is said in the log, and the keys held stay.
        True when the keys changed."""
        if self._keys.file is None:
            return False
        path = Path(self._keys.file)
        state = file_state(path)
        if state is None or state == self._state:
            return False
        self._state = state  # before reading: a change made meanwhile is seen next time
        try:
            keys = read_key_file(path, self._keys.origin)
        except MasterKeyError as exc:
            log.error("%s; keeping master keys %s", exc, ", ".join(self._keys.ids))
            return False
        if keys.keys == self._keys.keys:
            return False
        log.info("master keys re-read from %s: %s (the first encrypts)", path,
                 ", ".join(keys.ids))
        self._use(keys)
        return True

    def seal(self, key_id: str, secret: str) -> str:
        self.refresh()
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[self._newest].encrypt(nonce, secret.encode("ascii"),
                                                   key_id.encode("ascii"))
        return f"{self._newest}:{base64.b64encode(nonce + sealed).decode('ascii')}"

    def open(self, key_id: str, sealed: str) -> str:
        return self.open_with(key_id, sealed)[0]

    def open_with(self, key_id: str, sealed: str) -> tuple[str, str]:
        """The secret, and the id of the master key that opened it."""
        ident = sealed_under(sealed)
        try:
            raw = base64.b64decode(sealed.partition(":")[2] if ident else sealed, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise MasterKeyError(f"the stored secret of HMAC key {key_id} is damaged: not a "
                                 "sealed secret")
        if ident is not None and ident not in self._aeads:
            self.refresh()  # a key added to the file since it was read?
        if ident is None:
            tried = list(self._aeads)
        elif ident in self._aeads:
            tried = [ident]
        else:
            raise MasterKeyError(
                f"the secret of HMAC key {key_id} does not decrypt: it is sealed under master "
                f"key {ident}, which is not among the master keys of {self._keys.source} "
                f"({', '.join(self._keys.ids)}); add it there (README, Rotating the master key)")
        for candidate in tried:
            try:
                plain = self._aeads[candidate].decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:],
                                                       key_id.encode("ascii"))
            except InvalidTag:
                continue
            return plain.decode("ascii"), candidate
        raise MasterKeyError(f"the secret of HMAC key {key_id} does not decrypt with master "
                             f"key {', '.join(tried)} ({self._keys.source}): wrong master key?")


async def master_key_problem(box: SecretBox | None, store: KeyStore) -> str | None:
    """Why signed requests cannot be checked with these master keys (`box`), in plain words;
    None when nothing is wrong (or the store cannot tell now). The canaries are stored
    secrets: a few HMAC keys, chosen at random, must decrypt."""
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
            except MasterKeyError as exc:
                return (f"the master key does not decrypt the secret of HMAC key {key.id} "
                        f"(signed requests get 503): {exc}")
    except StoreError:
        return None
    return None
