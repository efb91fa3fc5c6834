"""The default worker count (issue 19): tables of file contents, a fake cgroup tree, and the
real files of this machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cpus import cgroup_quota, cpu_max_cpus, default_workers, detect_limits, quota_cpus


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("max 100000\n", None),
    ("max\n", None),
    ("100000 100000\n", 1),
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),   # 1.5 CPUs: rounded up
    ("50000 100000\n", 1),    # half a CPU: still one worker
    ("1000 100000\n", 1),
    ("400000 50000\n", 8),    # a shorter period
    ("800000\n", 8),          # period left out: 100000
    ("", None),
    ("garbage 100000", None),
    ("0 100000", None),
])
def test_cgroup_v2_cpu_max(cpu_max: str, expected: int | None) -> None:
    assert cpu_max_cpus(cpu_max) == expected


@pytest.mark.parametrize(("quota", "period", "expected"), [
    ("-1\n", "100000\n", None),
    ("100000\n", "100000\n", 1),
    ("250000\n", "100000\n", 3),
    ("50000\n", "100000\n", 1),
    ("100000", "0", None),
    ("x", "100000", None),
])
def test_cgroup_v1_cfs_quota(quota: str, period: str, expected: int | None) -> None:
    assert quota_cpus(quota, period) == expected


@pytest.mark.parametrize(("affinity", "quotas", "expected"), [
    (64, [None], 64),        # no quota: every CPU of the mask
    (64, [1], 1),            # a 1-CPU pod on a 64-core node
    (64, [2, None, 4], 2),   # the tightest of the cgroup and its ancestors
    (2, [8], 2),             # taskset/cpuset narrower than the quota
    (1, [], 1),
    (0, [], 1),              # never fewer than one
])
def test_default_workers(affinity: int, quotas: list[int | None], expected: int) -> None:
    assert default_workers(affinity, quotas) == expected


def test_v2_tree_takes_the_tightest_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    root = tmp_path / "sys"
    (root / "kubepods" / "pod1" / "ctr").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "pod1" / "cpu.max").write_text("300000 100000\n")
    (root / "kubepods" / "pod1" / "ctr" / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota(root, proc) == 3


def test_v2_in_a_cgroup_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota(tmp_path, proc) == 2


def test_v1_tree_with_a_path_not_mounted_in_the_container(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: /proc names the host's path, the mount is the
    # container's own cgroup.
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    mount = tmp_path / "cpu,cpuacct"
    mount.mkdir()
    (mount / "cpu.cfs_quota_us").write_text("200000\n")
    (mount / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_quota(tmp_path, proc) == 2


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_quota(tmp_path, tmp_path / "missing") is None
    (tmp_path / "cgroup").write_text("0::/\n")
    assert cgroup_quota(tmp_path, tmp_path / "cgroup") is None


def test_the_real_files_of_this_machine() -> None:
    limits = detect_limits()
    assert limits.affinity == len(os.sched_getaffinity(0))
    assert limits.quota is None or limits.quota >= 1
    assert 1 <= limits.workers <= limits.affinity
    if limits.quota is not None:
        assert limits.workers == min(limits.affinity, limits.quota)
