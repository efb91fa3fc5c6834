"""Tables of cases for gateway.discovery (issue 18, item 4): where the data directory is, found
as git finds a repository, and load_config placing it; on real directory trees in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.discovery import (
    DATA_DIR_NAME,
    FOUND,
    FROM_ENV,
    FROM_FILE,
    NEW,
    choose_data_dir,
    find_data_dir,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty tree: nothing above it may hold a `.gateway`, or every "none found" case would
    find that one."""
    above = find_data_dir(tmp_path)
    assert above is None, f"{above} exists above the test's directory: remove it"
    return tmp_path


def make(root: Path, dirs: tuple[str, ...], files: tuple[str, ...] = ()) -> None:
    for name in dirs:
        (root / name).mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("")


# -- the search upward ---------------------------------------------------------------------------

@pytest.mark.parametrize(("dirs", "files", "start", "expected"), [
    # In the directory itself.
    ((".gateway",), (), ".", ".gateway"),
    # From deep below, as git finds .git from a subdirectory.
    ((".gateway", "a/b/c"), (), "a/b/c", ".gateway"),
    # The nearest one wins.
    ((".gateway", "a/.gateway", "a/b/c"), (), "a/b/c", "a/.gateway"),
    ((".gateway", "a/.gateway", "a/b/c/.gateway"), (), "a/b/c", "a/b/c/.gateway"),
    # One in a sibling or below does not count.
    (("a/.gateway", "b/c"), (), "b/c", None),
    (("a/b/.gateway",), (), "a", None),
    # A file of that name is not a store: the search goes on above it.
    ((".gateway", "a/b"), ("a/.gateway",), "a/b", ".gateway"),
    (("a",), ("a/.gateway",), "a", None),
    # Other names are not it.
    (("gateway", ".gateway.old", "a"), (), "a", None),
    # Nothing anywhere up to the root.
    (("a/b/c",), (), "a/b/c", None),
])
def test_find_data_dir(root: Path, dirs: tuple[str, ...], files: tuple[str, ...], start: str,
                       expected: str | None) -> None:
    make(root, dirs, files)
    found = find_data_dir(root / start)
    assert found == (None if expected is None else root / expected)


def test_find_data_dir_takes_a_linked_data_directory(root: Path) -> None:
    make(root, ("store", "project/a"))
    (root / "project" / DATA_DIR_NAME).symlink_to(root / "store")
    assert find_data_dir(root / "project" / "a") == root / "project" / DATA_DIR_NAME


# -- the order of the rules ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("dirs", "env_value", "file_value", "config_file", "cwd", "expected", "origin"), [
        # GATEWAY_DATA_DIR first, relative to the current directory, whatever else there is.
        ((".gateway", "w"), "data", ".gateway", "conf/gw.yaml", "w", "w/data", FROM_ENV),
        (("w",), "../elsewhere", None, None, "w", "w/../elsewhere", FROM_ENV),
        (("w",), "{root}/abs", None, None, "w", "abs", FROM_ENV),
        # The config's data_dir, relative to the config file's directory, not the current one.
        (("conf", "w/.gateway"), None, ".gateway", "{root}/conf/gw.yaml", "w", "conf/.gateway",
         FROM_FILE),
        (("conf", "w"), None, "store", "../conf/gw.yaml", "w", "w/../conf/store", FROM_FILE),
        (("conf",), None, "../shared", "conf/gw.yaml", ".", "conf/../shared", FROM_FILE),
        (("w",), None, ".gateway", "gw.yaml", "w", "w/.gateway", FROM_FILE),
        (("conf", "w"), None, "{root}/abs", "conf/gw.yaml", "w", "abs", FROM_FILE),
        # Neither: the nearest .gateway from the current directory up, even with a config
        # file elsewhere (one without data_dir).
        ((".gateway", "a/b/c"), None, None, None, "a/b/c", ".gateway", FOUND),
        ((".gateway", "conf/.gateway", "a/b"), None, None, "{root}/conf/gw.yaml", "a/b",
         ".gateway", FOUND),
        # An empty GATEWAY_DATA_DIR is not set.
        ((".gateway", "a"), "", None, None, "a", ".gateway", FOUND),
        # None found: a new one in the current directory.
        (("a/b",), None, None, None, "a/b", "a/b/.gateway", NEW),
        (("a/b",), None, None, "{root}/a/gw.yaml", "a/b", "a/b/.gateway", NEW),
    ])
def test_choose_data_dir(root: Path, dirs: tuple[str, ...], env_value: str | None,
                         file_value: str | None, config_file: str | None, cwd: str,
                         expected: str, origin: str) -> None:
    make(root, dirs)

    def fill(text: str) -> str:
        return text.replace("{root}", str(root))

    choice = choose_data_dir(None if env_value is None else fill(env_value),
                             None if file_value is None else fill(file_value),
                             None if config_file is None else Path(fill(config_file)),
                             root / cwd)
    assert choice.path == root / expected
    assert choice.path.is_absolute()
    assert choice.origin == origin


# -- load_config places it -----------------------------------------------------------------------

@pytest.mark.parametrize(("config_arg", "env", "expected", "origin"), [
    # --config, relative to the current directory; data_dir relative to the file.
    ("../conf/gw.yaml", {}, "conf/.gateway", FROM_FILE),
    # GATEWAY_CONFIG alike.
    (None, {"GATEWAY_CONFIG": "../conf/gw.yaml"}, "conf/.gateway", FROM_FILE),
    # --config beats GATEWAY_CONFIG (whose file has another data_dir).
    ("../conf/gw.yaml", {"GATEWAY_CONFIG": "../other/gw.yaml"}, "conf/.gateway", FROM_FILE),
    (None, {"GATEWAY_CONFIG": "../other/gw.yaml"}, "other/data", FROM_FILE),
    # GATEWAY_DATA_DIR beats the file, relative to the current directory.
    ("../conf/gw.yaml", {"GATEWAY_DATA_DIR": "mine"}, "w/mine", FROM_ENV),
    # A file without data_dir, or no file: the search from the current directory.
    ("../bare/gw.yaml", {}, ".gateway", FOUND),
    (None, {}, ".gateway", FOUND),
    (None, {"GATEWAY_CONFIG": ""}, ".gateway", FOUND),
])
def test_load_config_places_the_data_directory(root: Path, config_arg: str | None,
                                               env: dict[str, str], expected: str,
                                               origin: str) -> None:
    make(root, (".gateway", "w", "bare", "other"))
    (root / "conf").mkdir()
    (root / "conf" / "gw.yaml").write_text("data_dir: .gateway\n")
    (root / "other" / "gw.yaml").write_text("data_dir: data\n")
    (root / "bare" / "gw.yaml").write_text("listen: {port: 8081}\n")
    config = load_config(config_arg, env, cwd=root / "w")
    assert config.data_dir.is_absolute()
    # `..` kept as written: the file system resolves it (through a linked folder, too).
    assert config.data_dir.resolve() == (root / expected).resolve()
    assert config.data_dir_origin == origin


def test_load_config_without_any_store_names_a_new_one_here(root: Path) -> None:
    make(root, ("a/b",))
    config = load_config(None, {}, cwd=root / "a" / "b")
    assert (config.data_dir, config.data_dir_origin) == (root / "a" / "b" / ".gateway", NEW)
    assert not config.data_dir.exists()  # placing it creates nothing


def test_a_reload_reads_the_same_data_directory(root: Path) -> None:
    """The server's data directory does not exist at its first load and does at a reload (it
    made it): both name the same one, so the reload is not refused for changing data_dir."""
    make(root, ("w",))
    (root / "w" / "gw.yaml").write_text("listen: {port: 8081}\n")
    first = load_config("gw.yaml", {}, cwd=root / "w")
    first.data_dir.mkdir()
    again = load_config("gw.yaml", {}, cwd=root / "w")
    assert first.restart_needed_for(again) == []
