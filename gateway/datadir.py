"""The data directory (GATEWAY_DATA_DIR) is private: 0700, every file in it 0600, whoever
makes it first (the embedded store, the metrics folder of `--workers N`, the master key file)
and whatever an older version or a hand-made directory left there (issue 17, item 6)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
UMASK = 0o077  # for what the gateway (and its redis-server) creates in it from then on


def private_dir(path: Path) -> Path:
    """Make `path` (and missing parents up to it) and tighten it and everything in it: dirs
    0700, files 0600. Sockets and symbolic links are left as they are. Returns `path`."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _tighten(path, DIR_MODE)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            _tighten(Path(root, name), DIR_MODE)
        for name in files:
            _tighten(Path(root, name), FILE_MODE)
    return path


def _tighten(path: Path, mode: int) -> None:
    try:
        info = path.lstat()
        if (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)) \
                and stat.S_IMODE(info.st_mode) != mode:
            path.chmod(mode)
    except FileNotFoundError:
        pass  # removed meanwhile (a metric file of a worker that ended)
    except PermissionError:
        log.warning("cannot make %s private (mode %o): not its owner", path, mode)
