"""mlm_jax/host_allocator.py: importing mlm_jax on a CPU host makes glibc keep freed memory."""

import os
import subprocess
import sys

import pytest

from mlm_jax import host_allocator

# Allocates and frees a 64 MB array five times after importing mlm_jax; prints the page faults
# an allocation cost. glibc maps each afresh by default (faults every time); kept, none.
FAULTS = """
import resource
import numpy as np
import mlm_jax
np.ones(64 << 18, np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    np.ones(64 << 18, np.float32)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_allocation(**env) -> float:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run([sys.executable, "-c", FAULTS], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_without_page_faults_unless_opted_out():
    system = _faults_per_allocation(MLM_JAX_MALLOC="system")
    kept = _faults_per_allocation(MLM_JAX_MALLOC="")
    assert system > 100  # a fresh mapping per allocation (4 KB or 2 MB pages)
    assert kept < system / 10


def test_not_applied_where_an_accelerator_is_attached_unless_jax_is_told_cpu(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(
        host_allocator.glob, "glob", lambda p: ["/dev/nvidia0"] if "nvidia" in p else []
    )
    assert not host_allocator._computes_on_cpu()
    assert not host_allocator.keep_freed_memory()
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_allocator._computes_on_cpu()
    monkeypatch.setattr(host_allocator.glob, "glob", lambda p: [])
    monkeypatch.delenv("JAX_PLATFORMS")
    assert host_allocator._computes_on_cpu()
    monkeypatch.setenv("MLM_JAX_MALLOC", "system")
    assert not host_allocator.keep_freed_memory()
