"""The demo key (issue 17, item 8): the container files never run `--demo` (it prints a key's
secret to stdout, a container's log stream), and the demo key expires (30 days), after which
the next `--demo` start makes a new one."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import build_config
from gateway.demo import DEMO_KEY_LIFETIME, ensure_demo_key
from gateway.keys.service import KeyService
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_commands(text: str) -> list[list[str]]:
    """The argument lists of the Dockerfile's CMD and ENTRYPOINT (exec or shell form)."""
    joined = text.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() in ("CMD", "ENTRYPOINT"):
            rest = rest.strip()
            found.append(json.loads(rest) if rest.startswith("[") else shlex.split(rest))
    return found


def compose_commands(text: str) -> list[list[str]]:
    found = []
    for service in (yaml.safe_load(text).get("services") or {}).values():
        for field in ("command", "entrypoint"):
            value: Any = service.get(field)
            if value is not None:
                found.append(value if isinstance(value, list) else shlex.split(value))
    return found


def test_the_container_files_do_not_run_the_demo() -> None:
    dockerfile = dockerfile_commands((ROOT / "Dockerfile").read_text())
    compose = compose_commands((ROOT / "docker-compose.yml").read_text())
    assert dockerfile and compose  # what is checked was found
    assert ["tini", "--", "gateway", "run"] in dockerfile  # tini: see tests/deploy
    for command in dockerfile + compose:
        assert "--demo" not in command, command


async def test_the_demo_key_expires_and_is_made_anew_once_expired(
        key_service: KeyService, redis_clean: RedisServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = build_config({"routes": [{"name": "vision", "prefix": "/vision/",
                                       "upstream": "http://127.0.0.1:9103",
                                       "scopes": ["yc.ai.vision.execute"]}]}, "<test>")
    store = key_service.store
    before = time.time()
    await ensure_demo_key(store, config)
    key_id = await store.demo_key_id()
    assert key_id is not None
    key = await key_service.get_key(key_id)
    assert key.expires_at is not None
    assert before + DEMO_KEY_LIFETIME <= key.expires_at <= time.time() + DEMO_KEY_LIFETIME
    assert DEMO_KEY_LIFETIME == 30 * 86400
    assert "expires" in capsys.readouterr().out

    await ensure_demo_key(store, config)  # a later start: the same key, nothing new
    assert await store.demo_key_id() == key_id

    # Thirty days later (written as the store holds it: the service refuses a past expiry).
    await store.replace_key(key, key.with_changes(expires_at=time.time() - 1))
    await ensure_demo_key(store, config)  # expired: a new key, on the same account
    renewed = await store.demo_key_id()
    assert renewed is not None and renewed != key_id
    new_key = await key_service.get_key(renewed)
    assert new_key.account_id == key.account_id
    assert new_key.expires_at is not None and new_key.expires_at > time.time() + 86400
