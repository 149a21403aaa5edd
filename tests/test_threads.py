"""Runtime defaults of bench.threads: what a process and its workers get, and that a user's choice wins."""
from __future__ import annotations

import platform
from pathlib import Path

import pytest

from bench.runner.executors.base import worker_env
from bench.threads import keep_freed_memory, runtime_defaults


def test_defaults_fill_only_what_the_environment_leaves_open():
    numba = {"NUMBA_CACHE_DIR": "/c/numba"}
    assert runtime_defaults({"BENCH_CACHE": "/c"}) == {"GOMP_SPINCOUNT": "2000", "THP_MEM_ALLOC_ENABLE": "1", **numba}
    assert runtime_defaults({"BENCH_CACHE": "/c", "GOMP_SPINCOUNT": "0"}) == {"THP_MEM_ALLOC_ENABLE": "1", **numba}
    assert runtime_defaults({"NUMBA_CACHE_DIR": "/mine"}) == {"GOMP_SPINCOUNT": "2000", "THP_MEM_ALLOC_ENABLE": "1"}


def test_numba_caches_in_the_projects_cache_not_in_the_source_tree():
    assert runtime_defaults({})["NUMBA_CACHE_DIR"] == str(Path.home() / ".cache" / "sr-ptq-bench" / "numba")


@pytest.mark.parametrize("policy", ["PASSIVE", "ACTIVE"])
def test_a_users_openmp_wait_policy_is_not_overridden_by_the_spin_count(policy):
    # libgomp lets GOMP_SPINCOUNT win over OMP_WAIT_POLICY, so setting it would silently undo the user's policy
    assert "GOMP_SPINCOUNT" not in runtime_defaults({"OMP_WAIT_POLICY": policy})


def test_worker_processes_get_the_drivers_choices_and_the_defaults(monkeypatch):
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "THP_MEM_ALLOC_ENABLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BENCH_CACHE", "/tmp/cache-x")
    env = worker_env(3)
    assert (env["OMP_NUM_THREADS"], env["GOMP_SPINCOUNT"], env["THP_MEM_ALLOC_ENABLE"], env["BENCH_CACHE"]) == \
        ("3", "2000", "1", "/tmp/cache-x")
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    env = worker_env(1)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in env


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_kept_on_glibc():
    assert keep_freed_memory() is True
