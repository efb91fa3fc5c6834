"""How many workers `gateway run` starts by default: one per CPU this process may use, which in
a container is the cgroup's CPU quota, not the node's core count (a 1-CPU pod on a 64-core node
must not start 64 workers), and never more than the CPU affinity mask allows.

workers = max(1, min(affinity count, ceil(quota / period)))

The arithmetic is pure (`quota_cpus`, `default_workers`: file contents in, a number out); only
`detect_workers` reads /proc and /sys.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# cgroup v1 mounts the cpu controller under one of these names, depending on the distribution.
V1_CPU_DIRS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def quota_cpus(quota: str, period: str) -> int | None:
    """CPUs a CFS quota allows, rounded up (1.5 CPUs: 2 workers); None without a limit
    ("max" in cgroup v2, -1 in v1) or for contents that are not numbers."""
    quota, period = quota.strip(), period.strip()
    if quota in ("max", "-1", ""):
        return None
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return math.ceil(quota_us / period_us)


def cpu_max_cpus(cpu_max: str) -> int | None:
    """cgroup v2's cpu.max: "$MAX $PERIOD" ("max 100000": no limit; the period may be left
    out, and is then 100000)."""
    fields = cpu_max.split()
    if not fields:
        return None
    return quota_cpus(fields[0], fields[1] if len(fields) > 1 else "100000")


def default_workers(affinity: int, quotas: Iterable[int | None]) -> int:
    """The smallest of the affinity count and every quota that applies (a cgroup and its
    ancestors each may set one); at least 1."""
    return max(1, min([affinity, *(q for q in quotas if q is not None)]))


@dataclass(frozen=True, slots=True)
class CpuLimits:
    affinity: int
    quota: int | None  # None: no cgroup quota found

    @property
    def workers(self) -> int:
        return default_workers(self.affinity, [self.quota])


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _ancestors(root: Path, relative: str) -> list[Path]:
    """The cgroup's directory and each parent up to the mount point."""
    path = root / relative.strip("/") if relative.strip("/") else root
    found = [path]
    while path != root and root in path.parents:
        path = path.parent
        found.append(path)
    return found


def cgroup_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int | None:
    """The tightest CPU quota on this process's cgroup (v2 or v1) and its ancestors."""
    quotas: list[int | None] = []
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2, unified
            for directory in _ancestors(root, relative):
                text = _read(directory / "cpu.max")
                if text is not None:
                    quotas.append(cpu_max_cpus(text))
        elif "cpu" in controllers.split(","):  # cgroup v1
            for name in V1_CPU_DIRS:
                mount = root / name
                for directory in _ancestors(mount, relative):
                    quota = _read(directory / "cpu.cfs_quota_us")
                    period = _read(directory / "cpu.cfs_period_us")
                    if quota is not None and period is not None:
                        quotas.append(quota_cpus(quota, period))
    known = [q for q in quotas if q is not None]
    return min(known) if known else None


def detect_limits() -> CpuLimits:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = os.cpu_count() or 1
    return CpuLimits(affinity=affinity, quota=cgroup_quota())
