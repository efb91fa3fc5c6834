"""The master keys that encrypt HMAC secrets at rest (SPEC §1), and where they come from.

Several keys may be configured, newest first: the first encrypts, any of them decrypts, so the
master key can be rotated without reissuing a single HMAC key (README, "Rotating the master
key"). A key is known by its id, the first 8 hex digits of its SHA-256, which every secret
sealed under it carries (see secrets.py).

Where the keys come from, the first found:

    GATEWAY_MASTER_KEY        the keys, comma-separated (read once, at start)
    GATEWAY_MASTER_KEY_FILE   a key file (re-read by running gateways when it changes)
    <data dir>/master.key     the embedded store's key file: made when the store first starts,
                              changed by `gateway master-key rotate` and `remove`

A key file holds one key a line (32 random bytes, base64); blank lines and `#` comments are
ignored. A file written by a gateway before key ids (one key, one line) reads as it is.

Pure standard library: gateway/config reads the first two sources through this module.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError

KEY_BYTES = 32
KEY_ID_DIGITS = 8  # hex digits of SHA-256: 32 bits, for telling apart the few keys configured

ORIGIN_ENV = "env"  # GATEWAY_MASTER_KEY
ORIGIN_FILE = "file"  # GATEWAY_MASTER_KEY_FILE
ORIGIN_DATA_DIR = "data-dir"  # the embedded store's master.key

_FILE_HEADER = (
    "# Master keys of the HMAC secrets, newest first: the first encrypts, any decrypts.\n"
    "# Changed by `gateway master-key rotate` and `gateway master-key remove`; see the README,\n"
    "# \"Rotating the master key\". Running gateways re-read this file when it changes.\n"
)


class MasterKeyError(GatewayError):
    """No master key where one is needed, one that does not open a stored secret, or a key
    file that cannot be read or changed."""


def master_key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:KEY_ID_DIGITS]


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def parse_key(text: str) -> bytes:
    """One key: 32 bytes in base64, standard or URL-safe alphabet, padding optional."""
    text = text.strip()
    if not text:
        raise ValueError("is empty")
    try:
        key = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4),
                               validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"must decode to {KEY_BYTES} bytes, got {len(key)}")
    return key


def _parse_all(items: Iterable[tuple[str, str]]) -> tuple[bytes, ...]:
    """Keys from (where, text) pairs, `where` naming each in an error ("line 3: ...")."""
    keys: list[bytes] = []
    seen: dict[str, str] = {}
    for where, text in items:
        prefix = f"{where}: " if where else ""
        try:
            key = parse_key(text)
        except ValueError as exc:
            raise ValueError(f"{prefix}{exc}") from None
        ident = master_key_id(key)
        if ident in seen:
            raise ValueError(f"{prefix}repeats the key of {seen[ident]} (key id {ident})")
        seen[ident] = where
        keys.append(key)
    if not keys:
        raise ValueError("holds no key")
    return tuple(keys)


def parse_key_list(text: str) -> tuple[bytes, ...]:
    """GATEWAY_MASTER_KEY: one key, or several separated by commas, newest first."""
    entries = text.split(",")
    if len(entries) == 1:
        return _parse_all([("", text)])
    return _parse_all((f"key {n} of {len(entries)}", entry)
                      for n, entry in enumerate(entries, 1))


def parse_key_file(text: str) -> tuple[bytes, ...]:
    """A key file: one key a line, newest first; blank lines and `#` comments ignored (`#` is
    not a base64 character, so a comment may follow a key on its line)."""
    return _parse_all((f"line {n}", line.split("#", 1)[0])
                      for n, line in enumerate(text.splitlines(), 1)
                      if line.split("#", 1)[0].strip())


@dataclass(frozen=True, slots=True, repr=False)
class MasterKeys:
    """The configured master keys, newest (the one that encrypts) first, and their source.
    `file` is the key file they were read from, None for GATEWAY_MASTER_KEY."""

    keys: tuple[bytes, ...]
    origin: str = ORIGIN_ENV
    file: str | None = None

    def __post_init__(self) -> None:
        if not self.keys or any(len(k) != KEY_BYTES for k in self.keys):
            raise ValueError(f"master keys are one or more {KEY_BYTES}-byte keys")

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(master_key_id(k) for k in self.keys)

    @property
    def source(self) -> str:
        """Where they come from, as an operator would look for them."""
        if self.origin == ORIGIN_FILE:
            return f"GATEWAY_MASTER_KEY_FILE ({self.file})"
        if self.origin == ORIGIN_DATA_DIR:
            return str(self.file)
        return "GATEWAY_MASTER_KEY"

    def __repr__(self) -> str:  # never the keys themselves
        return f"MasterKeys({', '.join(self.ids)} from {self.source})"


# -- key files ---------------------------------------------------------------------------------

def file_state(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced or rewritten; None when it is not there."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


def read_key_file(path: Path, origin: str) -> MasterKeys:
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise MasterKeyError(f"cannot read the master key file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise MasterKeyError(f"{path}: not a master key file (not ASCII text)") from None
    try:
        return MasterKeys(parse_key_file(text), origin, str(path))
    except ValueError as exc:
        raise MasterKeyError(f"{path}: {exc}") from None


def create_key_file(path: Path) -> MasterKeys:
    """A new key file holding one new key (in the one-line form every gateway version reads);
    the existing one when another process made it first."""
    key = new_key()
    # O_EXCL: two processes creating it at once must not end up with two different keys.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_key_file(path, ORIGIN_DATA_DIR)
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(key) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return MasterKeys((key,), ORIGIN_DATA_DIR, str(path))


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One change of the key file at a time. The lock is a file of its own: the key file is
    replaced (renamed over), so a lock held on it would guard a file no longer in use."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_key_file(path: Path, keys: Sequence[bytes]) -> None:
    """Replace the file at once (write aside, fsync, rename): a gateway re-reading it sees
    the old keys or the new ones, never a file half written."""
    lines = [f"{base64.b64encode(k).decode('ascii')}  # key id {master_key_id(k)}\n"
             for k in keys]
    fd, temporary = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(_FILE_HEADER + "".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def add_key_to_file(path: Path, origin: str) -> MasterKeys:
    """Put a new key first in the key file (it encrypts from then on); the others stay."""
    with _changing(path):
        current = read_key_file(path, origin)
        _write_key_file(path, (new_key(), *current.keys))
        return read_key_file(path, origin)


def remove_key_from_file(path: Path, origin: str, ident: str) -> MasterKeys:
    """Take the key `ident` out of the key file; never the first (it encrypts)."""
    with _changing(path):
        current = read_key_file(path, origin)
        if ident not in current.ids:
            raise MasterKeyError(f"{path} holds no master key {ident} (it holds "
                                 f"{', '.join(current.ids)})")
        if ident == current.ids[0]:
            raise MasterKeyError(f"master key {ident} is the newest, the one that encrypts: "
                                 "rotate to a new key first")
        _write_key_file(path, [k for k in current.keys if master_key_id(k) != ident])
        return read_key_file(path, origin)


@contextlib.contextmanager
def _changing(path: Path) -> Iterator[None]:
    """Locked, and a file that cannot be changed (a read-only mount) said in plain words."""
    try:
        with _locked(path):
            yield
    except OSError as exc:
        raise MasterKeyError(f"cannot change the master key file {path}: "
                             f"{exc.strerror or exc}") from None
