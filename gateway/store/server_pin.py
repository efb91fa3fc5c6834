"""The embedded store's server is pinned per data directory (SPEC §7; issue 18).

`<data dir>/server.json` (0600) records which server last ran the directory: family, version and
path. Before a server is started on the directory, the server found (gateway/store/server_binary
.py) is judged against that record:

- the same family, the same or a newer minor release: started (a newer one is recorded);
- Redis before 7.4 -> Valkey: started and recorded too. Valkey began as Redis 7.2.4 and reads
  the files of those versions; Redis 6.2 and 7.0 data load in Valkey 9 (tested). It is one-way:
  after Valkey has rewritten them, Redis cannot read them;
- anything else (an older release, Valkey -> Redis, Redis 7.4+ -> Valkey, whose file formats
  diverged) is refused, naming both servers and what to do. Nothing is started, so no empty
  store appears beside the old one (as when Redis 6.2, which cannot read the multi-part files
  of Redis 7, silently started a new `appendonly.aof` in the same folder).

Patch releases never change the file format, so only major.minor count.

A directory with data but no record was made by an older gateway version. What wrote it is told
from its files: `appendonlydir/` means Redis 7 or newer (or Valkey); a lone `appendonly.aof`
means Redis 6 or older; the RDB header inside (`REDIS0010`, `VALKEY080`, ...) narrows it. That
lower bound is then judged like a record, and the directory is adopted: the record is written
once the server has started on it. A guess too low is caught by the server itself, which refuses
loudly to load a file newer than it knows; it never silently starts empty beside it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError, ConfigProblem
from gateway.store.server_binary import OVERRIDE_VARIABLE, ServerBinary, ServerId

log = logging.getLogger(__name__)

RECORD_NAME = "server.json"
AOF_DIR = "appendonlydir"  # redis-server's defaults, which the embedded store keeps
AOF_FILE = "appendonly.aof"
RDB_FILE = "dump.rdb"
HEADER_BYTES = 9  # "REDIS0010", "VALKEY080"
# The first Redis whose files Valkey cannot read (RDB 12, the Redis 7.4 format).
REDIS_DIVERGED = (7, 4)


@dataclass(frozen=True)
class Verdict:
    start: bool
    upgrade: bool  # to a newer minor release, or from Redis to Valkey
    reason: str  # why, in words


# -- pure decisions ----------------------------------------------------------------------------

def judge(made_by: ServerId | None, found: ServerId) -> Verdict:
    """Whether `found` may run a data directory last run by `made_by` (None: a new one)."""
    if made_by is None:
        return Verdict(True, False, "a new store")
    old, new = made_by.version[:2], found.version[:2]
    if made_by.family == found.family:
        if new > old:
            return Verdict(True, True, f"an upgrade from {_short(made_by)}")
        if new == old:
            return Verdict(True, False, "the same server")
        return Verdict(False, False, "is older than the one that made the store: it may not "
                                     "read its files, or start an empty store beside them")
    if made_by.family == "redis" and found.family == "valkey" and old < REDIS_DIVERGED:
        return Verdict(True, True, f"an upgrade from {_short(made_by)} (Valkey reads its files; "
                                   "Redis will not read them once Valkey has rewritten them)")
    return Verdict(False, False, "is of another family: the two cannot read each other's files")


def writer_of_header(header: bytes) -> ServerId | None:
    """The oldest server that writes an RDB file starting with `header`, or None."""
    if header.startswith(b"VALKEY"):
        return ServerId("valkey", (9, 0, 0))  # VALKEY080: Valkey 9.0
    if header.startswith(b"REDIS") and header[5:9].isdigit():
        rdb = int(header[5:9])
        if rdb >= 12:
            return ServerId("redis", (7, 4, 0))
        if rdb == 11:
            return ServerId("redis", (7, 2, 0))  # also Valkey 7.2 and 8
        if rdb == 10:
            return ServerId("redis", (7, 0, 0))
        return ServerId("redis", (6, 0, 0))
    return None


def newest(ids: list[ServerId]) -> ServerId | None:
    """The server that can read all of what `ids` wrote (a Valkey if any of them is)."""
    valkeys = [each for each in ids if each.family == "valkey"]
    pool = valkeys or ids
    return max(pool, key=lambda each: each.version) if pool else None


# -- the data directory ------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    server: ServerId
    path: str


def read_record(data_dir: Path) -> Record | None:
    path = data_dir / RECORD_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        version = tuple(int(part) for part in str(data["version"]).split("."))
        if data["server"] not in ("redis", "valkey") or len(version) != 3:
            raise ValueError("unknown server or version")
        return Record(ServerId(data["server"], (version[0], version[1], version[2])),
                      str(data.get("path", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(str(path), [ConfigProblem(
            "", f"cannot tell which server made this store ({exc}); fix the file, or remove "
                "it to have the store's files examined instead")]) from None


def write_record(data_dir: Path, binary: ServerBinary) -> None:
    path = data_dir / RECORD_NAME
    text = json.dumps({"server": binary.server.family,
                       "version": ".".join(map(str, binary.server.version)),
                       "path": binary.path}, indent=2) + "\n"
    scratch = path.with_name(f".{RECORD_NAME}.{os.getpid()}")
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(scratch, path)


def detect_writer(data_dir: Path) -> tuple[ServerId, str] | None:
    """What wrote the store's files, as a lower bound, and the files that tell; None when the
    directory holds no store files."""
    aof_dir, aof, rdb = data_dir / AOF_DIR, data_dir / AOF_FILE, data_dir / RDB_FILE
    found: list[ServerId] = []
    clues: list[str] = []
    if aof_dir.is_dir():
        found.append(ServerId("redis", (7, 0, 0)))  # multi-part AOF: Redis 7.0
        clues.append(f"{AOF_DIR}/")
        files = sorted(aof_dir.iterdir())
    elif aof.is_file():
        found.append(ServerId("redis", (6, 0, 0)))
        clues.append(AOF_FILE)
        files = [aof]
    else:
        files = []
    if rdb.is_file():
        clues.append(RDB_FILE)
        files.append(rdb)
    if not clues:
        return None
    for file in files:
        writer = writer_of_header(_header(file))
        if writer is not None:
            found.append(writer)
    best = newest(found)
    assert best is not None
    return best, " and ".join(clues)


def _header(path: Path) -> bytes:
    try:
        with path.open("rb") as data:
            return data.read(HEADER_BYTES)
    except OSError:
        return b""


def check(data_dir: Path, binary: ServerBinary) -> Verdict:
    """Judge `binary` against what made `data_dir`; raise ConfigError when refused. The caller
    writes the record once the server has started."""
    record = read_record(data_dir)
    if record is not None:
        made_by: ServerId | None = record.server
        maker = f"{record.server} ({record.path or 'path unknown'}; {RECORD_NAME} says so)"
    else:
        detected = detect_writer(data_dir)
        made_by = detected[0] if detected else None
        maker = (f"{_or_newer(detected[0])} (its files, {detected[1]}, say so)" if detected
                 else "")
    verdict = judge(made_by, binary.server)
    if not verdict.start:
        assert made_by is not None
        remedy = f"run it with {_or_newer(made_by)}"
        if made_by.family == "redis" and made_by.version[:2] < REDIS_DIVERGED:
            remedy += " or with Valkey"
        raise ConfigError(str(data_dir), [ConfigProblem("", (
            f"this store was made by {maker}, but the server found is {binary.server} "
            f"({binary.path}, from {binary.origin}), which {verdict.reason}. Nothing was "
            f"started. Either {remedy} (install it, or set {OVERRIDE_VARIABLE}=/path/to/it), or "
            "move the directory away to start a new store."))])
    if verdict.upgrade:
        log.warning("the store in %s was made by %s; %s (%s) takes it over: %s", data_dir,
                    maker, binary.server, binary.path, verdict.reason)
    return verdict


def _short(server: ServerId) -> str:
    name = "Valkey" if server.family == "valkey" else "Redis"
    return f"{name} {server.version[0]}.{server.version[1]}"


def _or_newer(server: ServerId) -> str:
    return f"{_short(server)} or newer"
