"""Several master keys (issue 17, item 11): parsing the key list and the key file, the sealed
format (a master key id before the ciphertext; one without an id still opens), the key file
followed by a running box, and what re-encryption does to one record. Tables of cases."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.config import build_config
from gateway.errors import ConfigError
from gateway.keys.masterkeys import (
    ORIGIN_DATA_DIR,
    ORIGIN_FILE,
    MasterKeyError,
    MasterKeys,
    add_key_to_file,
    create_key_file,
    master_key_id,
    parse_key_file,
    parse_key_list,
    read_key_file,
    remove_key_from_file,
)
from gateway.keys.model import KeyRecord
from gateway.keys.rotation import resealed
from gateway.keys.secrets import SecretBox, sealed_under

OLD, NEW, OTHER = bytes(32), bytes(range(32)), bytes([7] * 32)
OLD64, NEW64, OTHER64 = (base64.b64encode(k).decode() for k in (OLD, NEW, OTHER))
SOURCE = "gateway.yaml"


def legacy_seal(master: bytes, key_id: str, secret: str) -> str:
    """A secret as sealed before master keys had ids: base64(nonce + ciphertext)."""
    nonce = os.urandom(12)
    return base64.b64encode(nonce + AESGCM(master).encrypt(nonce, secret.encode(),
                                                           key_id.encode())).decode()


# -- master key ids ---------------------------------------------------------------------------

def test_a_master_key_id_is_the_start_of_its_sha256() -> None:
    # sha256(32 zero bytes) = 66687aad f862bd77...
    assert master_key_id(OLD) == "66687aad"
    assert len({master_key_id(k) for k in (OLD, NEW, OTHER)}) == 3


def test_master_keys_never_show_the_keys_themselves() -> None:
    keys = MasterKeys((NEW, OLD))
    assert repr(keys) == f"MasterKeys({master_key_id(NEW)}, 66687aad from GATEWAY_MASTER_KEY)"
    assert OLD64 not in repr(keys) and NEW64 not in repr(keys)


# -- GATEWAY_MASTER_KEY: one key, or several, comma-separated, newest first -------------------

@pytest.mark.parametrize(("text", "keys"), [
    (OLD64, (OLD,)),
    (f" {OLD64}\n", (OLD,)),
    (f"{NEW64},{OLD64}", (NEW, OLD)),
    (f"{NEW64} , {OLD64} ,{OTHER64}", (NEW, OLD, OTHER)),
    (base64.urlsafe_b64encode(NEW).decode().rstrip("=") + "," + OLD64, (NEW, OLD)),
])
def test_key_lists(text: str, keys: tuple[bytes, ...]) -> None:
    assert parse_key_list(text) == keys


@pytest.mark.parametrize(("text", "reason"), [
    ("not base64!", "is not base64"),
    (base64.b64encode(bytes(16)).decode(), "must decode to 32 bytes, got 16"),
    (f"{NEW64},not base64!", "key 2 of 2: is not base64"),
    (f"{NEW64},", "key 2 of 2: is empty"),
    (f",{NEW64}", "key 1 of 2: is empty"),
    (f"{NEW64},{OLD64},{NEW64}", "key 3 of 3: repeats the key of key 1 of 3"),
    (f"{NEW64};{OLD64}", "is not base64"),
])
def test_bad_key_lists(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_key_list(text)


@pytest.mark.parametrize(("text", "keys"), [
    (OLD64 + "\n", (OLD,)),  # the file a gateway made before key ids
    (OLD64, (OLD,)),
    (f"# newest first\n\n{NEW64}  # key id x\n  {OLD64}\n\n", (NEW, OLD)),
    (f"{NEW64}\r\n{OLD64}\r\n", (NEW, OLD)),
])
def test_key_files(text: str, keys: tuple[bytes, ...]) -> None:
    assert parse_key_file(text) == keys


@pytest.mark.parametrize(("text", "reason"), [
    ("", "holds no key"),
    ("# only a comment\n\n", "holds no key"),
    (f"{NEW64}\n\n{OLD64[:-4]}\n", "line 3: must decode to 32 bytes"),
    (f"{NEW64} {OLD64}\n", "line 1: is not base64"),
    (f"{NEW64}\n{NEW64}  # again\n", "line 2: repeats the key of line 1"),
])
def test_bad_key_files(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_key_file(text)


# -- the config: GATEWAY_MASTER_KEY or GATEWAY_MASTER_KEY_FILE ---------------------------------

def test_the_config_takes_a_key_list_newest_first() -> None:
    config = build_config({}, SOURCE, {"GATEWAY_MASTER_KEY": f"{NEW64},{OLD64}"})
    assert config.master_key is not None
    assert config.master_key.keys == (NEW, OLD) and config.master_key.file is None


def test_the_config_takes_a_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"{NEW64}\n{OLD64}\n")
    config = build_config({}, SOURCE, {"GATEWAY_MASTER_KEY_FILE": str(path)})
    assert config.master_key == MasterKeys((NEW, OLD), ORIGIN_FILE, str(path))


@pytest.mark.parametrize(("env", "field", "reason"), [
    ({"GATEWAY_MASTER_KEY": f"{NEW64},{OLD64[:10]}"}, "GATEWAY_MASTER_KEY",
     "key 2 of 2: must decode to 32 bytes, got 7"),
    ({"GATEWAY_MASTER_KEY": f"{NEW64},{OLD64}!"}, "GATEWAY_MASTER_KEY",
     "key 2 of 2: is not base64"),
    ({"GATEWAY_MASTER_KEY_FILE": "/nonexistent/keys"}, "GATEWAY_MASTER_KEY_FILE",
     "cannot read the master key file /nonexistent/keys: No such file or directory"),
    ({"GATEWAY_MASTER_KEY_FILE": "{dir}/bad"}, "GATEWAY_MASTER_KEY_FILE",
     "{dir}/bad: line 2: must decode to 32 bytes, got 16"),
    ({"GATEWAY_MASTER_KEY": NEW64, "GATEWAY_MASTER_KEY_FILE": "{dir}/bad"},
     "GATEWAY_MASTER_KEY_FILE", "set it or GATEWAY_MASTER_KEY, not both"),
])
def test_bad_master_key_config_is_a_config_error_in_plain_words(
        tmp_path: Path, env: dict[str, str], field: str, reason: str) -> None:
    (tmp_path / "bad").write_text(f"{NEW64}\n{base64.b64encode(bytes(16)).decode()}\n")
    env = {k: v.replace("{dir}", str(tmp_path)) for k, v in env.items()}
    with pytest.raises(ConfigError) as info:
        build_config({}, SOURCE, env)
    assert [(p.path, p.reason) for p in info.value.problems] == \
        [(field, reason.replace("{dir}", str(tmp_path)))]
    assert NEW64 not in str(info.value)


# -- sealing and opening ----------------------------------------------------------------------

def test_a_sealed_secret_names_the_master_key_that_sealed_it() -> None:
    box = SecretBox(MasterKeys((NEW, OLD)))
    sealed = box.seal("gwh_a", "s3cret")
    assert sealed_under(sealed) == master_key_id(NEW) == box.newest
    assert box.open_with("gwh_a", sealed) == ("s3cret", master_key_id(NEW))
    # Bound to the record it was sealed for.
    with pytest.raises(MasterKeyError, match="does not decrypt"):
        box.open("gwh_b", sealed)


@pytest.mark.parametrize(("sealed_with", "legacy", "opened_by"), [
    (OLD, False, OLD),
    (NEW, False, NEW),
    (OLD, True, OLD),  # no id: each key is tried
    (NEW, True, NEW),
])
def test_any_configured_key_opens(sealed_with: bytes, legacy: bool, opened_by: bytes) -> None:
    sealed = legacy_seal(sealed_with, "gwh_a", "s3cret") if legacy else \
        SecretBox(sealed_with).seal("gwh_a", "s3cret")
    assert sealed_under(sealed) == (None if legacy else master_key_id(sealed_with))
    assert SecretBox(MasterKeys((NEW, OLD))).open_with("gwh_a", sealed) == \
        ("s3cret", master_key_id(opened_by))


@pytest.mark.parametrize(("sealed", "reason"), [
    (lambda: SecretBox(OTHER).seal("gwh_a", "x"),
     f"sealed under master key {master_key_id(OTHER)}, which is not among the master keys of "
     f"GATEWAY_MASTER_KEY \\({master_key_id(NEW)}, 66687aad\\)"),
    (lambda: legacy_seal(OTHER, "gwh_a", "x"),
     f"does not decrypt with master key {master_key_id(NEW)}, 66687aad"),
    (lambda: f"{master_key_id(NEW)}:not base64!", "damaged"),
    (lambda: base64.b64encode(b"short").decode(), "damaged"),
])
def test_what_does_not_open_says_why(sealed: object, reason: str) -> None:
    with pytest.raises(MasterKeyError, match=reason):
        SecretBox(MasterKeys((NEW, OLD))).open("gwh_a", sealed())  # type: ignore[operator]


# -- key files, followed by a running box ------------------------------------------------------

def test_a_box_follows_its_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    keys = create_key_file(path)
    assert path.read_text().count("\n") == 1  # the one-line form older gateways read
    box = SecretBox(keys)
    old_sealed = box.seal("gwh_a", "old")
    # Another process adds a key: a secret sealed under it opens here without a restart,
    # and what this box seals from then on is under the new key.
    added = add_key_to_file(path, ORIGIN_DATA_DIR)
    assert added.ids[1:] == keys.ids and oct(path.stat().st_mode & 0o777) == "0o600"
    new_sealed = SecretBox(added).seal("gwh_a", "new")
    assert box.open("gwh_a", new_sealed) == "new"
    assert sealed_under(box.seal("gwh_a", "x")) == added.ids[0]
    # A file broken by hand: the keys held stay.
    path.write_text("half an edit")
    assert box.refresh() is False and box.keys.ids == added.ids
    assert box.open("gwh_a", old_sealed) == "old"


def test_removing_keys_from_a_key_file(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    create_key_file(path)
    first = read_key_file(path, ORIGIN_DATA_DIR).ids[0]
    newest = add_key_to_file(path, ORIGIN_DATA_DIR).ids[0]
    with pytest.raises(MasterKeyError, match="is the newest, the one that encrypts"):
        remove_key_from_file(path, ORIGIN_DATA_DIR, newest)
    with pytest.raises(MasterKeyError, match="holds no master key 0000abcd"):
        remove_key_from_file(path, ORIGIN_DATA_DIR, "0000abcd")
    assert remove_key_from_file(path, ORIGIN_DATA_DIR, first).ids == (newest,)
    assert "# key id " + newest in path.read_text()


def test_keys_added_at_once_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    create_key_file(path)
    threads = [threading.Thread(target=add_key_to_file, args=(path, ORIGIN_DATA_DIR))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_key_file(path, ORIGIN_DATA_DIR).keys) == 9


# -- re-encrypting one record --------------------------------------------------------------------

NOW = 1_800_000_000.0


def record(**extra: str) -> KeyRecord:
    return KeyRecord(id="gwh_a", type="hmac", account_id="acc_a", scopes=(), created_at=0,
                     expires_at=NOW + 3600, previous_until=NOW + 60, extra=extra)


@pytest.mark.parametrize(("make", "expect"), [
    # (what the record holds, what re-encryption leaves: "new" = sealed under the new key)
    ({"secret": "new"}, None),
    ({"secret": "old"}, {"secret": "new"}),
    ({"secret": "legacy-new"}, {"secret": "new"}),  # gets its id
    ({"secret": "legacy-old"}, {"secret": "new"}),
    ({"secret": "new", "previous_secret": "old"}, {"secret": "new", "previous_secret": "new"}),
    ({"secret": "new", "previous_secret": "old", "grace": "over"}, {"secret": "new"}),
    ({"secret": "new", "previous_secret": "new", "grace": "over"}, None),
])
def test_resealing_a_record(make: dict[str, str], expect: dict[str, str] | None) -> None:
    box = SecretBox(MasterKeys((NEW, OLD)))
    sealers = {"new": lambda s: box.seal("gwh_a", s),
               "old": lambda s: SecretBox(OLD).seal("gwh_a", s),
               "legacy-new": lambda s: legacy_seal(NEW, "gwh_a", s),
               "legacy-old": lambda s: legacy_seal(OLD, "gwh_a", s)}
    grace_over = make.pop("grace", None) == "over"
    before = record(**{name: sealers[how](name) for name, how in make.items()})
    if grace_over:
        before = before.with_changes(previous_until=NOW - 1)
    after = resealed(box, before, NOW)
    if expect is None:
        assert after is None
        return
    assert after is not None
    assert sorted(after.extra) == sorted(expect)
    for name in expect:
        assert sealed_under(after.extra[name]) == box.newest
        assert SecretBox(NEW).open("gwh_a", after.extra[name]) == name  # the secret is kept
    assert after.with_changes(extra={}) == before.with_changes(extra={})


def test_a_record_that_does_not_open_is_left_alone() -> None:
    broken = record(secret=SecretBox(OTHER).seal("gwh_a", "x"))
    with pytest.raises(MasterKeyError):
        resealed(SecretBox(MasterKeys((NEW, OLD))), broken, NOW)
