"""Where the data directory is: found the way `git` finds a repository (issue 18, item 4).

The data directory holds the embedded store (its redis-server's files and socket) and the
master.key of its HMAC secrets. Every command, `gateway run` included, takes the first of:

1. GATEWAY_DATA_DIR, relative to the current directory (as any path in a variable);
2. `data_dir` of the config file (--config, else GATEWAY_CONFIG), relative to the directory
   of that file: a config names the same store from wherever it is used;
3. the nearest `.gateway` directory in the current directory or one above it, up to the
   filesystem root, as git looks for `.git`: a command anywhere in a project finds its store;
4. `.gateway` in the current directory, which does not exist yet: a new store. `gateway run`
   creates it; the management commands ask first (gateway/cli/common.py).

The path is made absolute here, once, so a reload or a worker reads it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA_DIR_NAME = ".gateway"

# How the data directory was chosen (Config.data_dir_origin), by the rules above.
FROM_ENV = "env"
FROM_FILE = "file"
FOUND = "found"
NEW = "new"


@dataclass(frozen=True, slots=True)
class DataDirChoice:
    path: Path  # absolute
    origin: str  # FROM_ENV, FROM_FILE, FOUND or NEW


def find_data_dir(start: Path) -> Path | None:
    """The nearest `.gateway` directory in `start` (absolute) or a directory above it."""
    for folder in (start, *start.parents):
        candidate = folder / DATA_DIR_NAME
        try:
            if candidate.is_dir():
                return candidate
        except OSError:  # a folder we may not look into: as if it held none
            continue
    return None


def choose_data_dir(env_value: str | None, file_value: str | None, config_file: Path | None,
                    cwd: Path) -> DataDirChoice:
    """Apply the rules of this module's docstring. `env_value` is GATEWAY_DATA_DIR,
    `file_value` the config's `data_dir` as written, `config_file` the file's path as given
    (relative to `cwd`), `cwd` the absolute current directory."""
    if env_value:
        return DataDirChoice(cwd / env_value, FROM_ENV)
    if file_value is not None and config_file is not None:
        # The file's directory as named, not after resolving symbolic links: a config mounted
        # through a link (a Kubernetes ConfigMap's `..data/`) means the folder it is seen in.
        return DataDirChoice(cwd / config_file.parent / file_value, FROM_FILE)
    found = find_data_dir(cwd)
    if found is not None:
        return DataDirChoice(found, FOUND)
    return DataDirChoice(cwd / DATA_DIR_NAME, NEW)
