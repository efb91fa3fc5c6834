"""deploy/kubernetes (issue 19): every manifest is valid for the Kubernetes API, and the
manifests agree with each other, with the image (Dockerfile) and with the gateway's own reading
of the ConfigMap's config. Each check is also run on a mutated copy, to show it can fail."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml

from gateway.config import StatusConfig
from tests.deploy.manifests import (
    DOCKERFILE,
    KUBERNETES,
    SECRET_ENV,
    Manifests,
    config_mount_problems,
    config_problems,
    container,
    gateway_config,
    load_manifests,
    mutated,
    port_problems,
    probe_problems,
    probes,
    secret_problems,
    security_problems,
    selector_problems,
    writable_problems,
)
from tests.support.redis_server import RedisServer

# A version kubernetes-validate ships schemas for (its offline copy of the OpenAPI schemas);
# 1.29 is the oldest release the manifests need (nothing newer than policy/v1, seccompProfile).
KUBERNETES_VERSIONS = ["1.29.0", "1.33.0"]
KINDS = {"Deployment", "Service", "Secret", "ConfigMap", "PodDisruptionBudget"}


@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return load_manifests()


def dockerfile() -> str:
    return DOCKERFILE.read_text()


# -- schema ------------------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", sorted(KUBERNETES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_is_valid_for_the_kubernetes_api(path: Path, version: str) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    for document in documents:
        # strict: unknown fields (a misspelt key Kubernetes would drop silently) are errors.
        kubernetes_validate.validate(document, version, strict=True)


def test_the_manifests_are_the_five_kinds(manifests: Manifests) -> None:
    assert set(manifests) == KINDS


@pytest.mark.parametrize(("kind", "path", "value"), [
    ("Deployment", "spec/template/spec/containers/0/livenessProbe/httpGet/port", 8100.5),
    ("Deployment", "spec/template/spec/containers/0/readinesProbe", {}),  # misspelt
    ("Deployment", "spec/template/spec/securityContext/runAsUser", "10001"),
    ("PodDisruptionBudget", "apiVersion", "policy/v1beta1"),  # removed in 1.25
    ("Service", "spec/ports/0/port", "eighty"),
], ids=["fractional-port", "misspelt-field", "string-uid", "removed-api", "string-port"])
def test_the_schema_check_catches_broken_manifests(manifests: Manifests, kind: str, path: str,
                                                   value: Any) -> None:
    broken = mutated(manifests, kind, path, value)
    with pytest.raises((kubernetes_validate.ValidationError,
                        kubernetes_validate.SchemaNotFoundError)):
        kubernetes_validate.validate(broken[kind], KUBERNETES_VERSIONS[-1], strict=True)


# -- consistency -------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[Manifests], list[str]]] = {
    "probes": probe_problems,
    "ports": port_problems,
    "selectors": selector_problems,
    "security": lambda m: security_problems(m, dockerfile()),
    "writable": writable_problems,
    "config-mount": lambda m: config_mount_problems(m, dockerfile()),
    "config": config_problems,
    "secret": secret_problems,
}


@pytest.mark.parametrize("check", CHECKS)
def test_the_shipped_manifests_pass(manifests: Manifests, check: str) -> None:
    assert CHECKS[check](manifests) == []


CONTAINER = "spec/template/spec/containers/0"
POD = "spec/template/spec"
CONFIG = """
listen: {host: 0.0.0.0, port: 8080, drain_timeout: 30s}
status: {host: 0.0.0.0, port: 8100}
shutdown: {delay: 5s}
redis: {url: "redis://redis:6379/0"}
"""

# (check, kind, field, new value, words the problem must contain)
MUTATIONS = [
    ("probes", "Deployment", f"{CONTAINER}/readinessProbe/httpGet/port", "http", "8080"),
    ("probes", "Deployment", f"{CONTAINER}/livenessProbe/httpGet/port", 9090, "9090"),
    ("probes", "Deployment", f"{CONTAINER}/readinessProbe/httpGet/path", "/healthz",
     "not /readyz"),
    ("probes", "Deployment", f"{CONTAINER}/livenessProbe/httpGet/path", "/metrics",
     "not /healthz"),
    ("probes", "ConfigMap", "data/gateway.yaml",
     CONFIG.replace("port: 8100", "port: 8101"), "status listener is on 8101"),
    ("probes", "ConfigMap", "data/gateway.yaml",
     CONFIG.replace("status: {host: 0.0.0.0, port: 8100}", ""), "no status listener"),
    ("probes", "ConfigMap", "data/gateway.yaml",
     CONFIG.replace("status: {host: 0.0.0.0", "status: {host: 127.0.0.1"), "pod's IP"),
    ("ports", "Service", "spec/ports/0/targetPort", "status", "sends to port 8100"),
    ("selectors", "PodDisruptionBudget", "spec/selector/matchLabels",
     {"app.kubernetes.io/name": "gw"}, "PodDisruptionBudget's selector"),
    ("selectors", "Service", "spec/selector", {"app": "gateway"}, "Service's selector"),
    ("security", "Deployment", f"{POD}/securityContext/runAsUser", 1000,
     "not the image's 10001"),
    ("security", "Deployment", f"{POD}/securityContext/runAsUser", "gateway",
     "not a number"),
    ("security", "Deployment", f"{POD}/securityContext/runAsGroup", 0, "not the image's"),
    ("security", "Deployment", f"{POD}/securityContext/runAsNonRoot", False, "runAsNonRoot"),
    ("security", "Deployment", f"{POD}/securityContext/seccompProfile",
     {"type": "Unconfined"}, "seccomp"),
    ("security", "Deployment", f"{CONTAINER}/securityContext/readOnlyRootFilesystem", False,
     "writable"),
    ("security", "Deployment", f"{CONTAINER}/securityContext/capabilities",
     {"drop": ["NET_RAW"]}, "not all dropped"),
    ("security", "Deployment", f"{CONTAINER}/securityContext/allowPrivilegeEscalation", True,
     "escalation"),
    ("security", "Deployment", f"{CONTAINER}/resources/limits", {"memory": "512Mi"},
     "CPU limit"),
    ("writable", "Deployment", f"{CONTAINER}/env/2/value", "/var/lib/gateway",
     "no writable volume"),
    ("config-mount", "Deployment", f"{CONTAINER}/args", ["--config", "/etc/gw/gateway.yaml"],
     "nothing is mounted at /etc/gw"),
    ("config-mount", "Deployment", f"{CONTAINER}/volumeMounts/0/subPath", "gateway.yaml",
     "subPath"),
    ("config", "ConfigMap", "data/gateway.yaml",
     CONFIG.replace('"redis://redis:6379/0"', "embedded"), "embedded store"),
    ("config", "ConfigMap", "data/gateway.yaml", CONFIG.replace("delay: 5s", "delay: 0s"),
     "no shutdown.delay"),
    ("config", "ConfigMap", "data/gateway.yaml", CONFIG.replace("30s", "45s"),
     "terminationGracePeriodSeconds 45 is not above"),
    ("config", "Deployment", f"{POD}/terminationGracePeriodSeconds", 35,
     "terminationGracePeriodSeconds 35"),
    ("config", "Deployment", f"{CONTAINER}/args",
     ["--config", "/etc/gateway/gateway.yaml", "--demo"], "--demo"),
    ("secret", "Deployment", f"{CONTAINER}/env/0/valueFrom/secretKeyRef/key", "token",
     "not in the Secret"),
    ("secret", "Deployment", f"{CONTAINER}/env/1/name", "GATEWAY_MASTERKEY",
     "not ['GATEWAY_ADMIN_TOKEN', 'GATEWAY_MASTER_KEY']"),
    ("secret", "Deployment", f"{CONTAINER}/env/1", {"name": "GATEWAY_MASTER_KEY",
                                                   "value": "inline"}, "not taken from"),
    ("secret", "Secret", "stringData/extra", "x", "nobody reads: ['extra']"),
]


@pytest.mark.parametrize(("check", "kind", "path", "value", "words"), MUTATIONS,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MUTATIONS)])
def test_each_check_catches_its_mistake(manifests: Manifests, check: str, kind: str,
                                        path: str, value: Any, words: str) -> None:
    # The mutations name list entries by position: make sure they still mean what they meant.
    env = [e["name"] for e in container(manifests)["env"]]
    assert env[:3] == ["GATEWAY_ADMIN_TOKEN", "GATEWAY_MASTER_KEY", "GATEWAY_DATA_DIR"]
    assert container(manifests)["volumeMounts"][0]["mountPath"] == "/etc/gateway"
    assert CHECKS[check](manifests) == []
    problems = CHECKS[check](mutated(manifests, kind, path, value))
    assert any(words in problem for problem in problems), problems


def test_the_secret_env_names_are_what_the_gateway_reads(manifests: Manifests) -> None:
    """SECRET_ENV (what secret_problems wants the Secret to feed) is not just this test's
    belief: the config loader takes each name, and a name it does not know changes nothing."""
    token = "a-token-only-this-test-uses"
    key = base64.b64encode(os.urandom(32)).decode()
    values = {"GATEWAY_ADMIN_TOKEN": token, "GATEWAY_MASTER_KEY": key}
    read = {"GATEWAY_ADMIN_TOKEN": lambda config: config.admin.token,
            "GATEWAY_MASTER_KEY": lambda config: config.master_key}
    for name in SECRET_ENV:
        assert read[name](gateway_config(manifests, {name: values[name]})) is not None, name
        assert read[name](gateway_config(manifests, {})) is None, name
    plain = gateway_config(manifests, {"GATEWAY_ADMINTOKEN": token})
    assert plain.admin.token is None and plain.master_key is None


# -- the probes against the real gateway ---------------------------------------------------------

async def probe_answers(manifests: Manifests, redis_url: str,
                        start_gateway: Any) -> dict[str, int]:
    """Each probe's status from the real gateway started with the ConfigMap's config (on
    loopback and ephemeral ports, the store replaced by the test Redis)."""
    config = gateway_config(manifests)
    assert config.status is not None
    status_port = config.status.port
    config = replace(config,
                     listen=replace(config.listen, host="127.0.0.1", port=0),
                     admin=replace(config.admin, host="127.0.0.1", port=0),
                     status=StatusConfig(host="127.0.0.1", port=0),
                     redis=replace(config.redis, url=redis_url))
    gateway = await start_gateway(config)
    port = gateway.running.status_port
    answers = {}
    async with aiohttp.ClientSession() as session:
        for name, probe in probes(manifests).items():
            assert probe["httpGet"]["port"] in ("status", status_port)  # probe_problems
            async with session.get(f"http://127.0.0.1:{port}{probe['httpGet']['path']}") as r:
                answers[name] = r.status
    return answers


async def test_the_probes_are_answered_by_the_configured_gateway(
        manifests: Manifests, redis_clean: RedisServer, start_gateway: Any) -> None:
    answers = await probe_answers(manifests, redis_clean.url, start_gateway)
    assert set(answers) == {"startupProbe", "livenessProbe", "readinessProbe"}
    assert set(answers.values()) == {200}, answers


async def test_a_probe_path_the_status_listener_does_not_serve_fails(
        manifests: Manifests, redis_clean: RedisServer, start_gateway: Any) -> None:
    broken = mutated(manifests, "Deployment", f"{CONTAINER}/readinessProbe/httpGet/path",
                     "/ready")
    answers = await probe_answers(broken, redis_clean.url, start_gateway)
    assert answers["readinessProbe"] == 404
