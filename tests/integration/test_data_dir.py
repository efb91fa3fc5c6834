"""The data directory is private (issue 17, item 6): 0700, and every file in it 0600 (the
embedded store's append-only files and log, the master key, the metric files of the workers),
whatever the worker count. With `--workers 2` the metrics folder used to be made first, with
default permissions: the directory came out 0755 and the AOF files 0644."""

from __future__ import annotations

import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import GatewayProcess, write_config


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        info = path.lstat()
        if stat.S_ISSOCK(info.st_mode):
            continue  # the store's socket: redis-server sets it (unixsocketperm 700)
        found[str(path.relative_to(root))] = stat.S_IMODE(info.st_mode)
    return found


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "made-open-before"])
def test_the_data_directory_and_its_files_are_private(tmp_path: Path, workers: str,
                                                      existing: bool) -> None:
    data_dir = tmp_path / "data"
    if existing:  # left by an older version, or made by hand with the default umask
        (data_dir / "metrics").mkdir(parents=True, mode=0o755)
        data_dir.chmod(0o755)
        (data_dir / "notes.txt").write_text("x")
        (data_dir / "notes.txt").chmod(0o644)
    config_path, port, admin_port = write_config(
        tmp_path / "gateway.yaml", "embedded",
        [{"name": "open", "prefix": "/open/", "upstream": "http://127.0.0.1:9", "public": True}],
        data_dir=str(data_dir))
    gateway = GatewayProcess(config_path, port, admin_port,
                             env={"GATEWAY_ADMIN_TOKEN": "data-dir-test-token-0123456789"},
                             extra_args=("--workers", workers)).start()
    try:
        # Something for every kind of file: requests (metric files), a key (the AOF).
        for _ in range(3):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(gateway.url + "/nowhere", timeout=5)
        request = urllib.request.Request(
            gateway.admin_url + "/admin/accounts", data=b'{"name": "perm"}', method="POST",
            headers={"Authorization": "Bearer data-dir-test-token-0123456789",
                     "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 201
        found = modes(data_dir)
    finally:
        assert gateway.stop() == 0, gateway.log()
    assert any("appendonly" in name for name in found), found
    if workers == "2":
        assert any(name.startswith("metrics/") and name.endswith(".db") for name in found), found
    wrong = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if (data_dir / name).is_dir() else 0o600)}
    assert wrong == {}, f"not private: {wrong}"
    assert os.stat(data_dir).st_uid == os.getuid()
