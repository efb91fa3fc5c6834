"""Reading the deployment files (deploy/, Dockerfile) and the checks the tests run on them.

Each check returns the problems it finds as sentences (an empty list: none), so that a test can
run it on the files as shipped and on a mutated copy, and show both that the files pass and
that the check would have caught the mistake.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from gateway.config import Config, load_config

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "gateway.service"

# the environment variables that carry secrets, as gateway/config/load.py reads them.
SECRET_ENV = {"GATEWAY_ADMIN_TOKEN", "GATEWAY_MASTER_KEY"}

Manifests = dict[str, dict[str, Any]]  # by kind; one object of each kind


def load_manifests(directory: Path = KUBERNETES) -> Manifests:
    found: Manifests = {}
    for path in sorted(directory.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is None:
                continue
            assert document["kind"] not in found, f"two {document['kind']}s"
            found[document["kind"]] = document
    return found


def mutated(manifests: Manifests, kind: str, path: str, value: Any) -> Manifests:
    """A deep copy with the field at `path` of `kind` set: keys joined by "/", a number is a list
    index ("spec/ports/0/port")."""
    changed = copy.deepcopy(manifests)
    node: Any = changed[kind]
    *parents, last = path.split("/")
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return changed


def pod_spec(manifests: Manifests) -> dict[str, Any]:
    spec: dict[str, Any] = manifests["Deployment"]["spec"]["template"]["spec"]
    return spec


def container(manifests: Manifests) -> dict[str, Any]:
    containers = pod_spec(manifests)["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def config_path(manifests: Manifests) -> PurePosixPath:
    args = container(manifests).get("args", [])
    assert "--config" in args, args
    return PurePosixPath(args[args.index("--config") + 1])


def configmap_text(manifests: Manifests) -> str:
    """The config file the container reads: the ConfigMap key its --config path names."""
    text: str = manifests["ConfigMap"]["data"][config_path(manifests).name]
    return text


def gateway_config(manifests: Manifests, env: dict[str, str] | None = None) -> Config:
    """The ConfigMap's config as `gateway run --config` loads it (gateway.config.load_config),
    from a file of the name the Deployment gives it."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / config_path(manifests).name
        path.write_text(configmap_text(manifests))
        return load_config(path, env or {}, cwd=Path(directory))


def container_port(manifests: Manifests, port: int | str) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    for entry in container(manifests).get("ports", []):
        if entry.get("name") == port:
            number: int = entry["containerPort"]
            return number
    raise AssertionError(f"no container port named {port!r}")


def probes(manifests: Manifests) -> dict[str, dict[str, Any]]:
    return {name: container(manifests)[name]
            for name in ("startupProbe", "livenessProbe", "readinessProbe")
            if name in container(manifests)}


# -- checks ------------------------------------------------------------------------------------

# What each probe must ask: liveness the process (it restarts the container), readiness
# whether to send traffic (it must follow /readyz, which goes 503 during shutdown.delay).
PROBE_PATHS = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
               "readinessProbe": "/readyz"}


def probe_problems(manifests: Manifests) -> list[str]:
    problems = []
    config = gateway_config(manifests)
    if config.status is None:
        return ["the ConfigMap's config has no status listener for the probes"]
    if config.status.host in ("127.0.0.1", "::1", "localhost"):
        problems.append(f"status.host {config.status.host}: the kubelet probes the pod's IP")
    found = probes(manifests)
    for name in ("livenessProbe", "readinessProbe"):
        if name not in found:
            problems.append(f"no {name}")
    for name, probe in found.items():
        get = probe.get("httpGet")
        if get is None:
            problems.append(f"{name} is not an HTTP GET")
            continue
        port = container_port(manifests, get["port"])
        if port != config.status.port:
            problems.append(f"{name} asks port {port}, the status listener is on "
                            f"{config.status.port}")
        if get.get("path") != PROBE_PATHS[name]:
            problems.append(f"{name} asks {get.get('path')}, not {PROBE_PATHS[name]}")
    return problems


def port_problems(manifests: Manifests) -> list[str]:
    problems = []
    config = gateway_config(manifests)
    service_port = manifests["Service"]["spec"]["ports"][0]
    target = container_port(manifests, service_port["targetPort"])
    if target != config.listen.port:
        problems.append(f"the Service sends to port {target}, the proxy listens on "
                        f"{config.listen.port}")
    return problems


def selector_problems(manifests: Manifests) -> list[str]:
    problems = []
    labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": manifests["Deployment"]["spec"]["selector"]["matchLabels"],
        "Service": manifests["Service"]["spec"]["selector"],
        "PodDisruptionBudget": manifests["PodDisruptionBudget"]["spec"]["selector"][
            "matchLabels"],
    }
    for kind, selector in selectors.items():
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"the {kind}'s selector {selector} does not match the pods {labels}")
    return problems


def dockerfile_ids(text: str) -> dict[str, int | None]:
    """The image's USER uid:gid and the ids its groupadd/useradd give (None: not found)."""
    joined = text.replace("\\\n", " ")
    ids: dict[str, int | None] = {"user_uid": None, "user_gid": None, "useradd_uid": None,
                                  "groupadd_gid": None}
    for line in joined.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "USER":
            uid, _, gid = rest.strip().partition(":")
            ids["user_uid"] = int(uid) if uid.isdigit() else None
            ids["user_gid"] = int(gid) if gid.isdigit() else None
    if match := re.search(r"\buseradd\b[^&;]*--uid[ =](\d+)", joined):
        ids["useradd_uid"] = int(match[1])
    if match := re.search(r"\bgroupadd\b[^&;]*--gid[ =](\d+)", joined):
        ids["groupadd_gid"] = int(match[1])
    return ids


def dockerfile_instructions(text: str, name: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [rest.strip() for line in joined.splitlines()
            for word, _, rest in [line.strip().partition(" ")] if word.upper() == name]


def exec_form(text: str, name: str) -> list[str]:
    (value,) = dockerfile_instructions(text, name)
    found: list[str] = json.loads(value) if value.startswith("[") else shlex.split(value)
    return found


def security_problems(manifests: Manifests, dockerfile: str) -> list[str]:
    problems = []
    ids = dockerfile_ids(dockerfile)
    if ids["user_uid"] is None or ids["user_gid"] is None:
        problems.append("the Dockerfile's USER is not numeric uid:gid")
    if ids["useradd_uid"] != ids["user_uid"] or ids["groupadd_gid"] != ids["user_gid"]:
        problems.append(f"the Dockerfile's useradd/groupadd ids differ from its USER: {ids}")
    pod = pod_spec(manifests).get("securityContext", {})
    box = container(manifests).get("securityContext", {})

    def setting(name: str) -> Any:
        return box.get(name, pod.get(name))  # the container's wins over the pod's

    for name, expected in (("runAsUser", ids["user_uid"]), ("runAsGroup", ids["user_gid"])):
        value = setting(name)
        if type(value) is not int:
            problems.append(f"{name} {value!r} is not a number")
        elif value != expected:
            problems.append(f"{name} {value} is not the image's {expected}")
    if setting("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("no RuntimeDefault seccomp profile")
    if box.get("readOnlyRootFilesystem") is not True:
        problems.append("the root filesystem is writable")
    if box.get("allowPrivilegeEscalation") is not False:
        problems.append("privilege escalation is allowed")
    if box.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities are not all dropped")
    if box.get("capabilities", {}).get("add"):
        problems.append("capabilities are added")
    if "cpu" not in container(manifests).get("resources", {}).get("limits", {}):
        problems.append("no CPU limit: the worker count would follow the node's CPUs")
    return problems


def writable_problems(manifests: Manifests) -> list[str]:
    """With a read-only root filesystem, the data directory must be on a volume."""
    env = {e["name"]: e.get("value") for e in container(manifests).get("env", [])}
    data_dir = PurePosixPath(env.get("GATEWAY_DATA_DIR") or str(
        gateway_config(manifests).data_dir))
    mounts = [PurePosixPath(m["mountPath"]) for m in container(manifests)["volumeMounts"]
              if not m.get("readOnly")]
    if not any(data_dir == mount or mount in data_dir.parents for mount in mounts):
        return [f"the data directory {data_dir} is on no writable volume"]
    return []


def config_mount_problems(manifests: Manifests, dockerfile: str) -> list[str]:
    problems = []
    path = config_path(manifests)
    mounts = [m for m in container(manifests)["volumeMounts"]
              if PurePosixPath(m["mountPath"]) == path.parent]
    volumes = {v["name"]: v for v in pod_spec(manifests)["volumes"]}
    if not mounts:
        problems.append(f"nothing is mounted at {path.parent}")
    for mount in mounts:
        if mount.get("subPath"):
            problems.append("the config is mounted with subPath: it would never be updated")
        source = volumes[mount["name"]].get("configMap", {}).get("name")
        if source != manifests["ConfigMap"]["metadata"]["name"]:
            problems.append(f"{path.parent} holds {source}, not the ConfigMap")
    if path.name not in manifests["ConfigMap"]["data"]:
        problems.append(f"the ConfigMap has no {path.name}")
    image_args = exec_form(dockerfile, "CMD")
    if image_args[image_args.index("--config") + 1] != str(path):
        problems.append(f"the image reads {image_args}, the Deployment {path}")
    return problems


def config_problems(manifests: Manifests) -> list[str]:
    problems = []
    config = gateway_config(manifests)
    if config.redis.url == "embedded":
        problems.append("the embedded store in a multi-replica Deployment: one store per pod")
    if config.shutdown.delay <= 0:
        problems.append("no shutdown.delay: new connections are refused while the pod is "
                        "still in the Service's endpoints")
    grace = pod_spec(manifests).get("terminationGracePeriodSeconds", 30)
    if grace <= config.shutdown.delay + config.listen.drain_timeout:
        problems.append(f"terminationGracePeriodSeconds {grace} is not above shutdown.delay "
                        f"{config.shutdown.delay} + drain_timeout {config.listen.drain_timeout}")
    if "--demo" in container(manifests).get("args", []) + container(manifests).get(
            "command", []):
        problems.append("--demo prints a key's secret to the log")
    return problems


def secret_problems(manifests: Manifests) -> list[str]:
    problems = []
    secret = manifests["Secret"]
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    referenced: dict[str, str] = {}
    for entry in container(manifests).get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            if entry["name"] in SECRET_ENV:
                problems.append(f"{entry['name']} is not taken from the Secret")
            continue
        if ref["name"] != secret["metadata"]["name"]:
            problems.append(f"{entry['name']} names Secret {ref['name']}")
        if ref["key"] not in keys:
            problems.append(f"{entry['name']} names key {ref['key']}, not in the Secret")
        referenced[entry["name"]] = ref["key"]
    if set(referenced) != SECRET_ENV:
        problems.append(f"the Secret feeds {sorted(referenced)}, not {sorted(SECRET_ENV)}")
    if unused := keys - set(referenced.values()):
        problems.append(f"Secret keys nobody reads: {sorted(unused)}")
    return problems
